"""`scan` on sharded checkpoints: every shard and the index itself; the index rules as findings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch


def test_scan_a_folder_checks_every_shard_and_the_index(cli, tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m")
    r = cli("scan", folder)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.count("(safetensors; ") == 5 and "model.safetensors.index.json: ok  (hf-index)" in r.stdout
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["extra.weight"] = "../elsewhere.safetensors"
    doc["weight_map"]["other.weight"] = "model-00009-of-00009.safetensors"
    doc["metadata"]["total_size"] = 1
    index.write_text(json.dumps(doc))
    r = cli("scan", "--json", index)
    assert r.exit_code == 1
    (report,) = json.loads(r.stdout)["files"]
    assert report["format"] == "hf-index"
    assert [f["kind"] for f in report["findings"]] == ["index-escape", "index-missing-shard"]
    doc["weight_map"].pop("extra.weight")
    doc["weight_map"].pop("other.weight")
    index.write_text(json.dumps(doc))
    r = cli("scan", "--json", index)
    kinds = [f["kind"] for f in json.loads(r.stdout)["files"][0]["findings"]]
    assert r.exit_code == 1 and kinds == ["index-total-size"]


def test_a_series_without_index_with_a_tensor_twice(cli, tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    from safetensors.torch import load_file, save_file

    folder = hf_sharded(tmp_path / "m")
    (folder / "model.safetensors.index.json").unlink()
    shards = sorted(folder.glob("*.safetensors"))
    first = load_file(shards[0])
    name = next(iter(first))
    last = load_file(shards[-1])
    last[name] = torch.zeros(2)
    save_file(last, shards[-1])
    r = cli("scan", "--json", folder)
    assert r.exit_code == 1, r.stdout
    reports = json.loads(r.stdout)["files"]
    (folder_report,) = [f for f in reports if f["path"] == str(folder)]
    assert folder_report["format"] == "hf-index"
    assert [f["kind"] for f in folder_report["findings"]] == ["index-duplicate-tensor"]
    clean = tmp_path / "clean"
    shutil.copytree(hf_sharded(tmp_path / "c"), clean)
    (clean / "model.safetensors.index.json").unlink()
    r = cli("scan", "--json", clean)
    assert r.exit_code == 0 and all(f["path"] != str(clean) for f in json.loads(r.stdout)["files"])
