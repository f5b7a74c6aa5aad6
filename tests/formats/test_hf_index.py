"""Hugging Face sharded checkpoints (formats/hf_index.py): a folder or an index is one Checkpoint whose
tensors know their shard; the index rules raise first in the reader and are all collected for scan."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckptool import open_checkpoint
from ckptool.errors import CorruptFileError, UnreadableError, UnsafeFileError, UnsupportedFormatError
from ckptool.formats import hf_index
from ckptool.formats.sniff import read_file


def _index(folder: Path) -> Path:
    return next(folder.glob("*.index.json"))


def _findings(where: Path) -> list[tuple[str, str, str | None]]:
    return list(hf_index.folder_findings(str(where), read_file=read_file))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_folder_and_index_are_one_checkpoint(
    tmp_path: Path, hf_sharded: Callable[..., Path], small_lm: Callable[..., dict[str, torch.Tensor]], safe: bool
) -> None:
    sd = small_lm(tied=False)
    folder = hf_sharded(tmp_path / "m", sd, safe=safe)
    index = json.loads(_index(folder).read_text())
    for where in (folder, _index(folder)):
        with open_checkpoint(where) as ck:
            assert ck.path == str(where)
            assert ck.format == ("safetensors" if safe else "torch-zip")
            assert sorted(ck.names()) == sorted(sd)
            assert len(set(ck.files.values())) == len(ck.files) > 1
            for t in ck.tensors:  # each tensor knows its file, the one the index names
                assert ck.file_of(t) == index["weight_map"][t.name]
                assert torch.equal(torch.from_numpy(ck.numpy(t)).to(sd[t.name].dtype), sd[t.name])
            assert ck.total_bytes == index["metadata"]["total_size"]
            assert ck.metadata["index"]["total_size"] == index["metadata"]["total_size"]
            assert ck.notes == []


def test_a_folder_of_one_file_is_that_file(tmp_path: Path, small_lm: Callable[..., dict[str, torch.Tensor]]) -> None:
    (tmp_path / "m").mkdir()
    torch.save(small_lm(tied=False), tmp_path / "m" / "pytorch_model.bin")
    (tmp_path / "m" / "config.json").write_text("{}")
    with open_checkpoint(tmp_path / "m") as ck:
        assert ck.path == str(tmp_path / "m" / "pytorch_model.bin") and ck.files == {} and len(ck) == 16


def test_a_series_without_index_is_read_and_noted(tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m")
    _index(folder).unlink()
    with open_checkpoint(folder) as ck:
        assert len(ck) == 16 and len(ck.files) == 5
        assert ck.notes == ["no index file: read the 5 shards model-00001-of-00005.safetensors ... "
                            "model-00005-of-00005.safetensors"]  # fmt: skip
    (folder / "model-00003-of-00005.safetensors").unlink()  # an incomplete series is not a checkpoint
    with pytest.raises(UnsupportedFormatError, match="not one shard series and have no index: model-00001"):
        open_checkpoint(folder)


def test_several_unrelated_files_are_listed(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    torch.save({"a": torch.zeros(2)}, tmp_path / "m" / "a.pt")
    torch.save({"b": torch.zeros(2)}, tmp_path / "m" / "b.pth")
    with pytest.raises(UnsupportedFormatError, match=r"a\.pt, b\.pth") as e:
        open_checkpoint(tmp_path / "m")
    assert e.value.hint and "name the file" in e.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnreadableError, match="directory that holds no checkpoint"):
        open_checkpoint(tmp_path / "empty")


def test_safetensors_index_is_preferred(tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m")
    hf_sharded(folder, safe=False)
    with open_checkpoint(folder) as ck:
        assert ck.format == "safetensors"
        assert ck.notes == ["the folder also has pytorch_model.bin.index.json: read model.safetensors.index.json"]


def _edit(folder: Path, fn: Callable[[dict], None]) -> Path:
    p = _index(folder)
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    return p


def test_each_rule_raises_first_and_scan_collects_all(tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    clean = hf_sharded(tmp_path / "clean")
    assert _findings(clean) == [] and _findings(_index(clean)) == []

    def case(name: str, fn: Callable[[dict], None]) -> Path:
        folder = tmp_path / name
        shutil.copytree(clean, folder)
        return _edit(folder, fn)

    wm = json.loads(_index(clean).read_text())["weight_map"]
    first = next(k for k in wm if list(wm.values()).count(wm[k]) > 1)  # its shard holds others too
    other = next(s for s in wm.values() if s != wm[first])

    p = case("missing", lambda d: d["weight_map"].__setitem__("extra.weight", "model-00009-of-00009.safetensors"))
    with pytest.raises(CorruptFileError, match=r"shard 'model-00009-of-00009.safetensors' \(holding 1 tensors\)"):
        open_checkpoint(p)
    assert [f[0] for f in _findings(p)] == ["index-missing-shard"]

    p = case("escape", lambda d: d["weight_map"].__setitem__(first, "../clean/" + wm[first]))
    with pytest.raises(UnsafeFileError, match=r"points outside the folder"):
        open_checkpoint(p)
    assert [f[0] for f in _findings(p)] == ["index-escape"]

    p = case("wrong", lambda d: d["weight_map"].__setitem__(first, other))
    with pytest.raises(CorruptFileError, match=f"tensor '{first}': the index says {other}, but it is in {wm[first]}"):
        open_checkpoint(p)
    assert [f[0] for f in _findings(p)] == ["index-wrong-shard"]

    p = case("unmapped", lambda d: d["weight_map"].pop(first))
    with pytest.raises(CorruptFileError, match=f"tensor '{first}' is in {wm[first]} but not in the index"):
        open_checkpoint(p)

    p = case("total", lambda d: d["metadata"].__setitem__("total_size", 5))
    with open_checkpoint(p) as ck:  # the reader notes it: real indexes sometimes count differently
        assert ck.notes == ["metadata.total_size says 5 bytes, the shards' tensors hold 16,192"]
    assert [f[0] for f in _findings(p)] == ["index-total-size"]

    p = case("notjson", lambda d: None)
    p.write_text('{"weight_map": {"a": "x", "a": "y"}')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        open_checkpoint(p)
    p.write_text('{"weight_map": {"a": 3}}')
    assert [f[0] for f in _findings(p)] == ["index-invalid"]


def test_a_tensor_in_two_shards(tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    from safetensors.torch import save_file

    folder = hf_sharded(tmp_path / "m")
    wm = json.loads(_index(folder).read_text())["weight_map"]
    first = next(iter(wm))
    shard = next(s for s in wm.values() if s != wm[first])
    from safetensors.torch import load_file

    tensors = load_file(folder / shard)
    tensors[first] = torch.zeros(3)
    save_file(tensors, folder / shard)
    with pytest.raises(CorruptFileError, match=f"tensor '{first}' is in both"):
        open_checkpoint(folder)
    kinds = [f[0] for f in _findings(folder)]
    assert "index-duplicate-tensor" in kinds


def test_a_shard_symlinked_out_of_the_folder(tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m")
    shard = sorted(folder.glob("*.safetensors"))[0]
    outside = tmp_path / "outside.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="resolves outside the folder"):
        open_checkpoint(folder)
    assert next(f[0] for f in _findings(folder)) == "index-escape"


def test_the_index_file_is_detected_by_content(tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    folder = hf_sharded(tmp_path / "m")
    renamed = folder / "weights.json"
    _index(folder).rename(renamed)
    with open_checkpoint(renamed) as ck:
        assert len(ck) == 16
    assert hf_index.detect(b'{\n  "metadata": {},\n  "weight_map": {', 100)
    assert not hf_index.detect(b'{"a": 1}', 8)
