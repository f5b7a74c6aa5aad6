"""The torch side, shared by the commands that run a model. Importing this module imports torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .arch.spec import ArchSpec, ModuleSpec

_TYPES: dict[str, Any] = {
    "Conv2d": nn.Conv2d,
    "BatchNorm2d": nn.BatchNorm2d,
    "ReLU": nn.ReLU,
    "MaxPool2d": nn.MaxPool2d,
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "Linear": nn.Linear,
    "Dropout": nn.Dropout,
}


def _make(m: ModuleSpec) -> nn.Module:
    return _TYPES[m.type](**m.kwargs)


class VGG(nn.Module):
    """torchvision's VGG layout (features / avgpool / classifier), built from an ArchSpec."""

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build_module(spec: ArchSpec, device: str | torch.device | None = None) -> nn.Module:
    """An nn.Module for an ArchSpec (on ``device``; "meta" costs no memory).

    Registry specs are built from their module table; ``module:callable`` / ``torchvision:`` specs
    (and their parts) by calling their ``builder`` under the device context."""
    if spec.builder is not None:
        with torch.device(device or "cpu"):
            module = spec.builder()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{spec.name} built a {type(module).__name__}, not an nn.Module")
        return module
    with torch.device(device or "cpu"):
        seqs: dict[str, list[nn.Module]] = {}
        singles: dict[str, nn.Module] = {}
        for m in spec.modules:
            if m.container:
                seqs.setdefault(m.container, []).append(_make(m))
            else:
                singles[m.path] = _make(m)
        if spec.family == "vgg" and set(seqs) == {"features", "classifier"}:
            return VGG(nn.Sequential(*seqs["features"]), singles["avgpool"], nn.Sequential(*seqs["classifier"]))
        if not singles and len(seqs) == 1:  # a part, e.g. vgg16_bn[features]
            return nn.Sequential(*next(iter(seqs.values())))
        if not seqs:
            return nn.Sequential(*singles.values())
        root = nn.Module()
        for k, mods in seqs.items():
            root.add_module(k, nn.Sequential(*mods))
        for k, one in singles.items():
            root.add_module(k, one)
        return root
