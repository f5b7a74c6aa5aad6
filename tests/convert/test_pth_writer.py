"""export_pth: a torch zip file written without torch; checked with torch.load(weights_only=True)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
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
    save_sd,
    tricky_state_dict,
)
from safetensors.torch import save_file

from ckptool import open_checkpoint
from ckptool.convert import pth_writer
from ckptool.convert.pth_writer import export_pth
from ckptool.errors import CkptError, CorruptFileError, OutputExistsError, UsageError


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")


def data_offsets(path: Path) -> dict[str, int]:
    """Where each record's data starts (after its local header)."""
    raw = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            h = info.header_offset
            n, m = struct.unpack("<HH", raw[h + 26 : h + 30])
            out[info.filename] = h + 30 + n + m
    return out


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_every_layout_round_trips(tmp_path: Path, fmt: str) -> None:
    sd = tricky_state_dict(legacy=fmt == "legacy")
    src = save_sd(sd, tmp_path / "src.pth", fmt)
    out = tmp_path / "out.pth"
    with open_checkpoint(src) as ck:
        res = export_pth(ck, out)
    got = load(out)
    assert list(got) == list(sd)  # an OrderedDict in the source's order
    assert_same(sd, got)
    for k, v in sd.items():  # views keep their layout, as torch.save keeps it
        assert got[k].stride() == v.stride() and got[k].storage_offset() == v.storage_offset(), k
    # names that shared a storage still share one
    assert got["tied.a"].untyped_storage().data_ptr() == got["tied.b"].untyped_storage().data_ptr()
    assert got["view.offset"].untyped_storage().data_ptr() == got["base"].untyped_storage().data_ptr()
    assert res.verified and res.tensors == len(sd) and res.file_bytes == out.stat().st_size
    assert res.bytes == sum(
        v.untyped_storage().nbytes() for v in {id(v.untyped_storage()): v for v in sd.values()}.values()
    )


def test_zip_layout_matches_torch(tmp_path: Path) -> None:
    src = save_sd(tricky_state_dict(), tmp_path / "src.pth")
    out = tmp_path / "my-model.v2.pth"
    with open_checkpoint(src) as ck:
        export_pth(ck, out)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None  # every CRC is right
        names = zf.namelist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.read("my-model/byteorder") == b"little" and zf.read("my-model/version") == b"3\n"
        assert zf.read("my-model/.storage_alignment") == b"64"
    assert names[0] == "my-model/data.pkl"
    assert all(off % 64 == 0 for off in data_offsets(out).values())
    with open_checkpoint(out) as ck:  # ckptool inspect reads it
        assert ck.format == "torch-zip" and len(ck.tensors) == len(tricky_state_dict())


def test_parameters_and_requires_grad(tmp_path: Path) -> None:
    sd = OrderedDict(
        p=torch.nn.Parameter(torch.randn(3)),
        frozen=torch.nn.Parameter(torch.randn(2), requires_grad=False),
        g=torch.randn(2).requires_grad_(),
        plain=torch.randn(2),
    )
    src = save_sd(sd, tmp_path / "src.pth")
    with open_checkpoint(src) as ck:
        export_pth(ck, tmp_path / "out.pth")
    got = load(tmp_path / "out.pth")
    assert isinstance(got["p"], torch.nn.Parameter) and got["p"].requires_grad
    assert isinstance(got["frozen"], torch.nn.Parameter) and not got["frozen"].requires_grad
    assert not isinstance(got["g"], torch.nn.Parameter) and got["g"].requires_grad
    assert not got["plain"].requires_grad
    for k in sd:
        assert torch.equal(got[k].detach(), sd[k].detach())


