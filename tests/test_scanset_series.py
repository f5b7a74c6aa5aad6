"""Folder scans apply the shard-series rules of hf_index through its folder-level hook (``scan_folder``, found
through the formats registry): a folder of ``model-0000K-of-0000N.safetensors`` shards without an index is
checked as a series even when it is not a complete one (a missing shard, stale shards of an earlier save)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ckptool.scanset import scan_paths


def _unindexed(tmp_path: Path, hf_sharded: Callable[..., Path]) -> Path:
    folder = hf_sharded(tmp_path / "m")
    next(folder.glob("*.index.json")).unlink()
    return folder


def _folder_report(folder: Path, cli) -> tuple[int, dict]:
    r = cli("scan", folder, "--json", "--no-policy")
    files = json.loads(r.stdout)["files"]
    reports = [f for f in files if f["path"] == str(folder)]
    assert len(reports) <= 1
    return r.exit_code, (reports[0] if reports else {})


def test_a_complete_series_is_clean(tmp_path: Path, hf_sharded: Callable[..., Path], cli) -> None:
    folder = _unindexed(tmp_path, hf_sharded)
    code, rep = _folder_report(folder, cli)
    assert code == 0 and (not rep or rep["findings"] == [])


def test_a_missing_shard_is_a_finding(tmp_path: Path, hf_sharded: Callable[..., Path], cli) -> None:
    folder = _unindexed(tmp_path, hf_sharded)
    (folder / "model-00003-of-00005.safetensors").unlink()
    code, rep = _folder_report(folder, cli)
    assert code == 1
    assert rep["format"] == "hf-index"
    assert [(f["kind"], f["where"]) for f in rep["findings"]] == [
        ("index-missing-shard", "model-00003-of-00005.safetensors")
    ]
    assert "5-shard series" in rep["findings"][0]["message"]


def test_stale_shards_of_another_series(tmp_path: Path, hf_sharded: Callable[..., Path], cli) -> None:
    folder = _unindexed(tmp_path, hf_sharded)
    shutil.copy(folder / "model-00001-of-00005.safetensors", folder / "model-00001-of-00002.safetensors")
    code, rep = _folder_report(folder, cli)
    assert code == 1
    kinds = [f["kind"] for f in rep["findings"]]
    assert kinds[0] == "index-mixed-series" and "index-missing-shard" in kinds  # 00002-of-00002 is missing
    assert "2 different series" in rep["findings"][0]["message"]


def test_a_tensor_in_two_shards_of_a_complete_series_beside_other_files(
    tmp_path: Path, hf_sharded: Callable[..., Path]
) -> None:
    """Several series (or a series and another weight file): each complete series still gets its rules."""
    from safetensors.torch import load_file, save_file

    folder = _unindexed(tmp_path, hf_sharded)
    a, b = folder / "model-00001-of-00005.safetensors", folder / "model-00002-of-00005.safetensors"
    t = load_file(b)
    t[next(iter(load_file(a)))] = torch.zeros(3)
    save_file(t, b)
    save_file({"x": torch.zeros(2)}, folder / "adapter.safetensors")  # not one series any more
    run = scan_paths([folder])
    rep = next(r for r in run.reports if r.path == str(folder))
    assert [f.kind for f in rep.findings] == ["index-duplicate-tensor"]
    assert not rep.safe


def test_no_series_no_folder_report(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "m").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"x": torch.zeros(2)}, tmp_path / "m" / name)
    run = scan_paths([tmp_path / "m"])
    assert [r.path for r in run.reports] == [str(tmp_path / "m" / n) for n in ("a.safetensors", "b.safetensors")]
