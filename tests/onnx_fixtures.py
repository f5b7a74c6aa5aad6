"""Models and checkpoints with realistic activations for the ONNX export and parity tests.

Random initialisation with uncalibrated BatchNorm gives near-zero logits, and then any absolute tolerance
passes. :func:`calibrated` runs a few seeded forward passes in train mode (cumulative BatchNorm statistics)
before switching to eval, so outputs have a real scale and a changed weight really changes them.

``tiny_onnx_fixtures:TinyVGG`` is a small VGG-shaped network (features / avgpool / classifier with
BatchNorm), used as a ``module:callable`` architecture so most tests export in well under a second.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ckptool.arch.vgg import vgg_spec
from ckptool.runtime import build_module


class TinyVGG(nn.Module):
    """A 32x32-input VGG in miniature: the same layout (features.N, avgpool, classifier.N) and BatchNorm."""

    input_shape = (1, 3, 32, 32)

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(
            nn.Linear(2 * w * 16, 32), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


TINY = "onnx_fixtures:TinyVGG"


def calibrate(model: nn.Module, size: int, *, seed: int = 0, batches: int = 4, batch: int = 8) -> nn.Module:
    """Cumulative BatchNorm statistics from seeded inputs (train mode), then eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batches
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size, generator=g))
    return model.eval()


def calibrated(arch: str = "vgg11_bn", num_classes: int = 1000, *, seed: int = 0, size: int = 32) -> nn.Module:
    """A registry VGG (or ``TINY``) with real-module initialisation and calibrated BatchNorm."""
    torch.manual_seed(seed)
    model = TinyVGG(num_classes) if arch == TINY else build_module(vgg_spec(arch, num_classes))
    return calibrate(model, size, seed=seed)


def state_dict(model: nn.Module, *, legacy_bn: bool = False, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    sd = OrderedDict()
    for k, v in model.state_dict().items():
        if legacy_bn and k.endswith("num_batches_tracked"):
            continue
        sd[prefix + k] = v
    return sd


def save(obj: object, path: Path, fmt: str = "zip") -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def perturb_file(path: Path, offset: int, delta: float = 0.05) -> bytes:
    """Add ``delta`` to the float32 at byte ``offset`` of ``path`` in place; return the original 4 bytes."""
    import struct

    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(4)
        (v,) = struct.unpack("<f", old)
        fh.seek(offset)
        fh.write(struct.pack("<f", v + delta))
    return old


def restore_file(path: Path, offset: int, old: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(old)


class DataDependent(nn.Module):
    """Runs in eager mode, but torch.export cannot trace it: its control flow depends on the values."""

    input_shape = (1, 4)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y
