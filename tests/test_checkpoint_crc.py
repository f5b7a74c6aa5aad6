"""The zip CRC-32 on ranged value reads: a record read only in part (a view on part of a storage, a record
longer than its storage) is not checked by that read; ``Checkpoint.crc_unchecked`` says so, and
``verify_crcs()`` streams it whole once. ``export`` calls it before it reports bit-exact: a damaged record
is refused, naming it, and nothing is written. (torch itself never checks CRCs: PyTorch builds miniz with
MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS; the refusal is ckptool's own policy.)"""

from __future__ import annotations

import struct
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from factory import deflate_copy

import ckptool
from ckptool.errors import CorruptFileError

MARK = 12345.0  # a value to find in the file's bytes


def _views(path: Path) -> Path:
    base = torch.arange(16, dtype=torch.float32)
    base[10] = MARK  # outside both views: only a whole-record read can notice it changed
    torch.save(OrderedDict(a=base[0:4], b=base[4:8]), path)  # two views, the storage holds 16 values
    return path


def _damage(path: Path, value: float = MARK) -> Path:
    data = bytearray(path.read_bytes())
    at = data.index(struct.pack("<f", value))
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def test_a_partial_read_says_the_crc_was_not_checked(tmp_path: Path) -> None:
    p = _views(tmp_path / "v.pth")
    with ckptool.open(p) as ck:
        assert ck.crc_unchecked == []
        ck.read_bytes(ck["a"])
        assert len(ck.crc_unchecked) == 1 and ck.crc_unchecked[0].endswith("data/0")
        assert ck.verify_crcs() == ck.crc_unchecked or ck.crc_unchecked == []
        assert ck.crc_unchecked == []  # checked once, whole


def test_a_whole_record_read_is_checked(tmp_path: Path) -> None:
    p = tmp_path / "w.pth"
    torch.save({"w": torch.arange(8.0)}, p)
    with ckptool.open(p) as ck:
        ck.read_bytes(ck["w"])
        assert ck.crc_unchecked == [] and ck.verify_crcs() == []


def test_damage_outside_the_views_is_found_by_verify(tmp_path: Path) -> None:
    p = _damage(_views(tmp_path / "v.pth"))
    with ckptool.open(p) as ck:
        assert ck.read_bytes(ck["a"]) == torch.arange(4.0).numpy().tobytes()  # the ranged read cannot tell
        with pytest.raises(CorruptFileError, match=r"record '.*data/0': CRC-32 is"):
            ck.verify_crcs()


@pytest.mark.parametrize("deflated", [False, True], ids=["stored", "deflated"])
def test_export_checks_records_read_in_part(tmp_path: Path, cli, deflated: bool) -> None:
    p = _views(tmp_path / "v.pth")
    if deflated:
        p = deflate_copy(p, tmp_path / "d.pth")
    out = tmp_path / "o.safetensors"
    r = cli("export", p, "--safetensors", out, "--json")
    assert r.exit_code == 0, r.output
    assert "checked the CRC-32 of 1 zip records read only in part" in r.output


def test_export_refuses_a_damaged_record_it_read_in_part(tmp_path: Path, cli) -> None:
    p = _damage(_views(tmp_path / "v.pth"))
    out = tmp_path / "o.safetensors"
    r = cli("export", p, "--safetensors", out)
    assert r.exit_code == 2 and not out.exists()
    assert "CRC-32" in r.output and "data/0" in r.output


def test_no_verify_says_what_was_not_checked(tmp_path: Path, cli) -> None:
    p = _damage(_views(tmp_path / "v.pth"))
    out = tmp_path / "o.safetensors"
    r = cli("export", p, "--safetensors", out, "--no-verify", "--json")
    assert r.exit_code == 0 and out.exists()
    assert "was not checked (--no-verify copies" in r.output and "data/0" in r.output
