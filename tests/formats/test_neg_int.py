"""torch's neg bit on integer tensors (``torch._neg_view`` of an int tensor, saved with its metadata): torch.load
returns the negated values, wrapping in two's complement; ckptool reads the same bytes (they were refused)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ckptool


@pytest.fixture
def negint(tmp_path: Path) -> Path:
    p = tmp_path / "negint.pth"
    torch.save(
        {
            "i64": torch._neg_view(torch.tensor([1, -2, 3, -(2**63)], dtype=torch.int64)),
            "i32": torch._neg_view(torch.tensor([7, -(2**31)], dtype=torch.int32)),
            "i16": torch._neg_view(torch.tensor([5, -6], dtype=torch.int16)),
            "i8": torch._neg_view(torch.tensor([1, -2, -128], dtype=torch.int8)),
            "u8": torch._neg_view(torch.tensor([1, 2, 255, 0], dtype=torch.uint8)),
            "part": torch._neg_view(torch.arange(10, dtype=torch.int64))[3:7],  # an offset into the storage
        },
        p,
    )
    return p


def test_values_are_what_torch_load_returns(negint: Path) -> None:
    want = torch.load(negint, weights_only=True)
    assert all(v.is_neg() for v in want.values())
    with ckptool.open(negint) as ck:
        for name, t in want.items():
            assert ck.read_bytes(ck[name]) == t.resolve_neg().contiguous().view(torch.uint8).numpy().tobytes(), name


def test_export_writes_torch_values(negint: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "o.safetensors"
    r = cli("export", negint, "--safetensors", out)
    assert r.exit_code == 0, r.output
    got = load_file(out)
    for name, t in torch.load(negint, weights_only=True).items():
        assert torch.equal(got[name], t.resolve_neg()), name