def test_zip64_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files over 4 GB need zip64 fields; force them on a small file and check both readers."""
    monkeypatch.setattr(pth_writer, "ZIP64_LIMIT", 100)
    sd = OrderedDict((f"w{i}", torch.randn(40 + i)) for i in range(5))
    src = save_sd(sd, tmp_path / "src.pth")
    out = tmp_path / "out.pth"
    with open_checkpoint(src) as ck:
        export_pth(ck, out)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        big = [i for i in zf.infolist() if i.file_size >= 100]
        assert big and all(len(i.extra) >= 20 for i in big)  # a zip64 extra field was written
    assert_same(sd, load(out))


def test_selection_writes_only_the_bytes_it_uses(tmp_path: Path) -> None:
    base = torch.arange(1000, dtype=torch.float32)
    src = save_sd(OrderedDict(base=base, win=base[500:510]), tmp_path / "src.pth")
    out = tmp_path / "out.pth"
    with open_checkpoint(src) as ck:
        res = export_pth(ck, out, names={"win": "window"})
    got = load(out)
    assert list(got) == ["window"] and torch.equal(got["window"], base[500:510])
    assert res.bytes == 40 and got["window"].untyped_storage().nbytes() == 40


@pytest.mark.parametrize("kind", ["safetensors", "onnx", "onnx-typed", "deflated", "big-endian"])
def test_other_sources(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out.pth"
    expected: dict[str, Any]
    if kind == "safetensors":
        expected = {"a": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(2).to(torch.bfloat16)}
        save_file(expected, tmp_path / "src.safetensors")
        ck = open_checkpoint(tmp_path / "src.safetensors")
    elif kind.startswith("onnx"):
        rng = np.random.default_rng(0)
        arrays = {"w": rng.standard_normal((4, 3)).astype(np.float32), "n": np.array([1, -2], dtype=np.int64)}
        ck = open_checkpoint(make_onnx(tmp_path / "m.onnx", arrays, raw=kind == "onnx"))
        expected = {k: torch.from_numpy(v) for k, v in arrays.items()}
    elif kind == "deflated":
        expected = tricky_state_dict()
        ck = open_checkpoint(deflate_copy(save_sd(expected, tmp_path / "p.pth"), tmp_path / "d.pth"))
    else:
        ck, arrays = big_endian_checkpoint(tmp_path / "be.bin")
        expected = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    with ck:
        export_pth(ck, out)
    assert_same(expected, load(out))


def test_existing_output_and_input_protection(tmp_path: Path) -> None:
    src = save_sd(tricky_state_dict(), tmp_path / "src.pth")
    out = tmp_path / "out.pth"
    out.write_bytes(b"old")
    with open_checkpoint(src) as ck:
        with pytest.raises(OutputExistsError):
            export_pth(ck, out)
        assert out.read_bytes() == b"old"
        export_pth(ck, out, force=True)
        with pytest.raises(UsageError, match="input file itself"):
            export_pth(ck, src, force=True)
    assert_same(tricky_state_dict(), load(out))
    assert_same(tricky_state_dict(), load(src))


def test_source_truncated_midway_leaves_nothing(tmp_path: Path) -> None:
    src = save_sd(OrderedDict((f"w{i}", torch.randn(128, 128)) for i in range(6)), tmp_path / "src.pth")
    with open_checkpoint(src) as ck:
        with open(src, "r+b") as fh:
            fh.truncate(src.stat().st_size // 2)
        with pytest.raises(CorruptFileError, match="truncated"):
            export_pth(ck, tmp_path / "out.pth")
    assert files_in(tmp_path) == ["src.pth"]


def test_verify_catches_bad_bytes_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = OrderedDict((f"w{i}", torch.randn(64, 64)) for i in range(3))
    src = save_sd(sd, tmp_path / "src.pth")
    real = pth_writer._ZipWriter.write

    def flip(self: Any, data: Any) -> None:
        mv = bytes(memoryview(data).cast("B"))
        if len(mv) == 64 * 64 * 4:  # a storage record: damage it after its CRC was taken
            mv = mv[:-1] + bytes([mv[-1] ^ 1])
        real(self, mv)

    monkeypatch.setattr(pth_writer._ZipWriter, "write", flip)
    with open_checkpoint(src) as ck, pytest.raises(CkptError, match=r"verification failed.*CRC"):
        export_pth(ck, tmp_path / "out.pth")
    assert files_in(tmp_path) == ["src.pth"]


def test_progress(tmp_path: Path) -> None:
    src = save_sd(tricky_state_dict(), tmp_path / "src.pth")
    calls: list[tuple[int, int]] = []
    with open_checkpoint(src) as ck:
        res = export_pth(ck, tmp_path / "out.pth", progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 2 * res.bytes) and calls[-1] == (2 * res.bytes, 2 * res.bytes)


def test_writer_is_torch_free(tmp_path: Path) -> None:
    src = save_sd(tricky_state_dict(), tmp_path / "src.pth")
    code = (
        "import sys; from ckptool import open_checkpoint; from ckptool.convert.pth_writer import export_pth; "
        "export_pth(open_checkpoint(sys.argv[1]), sys.argv[2]); print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "o.pth")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert_same(tricky_state_dict(), load(tmp_path / "o.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["legacy"])
def test_full_size_legacy_to_zip(vgg16_bn_files: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    """torchvision's old format to the current one, as torch.save would write it."""
    src = vgg16_bn_files[fmt]
    out = tmp_path / "vgg16_bn.pth"
    with open_checkpoint(src) as ck:
        res = export_pth(ck, out)
    assert res.verified and res.verify_method is not None and "CRC-32" in res.verify_method
    assert res.tensors == len(ck.tensors) and res.file_bytes == out.stat().st_size
    assert_same(torch.load(src, weights_only=True), torch.load(out, mmap=True, weights_only=True))
    out.unlink()
