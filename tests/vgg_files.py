"""Full-size VGG checkpoints for the layers / check tests, built lazily, once per session, then deleted.

Values do not matter to header-only checks, so tensors are zeros (cheap to make; the files are still the
real 530-575 MB torch.save output). Each test module defines a session fixture
returning :func:`getter` (one fixture definition cannot be shared across modules without a conftest).
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckptool.arch.vgg import vgg_spec

_CACHE: dict[str, Path] = {}
_DIRS: list[Path] = []

# name -> (arch, num_classes, format, drop num_batches_tracked)
PLAIN = {
    "vgg11": ("vgg11", 1000, "legacy", False),  # torchvision's own VGG files are in the legacy format
    "vgg13": ("vgg13", 1000, "legacy", False),
    "vgg16": ("vgg16", 1000, "legacy", False),
    "vgg19": ("vgg19", 1000, "legacy", False),
    "vgg11_bn": ("vgg11_bn", 1000, "zip", False),
    "vgg13_bn": ("vgg13_bn", 1000, "legacy", True),  # legacy format without num_batches_tracked
    "vgg16_bn": ("vgg16_bn", 1000, "zip", False),
    "vgg19_bn": ("vgg19_bn", 1000, "zip", False),
    "vgg16_bn_legacy": ("vgg16_bn", 1000, "legacy", True),
    "vgg16_bn_10": ("vgg16_bn", 10, "zip", False),
}


def zeros_state_dict(arch: str, num_classes: int = 1000, *, legacy_bn: bool = False) -> OrderedDict[str, torch.Tensor]:
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, shape in vgg_spec(arch, num_classes).state_dict_shapes().items():
        if k.endswith("num_batches_tracked"):
            if not legacy_bn:
                sd[k] = torch.tensor(0)
        else:
            sd[k] = torch.zeros(shape)
    return sd


def _build(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pth"
    if kind in PLAIN:
        arch, n, fmt, legacy_bn = PLAIN[kind]
        obj: object = zeros_state_dict(arch, n, legacy_bn=legacy_bn)
    elif kind == "vgg16_bn_dp":  # DataParallel: every key under module.
        obj = OrderedDict((f"module.{k}", v) for k, v in zeros_state_dict("vgg16_bn").items())
        fmt = "zip"
    elif kind == "vgg16_bn_lightning":  # a Lightning training checkpoint: state_dict with model. keys
        path = folder / f"{kind}.ckpt"
        sd = OrderedDict((f"model.{k}", v) for k, v in zeros_state_dict("vgg16_bn").items())
        obj = {
            "epoch": 3,
            "global_step": 300,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": sd,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"arch": "vgg16_bn"},
        }
        fmt = "zip"
    elif kind == "vgg16_bn_features":  # backbone only: model.features.state_dict()
        obj = OrderedDict(
            (k.removeprefix("features."), v)
            for k, v in zeros_state_dict("vgg16_bn").items()
            if k.startswith("features.")
        )
        fmt = "zip"
    else:
        raise KeyError(kind)
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def getter(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``get("vgg19_bn")`` → the path of that full-size file (built on first use, shared by every test
    module of the session, deleted at the end of the session: 6+ GB must not stay in pytest's temp)."""
    if not _DIRS:
        _DIRS.append(tmp_path_factory.mktemp("vggfiles"))
        request.addfinalizer(_cleanup)

    def get(kind: str) -> Path:
        if kind not in _CACHE:
            _CACHE[kind] = _build(kind, _DIRS[0])
        return _CACHE[kind]

    return get


def _cleanup() -> None:
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)
    _CACHE.clear()
    _DIRS.clear()
