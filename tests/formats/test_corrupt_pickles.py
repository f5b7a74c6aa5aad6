"""Corrupt pickles that torch refuses are refused by ckptool too (exit 2, one line naming the file).

Each case is a real ``torch.save`` zip whose ``data.pkl`` gets one corrupt opcode sequence spliced in
after its PROTO opcode (or its PROTO changed). ``torch.load(weights_only=False)`` (the C unpickler)
refuses every one; the test checks that first, so a case that torch would read proves nothing here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from hostile import replace_member, zip_members
from proc import run_script
from torch_oracle import torch_load

from ckptool.errors import CorruptFileError
from ckptool.formats.unpickler import load

SPLICES = {
    # FRAME claiming 2**62 bytes: _pickle.c reads the frame whole ("pickle data was truncated")
    "frame-2e62": b"\x95" + struct.pack("<Q", 1 << 62),
    # LONG_BINPUT 2**31: the C memo is an array of 2 x index slots (MemoryError)
    "memo-2e31": b"K\x01r" + struct.pack("<I", 1 << 31) + b"0",
    # DICT with 3 items ("odd number of items for DICT")
    "dict-odd": b"(K\x01K\x02K\x03d0",
    # SETITEMS with 3 items ("odd number of items for SETITEMS")
    "setitems-odd": b"}(K\x01K\x02K\x03u0",
}


def _good(tmp_path: Path) -> Path:
    p = tmp_path / "good.pth"
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, p)
    return p


def _data_pkl(path: Path) -> bytes:
    return next(d for n, d in zip_members(path) if n.endswith("/data.pkl"))


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corrupt")
    good = _good(d)
    pkl = _data_pkl(good)
    assert pkl[:2] == b"\x80\x02"
    out = {"good": good}
    for name, splice in SPLICES.items():
        out[name] = replace_member(good, d / f"{name}.pth", "/data.pkl", pkl[:2] + splice + pkl[2:])
    out["protocol-6"] = replace_member(good, d / "protocol-6.pth", "/data.pkl", b"\x80\x06" + pkl[2:])
    return out


@pytest.fixture(scope="module")
def torch_view(corrupt: dict[str, Path]) -> dict[str, dict]:
    return torch_load(list(corrupt.values()), weights_only=False)


CASES = [*SPLICES, "protocol-6"]


def test_torch_reads_the_uncorrupted_file(corrupt: dict[str, Path], torch_view: dict[str, dict]) -> None:
    assert torch_view[str(corrupt["good"])]["ok"]
    assert run_script("inspect", corrupt["good"]).returncode == 0


@pytest.mark.parametrize("case", CASES)
def test_refused_like_torch(case: str, corrupt: dict[str, Path], torch_view: dict[str, dict]) -> None:
    path = corrupt[case]
    assert not torch_view[str(path)]["ok"], f"torch reads {case}: the case proves nothing"
    r = run_script("inspect", path)
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", CASES)
def test_export_refuses_too(case: str, corrupt: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "out.safetensors"
    r = cli("export", corrupt[case], "--safetensors", out)
    assert r.exit_code == 2 and not out.exists()
    assert str(corrupt[case]) in r.output and "Usage" not in r.output


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"K\x01.", "FRAME claims"),
        (b"\x80\x04\x95" + struct.pack("<Q", 4) + b"K\x01.", "FRAME claims"),  # 3 bytes follow, not 4
        (b"\x80\x02K\x01r" + struct.pack("<I", 1 << 31) + b".", "memo index 2147483648"),
        (b"\x80\x02(K\x01K\x02K\x03d.", "DICT with an odd number"),
        (b"\x80\x06K\x01.", "unsupported pickle protocol 6"),
    ],
)
def test_interpreter_rules(data: bytes, says: str) -> None:
    with pytest.raises(CorruptFileError, match=says):
        load(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04\x95" + struct.pack("<Q", 3) + b"K\x01.",  # a frame holding exactly what follows
        b"\x80\x02K\x01r" + struct.pack("<I", (1 << 31) - 1) + b".",  # below the bound: ckptool reads it
        b"\x80\x05K\x01.",
    ],
)
def test_the_bounds_are_tight(data: bytes) -> None:
    assert load(data)[0] == 1
