"""The Vision Transformer family as data: torchvision's ``vision_transformer.py`` layout.

Keys: ``class_token`` [1, 1, D] and ``encoder.pos_embedding`` [1, N+1, D] (parameters no module owns as a
weight), ``conv_proj`` (the patch embedding, a k=stride=P convolution), then per encoder layer
``encoder.layers.encoder_layer_{i}.ln_1``, ``self_attention.in_proj_weight`` [3D, D] / ``in_proj_bias`` (q, k
and v fused, nn.MultiheadAttention), ``self_attention.out_proj``, ``ln_2``, ``mlp.0`` and ``mlp.3`` (Linear,
GELU, Dropout, Linear, Dropout); ``encoder.ln`` and ``heads.head``. LayerNorm eps is 1e-6.

Names follow the paper (Dosovitskiy et al. 2020): ``patch_embed``, ``class_token``, ``pos_embed``, then
``block{i}.{ln1,attn.qkv,attn.proj,add1,ln2,fc1,gelu,fc2,add2}``, ``ln``, ``head``. ViT-B/16 says "Base,
16x16 patches": the name counts no layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .family import Family, register_family
from .spec import ArchSpec, ModuleSpec, Part

__all__ = ["CONFIGS", "ViTConfig", "ViTFamily", "vit_spec"]


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    image_size: int = 224


CONFIGS: dict[str, ViTConfig] = {
    "vit_b_16": ViTConfig(16, 12, 12, 768, 3072),
    "vit_b_32": ViTConfig(32, 12, 12, 768, 3072),
    "vit_l_16": ViTConfig(16, 24, 16, 1024, 4096),
    "vit_l_32": ViTConfig(32, 24, 16, 1024, 4096),
    "vit_h_14": ViTConfig(14, 32, 16, 1280, 5120),
}


def _ln(path: str, name: str, d: int) -> ModuleSpec:
    return ModuleSpec(path, "LayerNorm", name, params=(("weight", (d,)), ("bias", (d,))))


def _linear(path: str, name: str, cin: int, cout: int, ordinal: int) -> ModuleSpec:
    return ModuleSpec(path, "Linear", name, ordinal, params=(("weight", (cout, cin)), ("bias", (cout,))))


def modules(variant: str, cfg: ViTConfig, num_classes: int) -> ArchSpec:
    d, p = cfg.hidden_dim, cfg.patch_size
    seq = (cfg.image_size // p) ** 2 + 1
    n = 1
    mods: list[ModuleSpec] = [
        ModuleSpec("conv_proj", "Conv2d", "patch_embed", n, params=(("weight", (d, 3, p, p)), ("bias", (d,)))),
        ModuleSpec("", "Parameter", "class_token", params=(("class_token", (1, 1, d)),)),
        ModuleSpec("encoder", "Parameter", "pos_embed", params=(("pos_embedding", (1, seq, d)),)),
        ModuleSpec("encoder.dropout", "Dropout", "pos_drop"),
    ]
    for i in range(cfg.num_layers):
        base, b = f"encoder.layers.encoder_layer_{i}", f"block{i + 1}"
        mods.append(_ln(f"{base}.ln_1", f"{b}.ln1", d))
        n += 1
        mods.append(
            ModuleSpec(
                f"{base}.self_attention", "MultiheadAttention", f"{b}.attn.qkv", n,
                params=(("in_proj_weight", (3 * d, d)), ("in_proj_bias", (3 * d,))),
            )
        )  # fmt: skip
        n += 1
        mods.append(_linear(f"{base}.self_attention.out_proj", f"{b}.attn.proj", d, d, n))
        mods.append(ModuleSpec(f"{base}.dropout", "Dropout", f"{b}.drop"))
        mods.append(ModuleSpec(base, "Add", f"{b}.add1"))
        mods.append(_ln(f"{base}.ln_2", f"{b}.ln2", d))
        n += 1
        mods.append(_linear(f"{base}.mlp.0", f"{b}.fc1", d, cfg.mlp_dim, n))
        mods.append(ModuleSpec(f"{base}.mlp.1", "GELU", f"{b}.gelu"))
        mods.append(ModuleSpec(f"{base}.mlp.2", "Dropout", f"{b}.drop1"))
        n += 1
        mods.append(_linear(f"{base}.mlp.3", f"{b}.fc2", cfg.mlp_dim, d, n))
        mods.append(ModuleSpec(f"{base}.mlp.4", "Dropout", f"{b}.drop2"))
        mods.append(ModuleSpec(base, "Add", f"{b}.add2"))
    mods.append(_ln("encoder.ln", "ln", d))
    n += 1
    mods.append(_linear("heads.head", "head", d, num_classes, n))
    # torch's state_dict order: a module's own parameters before its children's
    first = ("class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding")
    desc = (
        f"ViT, {cfg.num_layers} layers, {cfg.num_heads} heads, width {d}, MLP {cfg.mlp_dim}, {p}x{p} patches of "
        f"{cfg.image_size}x{cfg.image_size}, torchvision layout"
    )
    note = (
        f"{variant}: {cfg.num_layers} encoder layers of 4 weight layers each (qkv, proj, fc1, fc2) between the "
        "patch embedding and the head; class_token and pos_embedding are parameters no layer owns"
    )
    return ArchSpec(
        variant, tuple(mods), (1, 3, cfg.image_size, cfg.image_size), description=desc, head="heads.head",
        state_order=first, notes=(note,),
    )  # fmt: skip


class ViTFamily(Family):
    """torchvision's VisionTransformer. Subclass with other ``configs`` for other sizes (the tests register
    a tiny one)."""

    name = "vit"
    configs: dict[str, ViTConfig] = CONFIGS
    variants = tuple(CONFIGS)
    parts = (Part("backbone", ("", "conv_proj", "encoder"), keep_paths=True),)
    backbone = "backbone"

    def spec(self, variant: str, num_classes: int) -> ArchSpec:
        return modules(variant, self.configs[variant], num_classes)

    def build(self, variant: str, num_classes: int) -> Any:
        from .vit_torch import VisionTransformer

        c = self.configs[variant]
        return VisionTransformer(
            c.image_size, c.patch_size, c.num_layers, c.num_heads, c.hidden_dim, c.mlp_dim, num_classes=num_classes
        )

    def part_module(self, model: Any, part: Part) -> Any:
        from .vit_torch import Backbone

        return Backbone(model)

    def details(self, variant: str) -> dict[str, Any]:
        c = self.configs[variant]
        return {"patch": c.patch_size, "layers": c.num_layers, "heads": c.num_heads, "width": c.hidden_dim}


VIT = register_family(ViTFamily())


def vit_spec(variant: str, num_classes: int = 1000) -> ArchSpec:
    return VIT.full_spec(variant, num_classes)
