"""export_safetensors: streamed, bit-exact, atomic, torch-free; checked against safetensors.torch.load_file."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptool import open_checkpoint
from ckptool.checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ckptool.convert import safetensors_writer as stw
from ckptool.convert.safetensors_writer import export_safetensors
from ckptool.errors import CkptError, CorruptFileError, KeyNotFoundError, OutputExistsError, UsageError

# -- builders shared with test_export_pth.py and test_diff.py -------------------------------------------------


def tricky_state_dict(*, legacy: bool = False, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Every layout a writer can get wrong: views with storage offsets, strides, transposes, stride-0
    expansion, several names on one storage, scalars, empty tensors, and many dtypes."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(100, generator=g)
    mat = torch.randn(6, 5, generator=g)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["base"] = base
    sd["view.offset"] = base[10:30]
    sd["view.strided"] = base[1::3]
    sd["view.2d"] = base[40:64].view(4, 6)
    sd["mat.t"] = mat.t()
    sd["mat.cols"] = mat[:, 1:4]
    sd["tied.a"] = mat
    sd["tied.b"] = mat
    sd["expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["bf16"] = torch.randn(7, 3, generator=g).to(torch.bfloat16)
    sd["fp16"] = torch.randn(5, generator=g).half()
    sd["f64"] = torch.randn(4, dtype=torch.float64, generator=g)
    sd["i64"] = torch.arange(-5, 6)
    sd["i32.t"] = torch.arange(12, dtype=torch.int32).reshape(3, 4).t()
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    if not legacy:  # torch's legacy writer cannot save these
        sd["f8"] = torch.randn(4, generator=g).to(torch.float8_e4m3fn)
        sd["u16"] = torch.tensor([1, 65535], dtype=torch.uint16)
    return sd


def save_sd(sd: Any, path: Path, fmt: str = "zip") -> Path:
    torch.save(sd, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert list(sorted(expected)) == list(sorted(got))
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k
        else:
            assert torch.equal(got[k], v), k


def make_onnx(path: Path, arrays: dict[str, np.ndarray], *, raw: bool = True, external: bool = False) -> Path:
    """A minimal ONNX model whose initializers are ``arrays`` (raw_data, typed fields, or external data)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = []
    for name, arr in arrays.items():
        if raw:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            dt = helper.np_dtype_to_tensor_dtype(arr.dtype)
            inits.append(helper.make_tensor(name, dt, arr.shape, arr.flatten().tolist(), raw=False))
    first = next(iter(arrays))
    graph = helper.make_graph(
        [helper.make_node("Identity", [first], ["out"])],
        "g",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def big_endian_checkpoint(path: Path) -> tuple[Checkpoint, dict[str, np.ndarray]]:
    """A checkpoint whose bytes are big-endian (as legacy files from big-endian machines say in sys_info)."""
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5 - 4).astype(">f4")
    i = np.array([1, -2, 3], dtype=">i8")
    path.write_bytes(b"\0" * 16 + w.tobytes() + i.tobytes())
    s1 = StorageInfo("0", "float32", 12, "cpu", ByteSource(str(path), 16, 48))
    s2 = StorageInfo("1", "int64", 3, "cpu", ByteSource(str(path), 64, 24))
    tensors = [
        TensorInfo("w", "float32", (3, 4), s1),
        TensorInfo("w.t", "float32", (4, 3), s1, 0, (1, 4)),
        TensorInfo("w.row", "float32", (4,), s1, 4),
        TensorInfo("i", "int64", (3,), s2),
    ]
    expected = {"w": w.astype("<f4"), "w.t": w.T.astype("<f4"), "w.row": w[1].astype("<f4"), "i": i.astype("<i8")}
    return Checkpoint(path=str(path), format="torch-legacy", tensors=tensors, byteorder="big"), expected


def deflate_copy(src: Path, dst: Path) -> Path:
    """The same torch zip with its data records deflated (some tools re-zip checkpoints like that)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    return dst


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def files_in(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


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
