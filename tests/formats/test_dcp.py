"""torch.distributed.checkpoint folders read torch-free (formats/dcp.py), on the real 2-rank run (``dcp_run``).

Everything is compared with the consolidated state the run wrote itself (``consolidated.safetensors``):
reassembled tensors must be bit-identical, whatever their layout (Shard(0) even and uneven, Shard(1),
an empty chunk, replicated, 0-d).
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptool import open_checkpoint
from ckptool.errors import CorruptFileError
from ckptool.formats import dcp
from ckptool.scan import scan

torch = pytest.importorskip("torch")


def _consolidated(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(run / "consolidated.safetensors")


def _raw(t: Any) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("which", ["folder", "metadata"])
def test_a_dcp_folder_reads_as_one_checkpoint_bit_identical_to_the_consolidated_state(
    dcp_run: Path, which: str
) -> None:
    where = dcp_run / "dcp" if which == "folder" else dcp_run / "dcp" / ".metadata"
    full = _consolidated(dcp_run)
    with open_checkpoint(where) as ck:
        assert ck.format == "dcp"
        assert ck.path == str(dcp_run / "dcp")
        assert ck.state_dict_key == "model"
        assert sorted(ck.names()) == sorted(full)  # (safetensors sorts its names)
        for name, ref in full.items():
            t = ck[name]
            assert t.shape == tuple(ref.shape), name
            assert t.dtype == str(ref.dtype).removeprefix("torch."), name
            assert ck.read_bytes(t) == _raw(ref), name
        assert ck.metadata["files"] == ["__0_0.distcp", "__1_0.distcp"]
        assert ck.metadata["sharded_tensors"] == 3  # the empty chunk of layers.0.mlp.gate does not count
        assert ck.extras == {"step": "1200", "run_name": "dcp-two-ranks", "config": "2 entries"}


def test_values_come_back_as_numpy_including_bfloat16(dcp_run: Path) -> None:
    full = _consolidated(dcp_run)
    with open_checkpoint(dcp_run / "dcp") as ck:
        got = ck.numpy("layers.0.attn.qkv.weight")
        assert got.dtype == np.float32 and got.shape == (7, 3)
        assert np.array_equal(got, full["layers.0.attn.qkv.weight"].float().numpy())
        assert np.array_equal(ck.numpy("layers.0.mlp.up.weight"), full["layers.0.mlp.up.weight"].numpy())
        assert ck.numpy("scale").shape == ()


def test_a_key_selects_another_part_of_the_state(dcp_run: Path) -> None:
    with open_checkpoint(dcp_run / "dcp", key="model") as ck:
        assert "embed.weight" in ck
    with pytest.raises(Exception, match="no tensors"):
        open_checkpoint(dcp_run / "dcp", key="config")


def test_column_sharded_tensors_are_gathered_through_a_bounded_slab(
    dcp_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shard(1) chunks are column blocks: with a slab of one row, every row is gathered from both chunks."""
    monkeypatch.setattr(dcp, "SLAB", 1)
    full = _consolidated(dcp_run)
    with open_checkpoint(dcp_run / "dcp") as ck:
        t = ck["layers.0.mlp.up.weight"]
        parts = [bytes(p) for p in ck.iter_chunks(t, buf=bytearray(4096))]
        assert len(parts) == 4  # one slab per row: 4 rows
        assert b"".join(parts) == _raw(full["layers.0.mlp.up.weight"])
        st = t.storage
        assert st is not None
        assert ck.storage_bytes(st, 6, 30) == _raw(full["layers.0.mlp.up.weight"])[6:30]  # any byte range


