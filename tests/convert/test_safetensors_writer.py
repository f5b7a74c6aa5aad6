"""export_safetensors: streamed, bit-exact, atomic, torch-free; checked against safetensors.torch.load_file."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from factory import (
    assert_same,
    big_endian_checkpoint,
    deflate_copy,
    files_in,
    make_onnx,
    read_header,
    save_sd,
    tricky_state_dict,
)
from safetensors.torch import load_file, save_file

from ckptool import open_checkpoint
from ckptool.convert import safetensors_writer as stw
from ckptool.convert.safetensors_writer import export_safetensors
from ckptool.errors import CkptError, CorruptFileError, KeyNotFoundError, OutputExistsError, UsageError

# -- correctness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_every_layout_is_written_exactly(tmp_path: Path, fmt: str) -> None:
    sd = tricky_state_dict(legacy=fmt == "legacy")
    src = save_sd(sd, tmp_path / "src.pth", fmt)
    out = tmp_path / "out.safetensors"
    with open_checkpoint(src) as ck:
        res = export_safetensors(ck, out)
    assert_same(sd, load_file(out))
    assert res.verified and res.tensors == len(sd) and res.skipped == 0
    assert res.bytes == sum(v.numel() * v.element_size() for v in sd.values())
    assert res.file_bytes == out.stat().st_size
    groups = [set(g) for g in res.shared]
    assert {"base", "view.offset", "view.strided", "view.2d"} in groups
    assert {"mat.t", "mat.cols", "tied.a", "tied.b"} in groups
    assert res.to_dict()["out"] == str(out)


def test_header_layout_and_metadata(tmp_path: Path) -> None:
    sd = tricky_state_dict()
    src = save_sd(sd, tmp_path / "model.pth")
    out = tmp_path / "out.safetensors"
    with open_checkpoint(src) as ck:
        export_safetensors(ck, out, metadata={"license": "MIT"})
    n, header = read_header(out)
    assert n % 8 == 0
    meta = header.pop("__metadata__")
    assert meta["format"] == "pt"
    assert meta["source"] == "model.pth" and meta["source_format"] == "torch-zip"
    assert meta["converted_by"].startswith("ckptool ") and meta["license"] == "MIT"
    assert "source_state_dict_key" not in meta
    sizes = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    sizes["F8_E4M3"] = 1
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], sizes[e["dtype"]]) for e in header.values())
    pos = 0
    for begin, end, size in spans:
        assert begin == pos and begin % size == 0  # contiguous, and every tensor aligned to its element size
        pos = end
    assert pos == out.stat().st_size - 8 - n


def test_nested_training_checkpoint_and_key(tmp_path: Path) -> None:
    sd, ema = tricky_state_dict(seed=1), tricky_state_dict(seed=2)
    ckpt = {"epoch": 7, "state_dict": sd, "ema": ema, "optimizer": {"lr": 0.1}}
    src = save_sd(ckpt, tmp_path / "train.ckpt")
    with open_checkpoint(src) as ck:
        export_safetensors(ck, tmp_path / "a.safetensors")
    assert_same(sd, load_file(tmp_path / "a.safetensors"))
    assert read_header(tmp_path / "a.safetensors")[1]["__metadata__"]["source_state_dict_key"] == "state_dict"
    with open_checkpoint(src, key="ema") as ck:
        res = export_safetensors(ck, tmp_path / "b.safetensors")
    assert_same(ema, load_file(tmp_path / "b.safetensors"))
    assert res.state_dict_key == "ema"


def test_names_select_and_rename(tmp_path: Path) -> None:
    sd = tricky_state_dict()
    src = save_sd(sd, tmp_path / "src.pth")
    out = tmp_path / "out.safetensors"
    with open_checkpoint(src) as ck:
        res = export_safetensors(ck, out, names={"view.2d": "v", "mat.t": "features.w"})
        assert res.tensors == 2 and res.skipped == len(sd) - 2
        got = load_file(out)
        assert sorted(got) == ["features.w", "v"]
        assert torch.equal(got["v"], sd["view.2d"]) and torch.equal(got["features.w"], sd["mat.t"])
        with pytest.raises(KeyNotFoundError, match="nope"):
            export_safetensors(ck, tmp_path / "x.safetensors", names={"nope": "x"})
        with pytest.raises(UsageError, match="both be written"):
            export_safetensors(ck, tmp_path / "x.safetensors", names={"base": "x", "i8": "x"})
        with pytest.raises(UsageError, match="nothing to write"):
            export_safetensors(ck, tmp_path / "x.safetensors", names={})
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("kind", ["raw", "typed", "external"])
def test_onnx_sources(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "fc.bias": rng.standard_normal(5).astype(np.float32),
        "steps": np.array([3, -1, 7], dtype=np.int64),
        "half": rng.standard_normal(6).astype(np.float16),
    }
    src = make_onnx(tmp_path / "m.onnx", arrays, raw=kind != "typed", external=kind == "external")
    out = tmp_path / "out.safetensors"
    with open_checkpoint(src) as ck:
        export_safetensors(ck, out)
    got = load_file(out)
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert np.array_equal(got[k].numpy(), v), k
    assert read_header(out)[1]["__metadata__"]["source_format"] == "onnx"


def test_compressed_zip_records(tmp_path: Path) -> None:
    sd = tricky_state_dict()
    src = deflate_copy(save_sd(sd, tmp_path / "plain.pth"), tmp_path / "deflated.pth")
    with open_checkpoint(src) as ck:
        assert any(t.storage and t.storage.source and t.storage.source.compressed for t in ck.tensors)
        export_safetensors(ck, tmp_path / "out.safetensors")
    assert_same(sd, load_file(tmp_path / "out.safetensors"))


def test_big_endian_source(tmp_path: Path) -> None:
    ck, expected = big_endian_checkpoint(tmp_path / "be.bin")
    out = tmp_path / "out.safetensors"
    export_safetensors(ck, out)
    got = load_file(out)
    for k, v in expected.items():
        assert np.array_equal(got[k].numpy(), v), k


def test_safetensors_source_keeps_its_metadata(tmp_path: Path) -> None:
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    src = tmp_path / "src.safetensors"
    save_file(sd, src, metadata={"format": "pt", "author": "me"})
    out = tmp_path / "out.safetensors"
    with open_checkpoint(src) as ck:
        export_safetensors(ck, out)
    assert_same(sd, load_file(out))
    meta = read_header(out)[1]["__metadata__"]
    assert meta["author"] == "me" and meta["source_format"] == "safetensors"


def test_names_safetensors_cannot_store(tmp_path: Path) -> None:
    src = save_sd({"a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "s.pth")
    with open_checkpoint(src) as ck:
        with pytest.raises(UsageError, match="__metadata__"):
            export_safetensors(ck, tmp_path / "out.safetensors", names={"a": "__metadata__"})
        with pytest.raises(UsageError, match="not valid Unicode"):
            export_safetensors(ck, tmp_path / "out.safetensors", names={"a": "bad\udc80"})
    assert files_in(tmp_path) == ["s.pth"]


def test_dtype_safetensors_cannot_store(tmp_path: Path) -> None:
    src = save_sd({"c": torch.zeros(3, dtype=torch.complex128)}, tmp_path / "c.pth")
    with open_checkpoint(src) as ck, pytest.raises(UsageError, match=r"complex128.*cannot store"):
        export_safetensors(ck, tmp_path / "out.safetensors")
    assert files_in(tmp_path) == ["c.pth"]


# -- atomic output ------------------------------------------------------------------------------------------


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = save_sd(tricky_state_dict(), tmp_path / "src.pth")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    with open_checkpoint(src) as ck:
        with pytest.raises(OutputExistsError):
            export_safetensors(ck, out)
        assert out.read_bytes() == b"old"
        export_safetensors(ck, out, force=True)
    assert_same(tricky_state_dict(), load_file(out))
    with open_checkpoint(src) as ck, pytest.raises(UsageError, match="input file itself"):
        export_safetensors(ck, src, force=True)
    assert_same(tricky_state_dict(), torch.load(src, weights_only=True))


def test_source_truncated_midway_leaves_nothing(tmp_path: Path) -> None:
    sd = OrderedDict((f"w{i}", torch.randn(256, 256)) for i in range(8))
    src = save_sd(sd, tmp_path / "src.pth")
    with open_checkpoint(src) as ck:
        with open(src, "r+b") as fh:  # the file shrinks after its header was read
            fh.truncate(src.stat().st_size // 2)
        with pytest.raises(CorruptFileError, match="truncated"):
            export_safetensors(ck, tmp_path / "out.safetensors")
    assert files_in(tmp_path) == ["src.pth"]


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_error_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    src = save_sd(OrderedDict((f"w{i}", torch.randn(64, 64)) for i in range(6)), tmp_path / "src.pth")
    real = stw.copy_range
    calls = []

    def failing(*a: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise exc
        real(*a, **kw)

    monkeypatch.setattr(stw, "copy_range", failing)
    with open_checkpoint(src) as ck, pytest.raises(type(exc)):
        export_safetensors(ck, tmp_path / "out.safetensors")
    assert files_in(tmp_path) == ["src.pth"]


def test_verify_catches_a_corrupted_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = OrderedDict((f"w{i}", torch.randn(64, 64)) for i in range(4))
    src = save_sd(sd, tmp_path / "src.pth")
    real = stw.copy_range

    def corrupting(src: Any, offset: int, nbytes: int, fd: int, buf: bytearray, progress: Any) -> None:
        real(src, offset, nbytes - 1, fd, buf, progress)
        os.write(fd, b"\x7f")  # last byte wrong

    monkeypatch.setattr(stw, "copy_range", corrupting)
    with open_checkpoint(src) as ck:
        with pytest.raises(CkptError, match=r"verification failed: tensor 'w\d' differs"):
            export_safetensors(ck, tmp_path / "out.safetensors")
        assert files_in(tmp_path) == ["src.pth"]
        export_safetensors(ck, tmp_path / "unchecked.safetensors", verify=False)
    got = load_file(tmp_path / "unchecked.safetensors")
    assert not torch.equal(got["w0"], sd["w0"])  # without the check the damage goes unnoticed


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    sd = tricky_state_dict()
    src = save_sd(sd, tmp_path / "src.pth")
    calls: list[tuple[int, int]] = []
    with open_checkpoint(src) as ck:
        res = export_safetensors(ck, tmp_path / "a.safetensors", progress=lambda d, t: calls.append((d, t)))
        assert calls[0] == (0, 2 * res.bytes) and calls[-1] == (2 * res.bytes, 2 * res.bytes)
        assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
        calls.clear()
        export_safetensors(ck, tmp_path / "b.safetensors", verify=False, progress=lambda d, t: calls.append((d, t)))
        assert calls[-1] == (res.bytes, res.bytes)


# -- full size ----------------------------------------------------------------------------------------------

FRESH_EXPORT = textwrap.dedent(
    """
    import json, sys
    from ckptool import open_checkpoint
    from ckptool.convert.safetensors_writer import export_safetensors
    with open_checkpoint(sys.argv[1]) as ck:
        res = export_safetensors(ck, sys.argv[2])
    # VmHWM: this process image's own peak (ru_maxrss would include the forking parent's pages)
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"torch": "torch" in sys.modules, "rss_mib": hwm / 1024, "verified": res.verified}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_full_size_vgg16_bn(vgg16_bn_files: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    src = vgg16_bn_files[fmt]
    out = tmp_path / "vgg16_bn.safetensors"
    r = subprocess.run([sys.executable, "-c", FRESH_EXPORT, str(src), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["verified"] and not info["torch"]  # torch-free
    assert info["rss_mib"] < 100, info  # streamed: the 553 MB never sit in memory
    expected = torch.load(src, mmap=fmt == "zip", weights_only=True)
    assert_same(expected, load_file(out))
    assert out.stat().st_size < src.stat().st_size + 20_000
    out.unlink()


def test_the_copy_is_not_the_source(tmp_path: Path) -> None:
    """A hard-linked or copied source stays untouched by an export next to it."""
    sd = tricky_state_dict()
    src = save_sd(sd, tmp_path / "src.pth")
    shutil.copy(src, tmp_path / "copy.pth")
    with open_checkpoint(tmp_path / "copy.pth") as ck:
        export_safetensors(ck, tmp_path / "out.safetensors")
    assert (tmp_path / "copy.pth").read_bytes() == src.read_bytes()
