"""200,000 tensors: past the old 1M-entry memo bound (torch writes 8 memo entries per tensor), through every
command that reads a torch file without a model (inspect, scan, export, diff, extract)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

N = 200_000
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200k tensors that are views of one storage (a small archive that still pickles 200k tensors, 7-8 memo
    entries each) plus a few of their own."""
    base = torch.arange(N + 8, dtype=torch.float32)
    sd = {f"model.layers.{i}.weight": base[i : i + 2] for i in range(N)}
    sd["model.norm.weight"] = torch.ones(3)
    path = tmp_path_factory.mktemp("count") / "many.pth"
    torch.save(sd, path)
    return path


def test_inspect_and_scan_read_200k_tensors(many: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("inspect", "--json", many)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["tensors"]) == N + 1
    assert doc["tensors"][123_456] == {
        "name": "model.layers.123456.weight", "shape": [2], "dtype": "float32", "numel": 2, "nbytes": 8,
    }  # fmt: skip
    r = cli("scan", "--json", many)
    assert r.exit_code == 0, r.output
    (report,) = json.loads(r.stdout)["files"]
    assert report["safe"] is True and report["findings"] == []


def test_export_diff_extract_read_200k_tensors(many: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "many.safetensors"
    r = cli("export", many, "--safetensors", out)
    assert r.exit_code == 0, r.output
    r = cli("diff", many, out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"]["identical"] == N + 1
    part = tmp_path / "norm.safetensors"
    r = cli("extract", many, "--prefix", "model.norm", "-o", part)
    assert r.exit_code == 0, r.output
    r = cli("inspect", "--json", part)
    assert [t["name"] for t in json.loads(r.stdout)["tensors"]] == ["weight"]  # the prefix is stripped
