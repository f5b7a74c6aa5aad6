"""`inspect` on sharded checkpoints and several paths: the shard column (CliRunner and a real terminal),
totals against the index's total_size, storage shared between tensors, several paths in one run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import torch
from cli.clihelp import TtyResult

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schemas" / "inspect.schema.json").read_text())


def _valid(text: str) -> dict:
    d = json.loads(text)
    jsonschema.validate(d, SCHEMA)
    return d


def test_the_shard_column_on_a_terminal(
    tmp_path: Path, hf_sharded: Callable[..., Path], tty: Callable[..., TtyResult]
) -> None:
    folder = hf_sharded(tmp_path / "m")
    wm = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    r = tty("inspect", folder)
    assert r.returncode == 0, r
    assert "\x1b[" in r.raw  # the rich branch
    cells = [[c.strip() for c in ln.strip("│┃ ").replace("┃", "│").split("│")] for ln in r.text.splitlines()]
    assert ["name", "shape", "dtype", "numel", "size", "shard"] in cells
    rows = {c[0]: c[-1] for c in cells if c[0] in wm}
    assert rows == wm  # every tensor, with the shard the index names
    assert "bytes: 16,192 (16.2 KB) = the index's total_size" in r.text
    assert "shards: 5 (model-00001-of-00005.safetensors ... model-00005-of-00005.safetensors), index " \
           "model.safetensors.index.json" in r.text  # fmt: skip


def test_plain_and_json_name_the_shard(cli, tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m", safe=False)
    index = folder / "pytorch_model.bin.index.json"
    wm = json.loads(index.read_text())["weight_map"]
    r = cli("inspect", index)
    assert r.exit_code == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header[-1] == "shard" and "format: torch-zip" in r.stdout
    d = _valid(cli("inspect", "--json", index).stdout)
    assert {t["name"]: t["file"] for t in d["tensors"]} == wm
    assert d["files"] == sorted(set(wm.values())) and d["total_bytes"] == d["stored_bytes"] == 16192
    assert d["metadata"]["index"]["total_size"] == 16192


def test_a_disagreeing_total_size_is_said(cli, tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m")
    p = folder / "model.safetensors.index.json"
    doc = json.loads(p.read_text())
    doc["metadata"]["total_size"] = 20000
    p.write_text(json.dumps(doc))
    r = cli("inspect", folder)
    assert r.exit_code == 0, r.stderr
    assert "bytes: 16,192 (16.2 KB); the index's total_size says 20,000" in r.stdout
    assert "note: metadata.total_size says 20,000 bytes, the shards' tensors hold 16,192" in r.stdout


def test_tied_embeddings_are_noted_with_bytes_on_disk(
    cli, tmp_path: Path, small_lm: Callable[..., dict[str, torch.Tensor]]
) -> None:
    torch.save(small_lm(tied=True), tmp_path / "tied.bin")
    r = cli("inspect", tmp_path / "tied.bin")
    assert r.exit_code == 0, r.stderr
    assert "bytes: 16,192 (16.2 KB)\n" in r.stdout
    assert "on disk: 12,096 (12.1 KB) of tensor storage" in r.stdout  # the 4,096-byte embedding once
    assert "shared: model.embed_tokens.weight, lm_head.weight: one storage" in r.stdout
    d = _valid(cli("inspect", "--json", tmp_path / "tied.bin").stdout)
    assert d["shared_storages"] == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert (d["total_bytes"], d["stored_bytes"]) == (16192, 12096)
    torch.save(small_lm(tied=False), tmp_path / "untied.bin")
    r = cli("inspect", tmp_path / "untied.bin")
    assert "on disk" not in r.stdout and "shared:" not in r.stdout


def test_several_paths(cli, tmp_path: Path, small_lm: Callable[..., dict[str, torch.Tensor]]) -> None:
    torch.save(small_lm(tied=True), tmp_path / "a.bin")
    torch.save({"w": torch.zeros(3)}, tmp_path / "b.pt")
    r = cli("inspect", tmp_path / "a.bin", tmp_path / "b.pt")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("format: torch-zip") == 2 and f"file: {tmp_path / 'b.pt'}" in r.stdout
    r = cli("inspect", "--json", tmp_path / "a.bin", tmp_path / "missing.pt", tmp_path / "b.pt")
    assert r.exit_code == 2
    d = _valid(r.stdout)
    assert [f["path"] for f in d["files"]] == [str(tmp_path / n) for n in ("a.bin", "missing.pt", "b.pt")]
    assert d["files"][1]["error"]["message"] == "no such file" and d["error"]["type"] == "UnreadableError"
    assert len(d["files"][2]["tensors"]) == 1
    r = cli("inspect", "--plain", tmp_path / "b.pt", tmp_path / "b.pt")
    assert r.stdout == "w torch.Size([3])\nw torch.Size([3])\n"