def test_reading_needs_no_torch(dcp_run: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import hashlib, ckptool\n"
        f"ck = ckptool.open_checkpoint({str(dcp_run / 'dcp')!r})\n"
        "print(hashlib.sha256(b''.join(ck.read_bytes(ck[n]) for n in sorted(ck.names()))).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import hashlib

    full = _consolidated(dcp_run)
    want = hashlib.sha256(b"".join(_raw(full[n]) for n in sorted(full))).hexdigest()
    assert out.stdout.strip() == want


# -- the rules: the reader refuses the first problem, scan lists them ---------------------------------------
def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "dcp"
    shutil.copytree(run / "dcp", out)
    return out


def _edit_metadata(folder: Path, edit: Any) -> None:
    meta = pickle.loads((folder / ".metadata").read_bytes())  # the test's own file, written by torch
    edit(meta)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


def _drop_chunk(meta: Any) -> None:
    meta.state_dict_metadata["model.embed.weight"].chunks.pop()


def _overlap_chunk(meta: Any) -> None:
    chunks = meta.state_dict_metadata["model.embed.weight"].chunks
    chunks.append(chunks[0])  # rank 0's rows twice


def _escape(meta: Any) -> None:
    for info in meta.storage_data.values():
        if info.relative_path == "__1_0.distcp":
            info.relative_path = "../__1_0.distcp"


def _outside(meta: Any) -> None:
    for k, info in meta.storage_data.items():
        if k.fqn == "model.norm.weight":
            info.offset = 10**6


CASES = {
    "gap": (_drop_chunk, "dcp-gap", "cover 20 of its 40 elements"),
    "overlap": (_overlap_chunk, "dcp-overlap", "overlap"),
    "escape": (_escape, "dcp-path", "outside the folder"),
    "outside": (_outside, "dcp-chunk-bounds", "runs past the end"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_metadata_is_refused_by_the_reader_and_listed_by_scan(dcp_run: Path, tmp_path: Path, case: str) -> None:
    edit, kind, text = CASES[case]
    folder = _copy(dcp_run, tmp_path)
    _edit_metadata(folder, edit)
    with pytest.raises(CorruptFileError, match=text):
        open_checkpoint(folder)
    report = scan(folder / ".metadata")
    assert kind in {f.kind for f in report.findings}, report.findings
    assert not report.values_checked


def test_a_missing_distcp_file(dcp_run: Path, tmp_path: Path) -> None:
    folder = _copy(dcp_run, tmp_path)
    (folder / "__1_0.distcp").unlink()
    with pytest.raises(CorruptFileError, match="not in the folder"):
        open_checkpoint(folder)
    kinds = [f.kind for f in scan(folder / ".metadata").findings]
    assert kinds == ["dcp-missing-file"]


def test_an_item_that_is_not_a_clean_torch_save_archive(dcp_run: Path, tmp_path: Path) -> None:
    folder = _copy(dcp_run, tmp_path)
    meta = pickle.loads((folder / ".metadata").read_bytes())
    info = next(v for k, v in meta.storage_data.items() if k.fqn == "model.head.weight")
    data = bytearray((folder / info.relative_path).read_bytes())
    data[info.offset : info.offset + 4] = b"JUNK"
    (folder / info.relative_path).write_bytes(bytes(data))
    with open_checkpoint(folder) as ck:  # the metadata is fine: the tensor fails when its bytes are read
        ck.read_bytes(ck["embed.weight"])
        with pytest.raises(CorruptFileError, match=r"not a clean torch\.save archive"):
            ck.read_bytes(ck["head.weight"])
    report = scan(folder / ".metadata")
    assert [f.kind for f in report.findings] == ["dcp-item"]
    assert "head.weight" in (report.findings[0].where or "")


def test_a_chunk_archive_that_disagrees_with_the_metadata(dcp_run: Path, tmp_path: Path) -> None:
    folder = _copy(dcp_run, tmp_path)

    def shrink(meta: Any) -> None:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

        md = meta.state_dict_metadata["model.head.weight"]
        md.size = torch.Size([3, 5])
        md.chunks[0] = ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=torch.Size([3, 5]))

    _edit_metadata(folder, shrink)
    with (
        open_checkpoint(folder) as ck,
        pytest.raises(CorruptFileError, match=r"is \[3, 4\] float32; .metadata says \[3, 5\]"),
    ):
        ck.read_bytes(ck["head.weight"])
    assert "dcp-item" in {f.kind for f in scan(folder / ".metadata").findings}


# -- the allowlist extension is local to .metadata ---------------------------------------------------------
def test_scan_calls_a_clean_folder_safe_and_checks_the_reassembled_values(dcp_run: Path) -> None:
    report = scan(dcp_run / "dcp" / ".metadata")
    assert report.format == "dcp"
    assert report.safe, report.findings
    assert report.values_checked and report.tensors_checked == 8  # the floating tensors
    names = {g.name for g in report.globals}
    assert "torch.distributed.checkpoint.metadata.TensorStorageMetadata" in names
    assert all(g.verdict == "safe" for g in report.globals)


def test_the_same_classes_elsewhere_are_still_dangerous(dcp_run: Path, tmp_path: Path) -> None:
    meta = pickle.loads((dcp_run / "dcp" / ".metadata").read_bytes())
    torch.save({"meta": meta}, tmp_path / "smuggled.pt")
    report = scan(tmp_path / "smuggled.pt")
    verdicts = {g.name: g.verdict for g in report.globals}
    assert verdicts["torch.distributed.checkpoint.metadata.Metadata"] == "dangerous"
    # a layout name lookup, on torch's own weights_only allowlist (sparse tensors pickle their layout with it)
    assert verdicts["torch.serialization._get_layout"] == "safe"
    assert "dangerous-global" in {f.kind for f in report.findings}
    from ckptool.errors import UnsafePickleError

    with pytest.raises(UnsafePickleError, match=r"torch\.distributed\.checkpoint\.metadata"):
        open_checkpoint(tmp_path / "smuggled.pt")


def test_a_metadata_pickle_naming_anything_else_is_refused(dcp_run: Path, tmp_path: Path) -> None:
    folder = _copy(dcp_run, tmp_path)
    evil = pickle.dumps(pickle.loads((folder / ".metadata").read_bytes()))
    evil = evil.replace(b"\x8c\x0b_get_layout", b"\x8c\x0bsystem_____")  # same length: still a valid pickle
    (folder / ".metadata").write_bytes(evil)
    from ckptool.errors import UnsafePickleError

    with pytest.raises(UnsafePickleError, match=r"torch\.serialization\.system_____"):
        open_checkpoint(folder)
    kinds = {f.kind for f in scan(folder / ".metadata").findings}
    assert "dangerous-global" in kinds  # torch.serialization is on the denylist


# -- tilings a 2-rank run cannot make: a DCP folder written item by item with torch's own classes ------------
def _write_dcp(folder: Path, tensors: dict[str, tuple[Any, list[tuple[tuple[int, ...], tuple[int, ...]]]]]) -> None:
    """What FileSystemWriter writes, for chunks of any tiling: every chunk a torch.save archive back to back
    in one ``__0_0.distcp``, and the Metadata that describes them."""
    import io

    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    folder.mkdir()
    data = io.BytesIO()
    sdm: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    for name, (full, boxes) in tensors.items():
        chunks = []
        for offsets, sizes in boxes:
            view = full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))].clone()
            start = data.tell()
            torch.save(view, data)
            chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
            storage[MetadataIndex(name, offsets)] = _StorageInfo("__0_0.distcp", start, data.tell() - start)
        sdm[name] = TensorStorageMetadata(TensorProperties.create_from_tensor(full), full.size(), chunks)
    (folder / "__0_0.distcp").write_bytes(data.getvalue())
    meta = Metadata(state_dict_metadata=sdm, storage_data=storage, planner_data={k: (k,) for k in tensors})
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


