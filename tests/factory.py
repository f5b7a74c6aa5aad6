"""Real checkpoints built by the tests (never downloaded): full-size VGG state_dicts in every on-disk form."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

from ckptool.arch.vgg import vgg_spec
from ckptool.runtime import build_module


def vgg_state_dict(
    name: str = "vgg16_bn", num_classes: int = 1000, *, seed: int = 0, legacy_bn: bool = False, init: str = "fast"
) -> OrderedDict[str, torch.Tensor]:
    """A state_dict with torchvision's exact keys and shapes.

    init="fast": values from a cheap seeded generator (no nn.init cost); init="module": real module init.
    legacy_bn drops num_batches_tracked, as in torchvision's 2017 files.
    """
    if init == "module":
        torch.manual_seed(seed)
        sd = build_module(vgg_spec(name, num_classes)).state_dict()
    else:
        g = torch.Generator().manual_seed(seed)
        sd = OrderedDict()
        for k, shape in vgg_spec(name, num_classes).state_dict_shapes().items():
            if k.endswith("num_batches_tracked"):
                sd[k] = torch.tensor(0)
            elif k.endswith("running_var"):
                sd[k] = torch.rand(shape, generator=g) + 0.5
            else:
                sd[k] = torch.randn(shape, generator=g) * 0.01
    if legacy_bn:
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    return sd


def save(obj: object, path: str | os.PathLike[str], fmt: str = "zip") -> Path:
    """torch.save in the zip (default) or legacy (pre-1.6) format."""
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return Path(path)
