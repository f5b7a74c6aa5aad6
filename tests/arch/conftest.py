"""Builders for the family tests: registry state_dicts (torch), header-only Checkpoints, saved files."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckptool.arch.registry import resolve
from ckptool.checkpoint import Checkpoint, TensorInfo


def _mem_ck(shapes: dict[str, tuple[int, ...]], dtype: str = "float32") -> Checkpoint:
    tensors = [
        TensorInfo(k, "int64" if k.endswith("num_batches_tracked") else dtype, tuple(s)) for k, s in shapes.items()
    ]
    return Checkpoint(path="<mem>", format="torch-zip", tensors=tensors)


@pytest.fixture
def mem_ck() -> Callable[..., Checkpoint]:
    """``mem_ck(shapes)``: a Checkpoint with only headers, what every reader returns, without a file."""
    return _mem_ck


def _real_state_dict(arch: str, num_classes: int = 1000, *, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """The family's torch module, initialised as the family initialises it (seeded), with BatchNorm
    statistics that are not the identity (so a wrong mapping changes the outputs)."""
    from ckptool.runtime import build_module

    torch.manual_seed(seed)
    model = build_module(resolve(arch, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed + 1)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
    return OrderedDict(sd)


@pytest.fixture(scope="session")
def real_state_dict() -> Callable[..., OrderedDict[str, torch.Tensor]]:
    return _real_state_dict


def _save(obj: object, path: Path, fmt: str = "zip") -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


@pytest.fixture(scope="session")
def save_ckpt() -> Callable[..., Path]:
    """``save_ckpt(obj, path, "zip" | "legacy")``: torch.save in either on-disk format."""
    return _save