def _grid(shape: tuple[int, ...], cuts: tuple[tuple[int, ...], ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Boxes of a grid: ``cuts[d]`` are the starts along dim d (0 first)."""
    import itertools

    axes = [[(a, [*c, shape[d]][i + 1] - a) for i, a in enumerate(c)] for d, c in enumerate(cuts)]
    return [(tuple(o for o, _ in box), tuple(s for _, s in box)) for box in itertools.product(*axes)]


def test_two_d_and_three_d_tilings_reassemble_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "grid": (torch.randn(6, 10, generator=g), _grid((6, 10), ((0, 4), (0, 3, 7)))),  # 2 x 3 uneven blocks
        "cube": (torch.randn(4, 3, 5, generator=g).to(torch.bfloat16), _grid((4, 3, 5), ((0, 1), (0, 2), (0, 4)))),
        "rows": (torch.arange(12, dtype=torch.int32).reshape(4, 3), _grid((4, 3), ((0, 1, 3), (0,)))),
    }
    _write_dcp(tmp_path / "dcp", tensors)
    state = {k: torch.zeros_like(v) for k, (v, _) in tensors.items()}  # torch reads the hand-written folder too
    import torch.distributed.checkpoint as tdcp

    with pytest.warns(UserWarning):
        tdcp.load(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    for slab in (dcp.SLAB, 1):  # the default slab, and one row at a time
        monkeypatch.setattr(dcp, "SLAB", slab)
        with open_checkpoint(tmp_path / "dcp") as ck:
            for name, (full, _) in tensors.items():
                assert torch.equal(state[name], full)
                assert ck.read_bytes(ck[name]) == _raw(full), (name, slab)


def test_a_hand_written_gap_in_a_grid_is_refused(tmp_path: Path) -> None:
    full = torch.randn(6, 10)
    boxes = _grid((6, 10), ((0, 4), (0, 3, 7)))
    _write_dcp(tmp_path / "dcp", {"grid": (full, boxes[:-1])})
    with pytest.raises(CorruptFileError, match="cover 54 of its 60 elements"):
        open_checkpoint(tmp_path / "dcp")


@pytest.mark.parametrize("rank", [0, 1])
def test_a_distcp_file_alone_is_never_read_as_its_last_archive(dcp_run: Path, rank: int) -> None:
    """A .distcp holds many torch.save archives back to back (its last one is a scalar): refused, with the hint."""
    from typer.testing import CliRunner

    from ckptool.cli.app import app

    path = dcp_run / "dcp" / f"__{rank}_0.distcp"
    with pytest.raises(CorruptFileError, match="more than one zip archive") as e:
        open_checkpoint(path)
    assert "torch.distributed.checkpoint shard" in (e.value.hint or "")
    assert "zip-multi-archive" in {f.kind for f in scan(path).findings}
    r = CliRunner().invoke(app, ["export", str(path), "--safetensors", str(dcp_run / f"never{rank}.safetensors")])
    assert r.exit_code == 2 and not (dcp_run / f"never{rank}.safetensors").exists()
