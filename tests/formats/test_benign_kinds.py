"""Benign tensor kinds read as data: quantized tensors (``_rebuild_qtensor``, per-tensor and per-channel),
sparse COO tensors (``_rebuild_sparse_tensor``) and ``collections.Counter``. inspect lists them (with the
quantization summary), export writes what safetensors can hold and says which it skipped and why."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch_oracle import torch_load

import ckptool


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    sd = {
        "w": torch.arange(6.0).reshape(2, 3),
        "q": torch.quantize_per_tensor(x, 0.1, 3, torch.quint8),
        "qc": torch.quantize_per_channel(
            x, torch.tensor([0.05, 0.2], dtype=torch.float64), torch.tensor([0, 1]), 0, torch.qint8
        ),
        "sp": torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]).to_sparse(),
    }
    p = tmp_path_factory.mktemp("kinds") / "mixed.pth"
    torch.save({"state_dict": sd, "counts": Counter({"seen": 3, "skipped": 1})}, p)
    return p


def test_torch_reads_it_with_weights_only(mixed: Path) -> None:
    got = torch.load(mixed, weights_only=True)
    assert got["state_dict"]["q"].is_quantized and got["state_dict"]["sp"].is_sparse
    assert isinstance(got["counts"], Counter)


def test_inspect_lists_them(mixed: Path, cli) -> None:
    r = cli("inspect", "--json", mixed)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    by = {t["name"]: t for t in d["tensors"]}
    assert set(by) == {"w", "q", "qc"}
    assert by["q"]["dtype"] == "quint8" and by["q"]["quantization"] == {
        "scheme": "per_tensor_affine", "scale": pytest.approx(0.1), "zero_point": 3,
    }  # fmt: skip
    assert by["qc"]["quantization"] == {"scheme": "per_channel_affine", "axis": 0, "channels": 2}
    assert any("'sp'" in n and "sparse COO tensor [2, 3] float32, 2 stored values" in n for n in d["notes"])
    assert any(n.startswith("quantized: q (per_tensor_affine, scale 0.1, zero point 3)") for n in d["notes"])
    assert d["extras"]["counts"] == "2 entries"


def test_quantized_values_are_torchs_integers(mixed: Path) -> None:
    want = torch_load([mixed], weights_only=True)[str(mixed)]["tensors"]
    with ckptool.open(mixed) as ck:
        for name in ("state_dict.q", "state_dict.qc"):
            assert ck.numpy(name.split(".")[1]).tobytes().hex() == want[name]["int_repr"]


def test_export_writes_the_rest_and_says_what_it_skipped(mixed: Path, tmp_path: Path, cli) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "o.safetensors"
    r = cli("export", "--json", mixed, "--safetensors", out)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    notes = " | ".join(d["notes"])
    for name in ("q", "qc", "sp"):
        assert f"skipped {name!r}" in notes
    assert "quantized" in notes and "sparse COO" in notes
    got = load_file(out)
    assert list(got) == ["w"] and torch.equal(got["w"], torch.arange(6.0).reshape(2, 3))


def test_naming_a_quantized_tensor_is_refused_with_the_reason(mixed: Path, tmp_path: Path) -> None:
    from ckptool.convert.driver import select
    from ckptool.errors import UsageError

    with ckptool.open(mixed) as ck, pytest.raises(UsageError, match="'q' cannot be converted: quantized"):
        select(ck, {"q": "q"})
