"""Sharded safetensors output (convert/sharded.py): Hugging Face's layout and naming, checked with the real
huggingface_hub writer and loaders; bit-exact; all files or none; never overwriting without --force."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from huggingface_hub import load_state_dict_from_file, load_torch_model, save_torch_state_dict
from torch import nn

from ckptool import open_checkpoint
from ckptool.convert import sharded
from ckptool.convert.sharded import export_sharded, parse_size, plan_shards
from ckptool.errors import OutputExistsError, UsageError

SD = Callable[..., dict[str, torch.Tensor]]


def module_for(sd: dict[str, torch.Tensor], *, tie: tuple[str, str] | None = None) -> nn.Module:
    """An nn.Module whose state_dict has exactly ``sd``'s keys (zeros), ``tie``: (a, b) share one tensor."""
    root = nn.Module()
    made: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        *path, leaf = k.split(".")
        m = root
        for p in path:
            if not hasattr(m, p):
                m.add_module(p, nn.Module())
            m = getattr(m, p)
        buf = made[tie[0]] if tie and k == tie[1] and tie[0] in made else torch.zeros_like(v)
        made[k] = buf
        m.register_buffer(leaf, buf)
    return root


def _doc(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_the_layout_is_huggingface_hubs(tmp_path: Path, small_lm: SD, tied: bool) -> None:
    sd = small_lm(tied=tied)
    torch.save(sd, tmp_path / "model.bin")
    ref = tmp_path / "hub"
    ref.mkdir()
    save_torch_state_dict({k: v.clone() if not tied else v for k, v in sd.items()}, ref, max_shard_size=3000)
    with open_checkpoint(tmp_path / "model.bin") as ck:
        r = export_sharded(ck, tmp_path / "ours", max_shard_size=3000)
    ours = tmp_path / "ours"
    assert sorted(os.listdir(ours)) == sorted(os.listdir(ref))  # same files, same names
    assert _doc(ours) == _doc(ref)  # same weight_map (order too), total_size, and dropped -> kept entries
    assert list(_doc(ours)["weight_map"]) == list(_doc(ref)["weight_map"])
    assert r.files[-1] == "model.safetensors.index.json" and r.verified
    if tied:  # HF's rule: keep the first name in sorted order
        assert _doc(ours)["metadata"]["model.embed_tokens.weight"] == "lm_head.weight"
        assert r.shared == [["model.embed_tokens.weight", "lm_head.weight"]]
        assert "dropped, as HF's save_torch_state_dict does" in r.notes[0]
    for shard in r.files[:-1]:  # every shard: the same tensors as hub's, bit for bit
        a, b = load_state_dict_from_file(ours / shard), load_state_dict_from_file(ref / shard)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("safe", [True, False], ids=["from-safetensors-shards", "from-bin-shards"])
def test_a_sharded_folder_reexported_loads_with_load_torch_model(
    tmp_path: Path, hf_sharded: Callable[..., Path], small_lm: SD, safe: bool
) -> None:
    sd = small_lm(tied=False)
    src = hf_sharded(tmp_path / "src", sd, safe=safe, max_shard_size=5000)
    with open_checkpoint(src) as ck:
        r = export_sharded(ck, tmp_path / "out", max_shard_size="4KB")
    assert len(r.files) == 6 and r.tensors == len(sd)  # 5 shards of at most 4,000 bytes + the index
    model = module_for(sd)
    res = load_torch_model(model, tmp_path / "out", strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    got = model.state_dict()
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    with open_checkpoint(tmp_path / "out") as back:
        assert back.total_bytes == _doc(tmp_path / "out")["metadata"]["total_size"] == 16192


def test_tied_embeddings_load_into_a_tied_model(tmp_path: Path, small_lm: SD) -> None:
    sd = small_lm(tied=True)
    torch.save(sd, tmp_path / "tied.bin")
    with open_checkpoint(tmp_path / "tied.bin") as ck:
        export_sharded(ck, tmp_path / "out", max_shard_size=3000)
    with open_checkpoint(tmp_path / "out") as back:
        assert back.notes == [
            "model.embed_tokens.weight is not stored: the index metadata says it shares storage with lm_head.weight "
            "(dropped on save)"
        ]
    model = module_for(sd, tie=("model.embed_tokens.weight", "lm_head.weight"))
    res = load_torch_model(model, tmp_path / "out", strict=False)
    assert res.missing_keys == ["model.embed_tokens.weight"]  # dropped, as HF drops it; the tie restores it
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], sd["model.embed_tokens.weight"])


