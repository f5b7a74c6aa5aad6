"""The ViT family's torch code: torchvision's ``VisionTransformer`` (same attribute names and forward)."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn


class MLPBlock(nn.Sequential):
    def __init__(self, in_dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, in_dim), nn.Dropout(dropout)
        )


class EncoderBlock(nn.Module):
    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.ln_1 = norm(hidden_dim)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = norm(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x_in)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + x_in
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(
            OrderedDict((f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim)) for i in range(num_layers))
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    def __init__(
        self, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
        num_classes: int = 1000,
    ) -> None:  # fmt: skip
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.seq_length = seq_length
        self.heads = nn.Sequential(OrderedDict([("head", nn.Linear(hidden_dim, num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(_features(self, x))


def _features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_process_input`` (patches -> tokens), the class token, the encoder; the class token's
    final representation (what the head reads)."""
    n, _, h, w = x.shape
    p: int = m.patch_size  # type: ignore[assignment]
    d: int = m.hidden_dim  # type: ignore[assignment]
    conv: nn.Module = m.conv_proj  # type: ignore[assignment]
    encoder: nn.Module = m.encoder  # type: ignore[assignment]
    x = conv(x)
    x = x.reshape(n, d, (h // p) * (w // p)).permute(0, 2, 1)
    token: torch.Tensor = m.class_token  # type: ignore[assignment]
    x = torch.cat([token.expand(n, -1, -1), x], dim=1)
    return encoder(x)[:, 0]


class Backbone(nn.Module):
    """Everything but ``heads``, under the model's own names (``class_token``, ``conv_proj``, ``encoder``);
    the output is the class token's representation [N, D]."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.patch_size, self.hidden_dim = model.patch_size, model.hidden_dim
        self.conv_proj = model.conv_proj
        self.class_token = model.class_token
        self.encoder = model.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _features(self, x)