def test_one_shard_is_model_safetensors_without_index(tmp_path: Path, small_lm: SD) -> None:
    torch.save(small_lm(tied=True), tmp_path / "m.bin")
    with open_checkpoint(tmp_path / "m.bin") as ck:
        r = export_sharded(ck, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["model.safetensors"] and r.files == ["model.safetensors"]
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.metadata()["model.embed_tokens.weight"] == "lm_head.weight"  # HF keeps the map in the file
    res = load_torch_model(module_for(small_lm(tied=False)), tmp_path / "out", strict=False)
    assert res.missing_keys == ["model.embed_tokens.weight"]


def test_a_tensor_larger_than_the_limit_gets_its_own_shard(mem_ck: Callable[..., object]) -> None:
    ck = mem_ck({"a": (10,), "big": (1000,), "b": (10,), "c": (10,)})
    pairs = [(t.name, t) for t in ck.tensors]
    shards = plan_shards(pairs, 100)  # float32: a, b, c 40 bytes; big 4,000
    assert [[n for n, _ in s] for s in shards] == [["big"], ["a", "b"], ["c"]]  # hub places it when met


def test_sizes_parse_as_huggingface_hub_parses_them() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1000") == 1000 and parse_size(7) == 7 and parse_size("1.5KB") == 1500
    for bad in ("five", "-1GB", "0", "5XB"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_the_set_is_atomic(tmp_path: Path, small_lm: SD, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save(small_lm(tied=False), tmp_path / "m.bin")
    from ckptool.convert import safetensors_writer

    real = safetensors_writer.WRITER.write
    calls = {"n": 0}

    def flaky(*a: object, **k: object) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(safetensors_writer.WRITER, "write", flaky)
    with open_checkpoint(tmp_path / "m.bin") as ck:
        with pytest.raises(Exception, match="No space left"):
            export_sharded(ck, tmp_path / "new", max_shard_size=3000)
        assert not (tmp_path / "new").exists()  # a folder it created is gone again
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "config.json").write_text("{}")
        calls["n"] = 0
        with pytest.raises(Exception, match="No space left"):
            export_sharded(ck, tmp_path / "old", max_shard_size=3000)
        assert os.listdir(tmp_path / "old") == ["config.json"]  # nothing else, no temporary left


def test_never_overwrites_without_force_and_force_removes_stale_shards(tmp_path: Path, small_lm: SD) -> None:
    torch.save(small_lm(tied=False), tmp_path / "m.bin")
    out = tmp_path / "out"
    with open_checkpoint(tmp_path / "m.bin") as ck:
        export_sharded(ck, out, max_shard_size=3000)
        before = sorted(os.listdir(out))
        with pytest.raises(OutputExistsError, match="holds an earlier export"):
            export_sharded(ck, out, max_shard_size=8000)
        assert sorted(os.listdir(out)) == before
        r = export_sharded(ck, out, max_shard_size=8000, force=True)
    assert sorted(os.listdir(out)) == sorted(r.files) and len(r.files) == 4  # 3 shards + index; old ones gone
    assert r.notes[-1].startswith("removed 5 files of an earlier export: model-00001-of-00005.safetensors")
    with pytest.raises(UsageError, match="is a file"):
        export_sharded(open_checkpoint(tmp_path / "m.bin"), tmp_path / "m.bin", max_shard_size=3000)


def test_the_cli(cli, tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    src = hf_sharded(tmp_path / "src", safe=False)
    r = cli("export", src, "--safetensors", tmp_path / "out", "--max-shard-size", "5KB")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'out'} (safetensors): 5 shards + model.safetensors.index.json")
    assert "files: model-00001-of-00005.safetensors ... model-00005-of-00005.safetensors" in r.stdout
    d = json.loads(cli("export", src, "--safetensors", tmp_path / "out", "--force", "--json").stdout)
    assert d["files"] == ["model.safetensors"]  # an existing folder: the 5GB default, one file
    r = cli("diff", src, tmp_path / "out")
    assert r.exit_code == 0 and "identical: all 16 tensors bit-identical" in r.stdout, r.stdout
    r = cli("export", src, "--pth", tmp_path / "x.pth", "--max-shard-size", "5KB")
    assert r.exit_code == 2 and "--max-shard-size applies to --safetensors" in r.stderr
    r = cli("export", src, "--safetensors", tmp_path / "y", "--max-shard-size", "lots")
    assert r.exit_code == 2 and "is not a size" in r.stderr and not (tmp_path / "y").exists()
    r = cli("extract", src, "-p", "model", "-o", tmp_path / "ext", "--max-shard-size", "4KB")
    assert r.exit_code == 0, r.stderr
    with open_checkpoint(tmp_path / "ext") as ck:
        assert len(ck.files) == 4 and "embed_tokens.weight" in ck and "lm_head.weight" not in ck


def test_memory_is_bounded_by_the_buffer(tmp_path: Path) -> None:
    """The writer streams each tensor through one 1 MB buffer: a 64 MB tensor never is in memory whole."""
    import tracemalloc

    torch.save({"w": torch.ones(16 << 20)}, tmp_path / "big.pt")
    with open_checkpoint(tmp_path / "big.pt") as ck:
        tracemalloc.start()
        export_sharded(ck, tmp_path / "out", max_shard_size="10MB")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert os.listdir(tmp_path / "out") == ["model.safetensors"]
    assert peak < 8 << 20, peak  # a few 1 MB buffers, not 64 MB
    assert sharded.DEFAULT_MAX_SHARD_SIZE == "5GB"
