"""torch zip archives read as torch reads them (miniz), one test per class of zip differential (issue 14 §1),
multi-archive files, zip64, and the CRC of what export copies. Each file is built byte by byte
(tests/zipcraft.py) and checked against ``torch._C.PyTorchFileReader`` where torch's view is the point."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from zipcraft import Layout, Member, build, members_of

from ckptool.errors import CorruptFileError
from ckptool.formats import _zipread as zr
from ckptool.formats import open_checkpoint
from ckptool.scan import scan
from ckptool.sources import open_source

EVIL0 = b"cposix\nsystem\n(S'echo pwned'\ntR."  # protocol 0: what torch.load(weights_only=False) would run
EVIL2 = b"\x80\x02cposix\nsystem\nX\x0a\x00\x00\x00echo pwned\x85R."


def kinds(report) -> set[str]:
    return {f.kind for f in report.findings}


def dangerous(report) -> set[str]:
    return {g.name for g in report.globals if g.verdict == "dangerous"}


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, list[Member]]:
    path = tmp_path / "m.pth"
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, path)
    return path, members_of(path)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def torch_pkl(path: Path) -> bytes:
    return bytes(torch._C.PyTorchFileReader(str(path)).get_record("data.pkl"))


def ours_pkl(path: Path) -> bytes:
    with open_source(path) as src:
        ar = zr.open_archive(src)
        e = ar.record("data.pkl")
        assert e is not None
        return zr.read_member(src, ar.data_offset(e), e, max_bytes=1 << 30, check_crc=False)


def test_a_rebuilt_torch_file_reads_the_same_through_both(base, tmp_path: Path) -> None:
    _path, members = base
    p = write(tmp_path, "same.pth", build(members))
    r = torch._C.PyTorchFileReader(str(p))
    with open_source(p) as src:
        ar = zr.open_archive(src)
        assert zr.torch_view(ar)["records"] == [n.encode() for n in r.get_all_records()]
        for name in r.get_all_records():
            e = ar.record(name)
            assert e is not None and ar.data_offset(e) == r.get_record_offset(name)
        assert list(zr.differentials(ar)) == []
    with open_checkpoint(p) as ck:
        np.testing.assert_array_equal(ck.numpy("w"), np.arange(6, dtype=np.float32))


# -- PyTorchStreamReader's checks after miniz: the version record ------------------------------------------
@pytest.mark.parametrize(("text", "why"), [(b"abc\n", "cannot parse the version"), (b"11\n", "unsupported version 11")])
def test_a_version_record_torch_refuses_is_refused(base, tmp_path: Path, cli, text: bytes, why: str) -> None:
    _path, members = base
    ms = [replace(m, data=text) if m.name == b"m/version" else m for m in members]
    p = write(tmp_path, "ver.pth", build(ms))
    with pytest.raises(RuntimeError, match="version"):
        torch._C.PyTorchFileReader(str(p))
    with pytest.raises(CorruptFileError, match=why):
        open_checkpoint(p)
    r = cli("inspect", p)
    assert r.exit_code == 2 and "torch.load refuses this archive" in r.output
    assert cli("scan", p).exit_code == 1  # a finding: the file torch cannot open is not "ok"
    assert "corrupt" in kinds(scan(p))


def test_a_directory_attributed_version_record_is_refused_as_undefined(base, tmp_path: Path) -> None:
    """miniz "extracts" a directory entry without writing torch's buffer: torch parses uninitialised memory
    (it opened such a file in one CI run and refused it in the next). ckptool refuses it and says why."""
    _path, members = base
    ms = [replace(m, external_attr=0x10) if m.name == b"m/version" else m for m in members]
    p = write(tmp_path, "dirver.pth", build(ms))
    with pytest.raises(CorruptFileError, match="memory it never filled"):
        open_checkpoint(p)
    with open_source(p) as src, pytest.raises(zr.ZipError) as e:
        zr.torch_open_checks(zr.open_archive(src), src)
    assert e.value.kind == "unspecified"


# -- name lookup: case-insensitive, first match by miniz's own sort ------------------------------------------
@pytest.mark.parametrize("variant", [b"m/DATA.PKL", b"m/Data.Pkl"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_case_variant_data_pkl_is_what_torch_reads(base, tmp_path: Path, cli, variant: bytes, where: str) -> None:
    _path, members = base
    evil = Member(variant, EVIL2, pad_to=64)
    ms = [members[0], evil, *members[1:]] if where == "before" else [*members, evil]
    p = write(tmp_path, "case.pth", build(ms))
    assert ours_pkl(p) == torch_pkl(p)  # the same record as torch, whichever it is
    report = scan(p)
    assert "parser-differential" in kinds(report)
    assert "posix.system" in dangerous(report)  # walked whichever torch takes
    r = cli("inspect", p)
    assert r.exit_code == 2 and "parser-differential" in r.output


def test_a_protocol_0_upper_case_data_pkl_is_walked(base, tmp_path: Path, cli) -> None:
    _path, members = base
    ms = [replace(m, name=b"m/DATA.PKL", data=EVIL0) if m.name == b"m/data.pkl" else m for m in members]
    p = write(tmp_path, "upper.pth", build(ms))
    assert torch_pkl(p) == EVIL0  # torch finds it
    report = scan(p)
    assert "os.system" in dangerous(report) or "posix.system" in dangerous(report)
    assert cli("scan", p).exit_code == 1
    assert cli("inspect", p).exit_code == 2  # the reader's allowlist refuses the global


def test_byteorder_and_storage_records_are_found_case_insensitively(base, tmp_path: Path) -> None:
    _path, members = base
    renames = {b"m/byteorder": b"m/BYTEORDER", b"m/data/0": b"m/Data/0"}
    ms = [replace(m, name=renames.get(m.name, m.name)) for m in members]
    ms = [replace(m, data=b"big") if m.name == b"m/BYTEORDER" else m for m in ms]
    p = write(tmp_path, "bo.pth", build(ms))
    want = torch.load(p, weights_only=True)["w"]  # torch reads BYTEORDER=big and byte-swaps
    with open_checkpoint(p) as ck:
        assert ck.byteorder == "big"
        np.testing.assert_array_equal(ck.numpy("w"), want.numpy())


def test_a_nul_in_a_name_is_a_differential(base, tmp_path: Path, cli) -> None:
    _path, members = base
    ms = [*members, Member(b"m/data.pkl\x00.evil", EVIL2, pad_to=64)]
    p = write(tmp_path, "nul.pth", build(ms))
    assert "data.pkl" in torch._C.PyTorchFileReader(str(p)).get_all_records()  # listed as data.pkl by C code
    report = scan(p)
    assert "parser-differential" in kinds(report) and "posix.system" in dangerous(report)
    assert cli("inspect", p).exit_code == 2


# -- the central directory: which one, and archives torch still reads ----------------------------------------
def evil_members(members: list[Member]) -> list[Member]:
    return [replace(m, data=EVIL2) if m.name == b"m/data.pkl" else m for m in members]


def test_a_trailing_end_record_signature_still_names_the_payload(base, tmp_path: Path, cli) -> None:
    _path, members = base
    p = write(tmp_path, "trail.pth", build(evil_members(members), Layout(trailing=b"PK\x05\x06")))
    assert torch_pkl(p) == EVIL2  # torch reads it; Python's zipfile does not
    report = scan(p)
    assert {"parser-differential"} <= kinds(report) and "posix.system" in dangerous(report)
    r = cli("inspect", p)
    assert r.exit_code == 2 and "parser-differential" in r.output


def test_an_inflated_directory_size_still_names_the_payload(base, tmp_path: Path, cli) -> None:
    _path, members = base
    p = write(tmp_path, "cdsize.pth", build(evil_members(members), Layout(cd_size_delta=12)))
    assert torch_pkl(p) == EVIL2
    report = scan(p)
    assert "parser-differential" in kinds(report) and "posix.system" in dangerous(report)
    assert cli("inspect", p).exit_code == 2


def test_an_end_record_inside_the_comment_is_the_one_miniz_uses(base, tmp_path: Path, cli) -> None:
    """Two directories: the real end record (benign) and, in its comment, a second end record pointing at an
    evil directory appended after the first. miniz takes the last signature."""
    _path, members = base
    benign = build(members)
    # a second archive body: evil data.pkl + its own directory, placed inside the comment of the first
    eocd = benign.rfind(b"PK\x05\x06")
    head = benign[:eocd]
    evil_local = len(head)
    evil = build(evil_members(members))  # its local headers and directory, offsets relative to its start
    ar_e = zr.open_archive(_Mem(evil))
    # shift the evil archive's offsets so they are absolute when it sits right after `head` + a 22-byte record
    shifted = _shift(evil, evil_local + 22)
    comment = shifted[: shifted.rfind(b"PK\x05\x06")]
    cd_ofs_e = ar_e.cd_offset + evil_local + 22
    fake = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(ar_e.entries), len(ar_e.entries), ar_e.cd_size, cd_ofs_e, 0)
    comment += fake
    real = benign[eocd : eocd + 20] + struct.pack("<H", len(comment))
    p = write(tmp_path, "comment.pth", head + real + comment)
    assert torch_pkl(p) == EVIL2  # miniz reads the directory the comment's record points at
    report = scan(p)
    assert "parser-differential" in kinds(report) and "posix.system" in dangerous(report)
    assert cli("inspect", p).exit_code == 2


class _Mem:
    def __init__(self, data: bytes):
        self.data, self.name, self.size = data, "mem", len(data)

    def read(self, off: int, n: int) -> bytes:
        return self.data[off : off + n]

    def view(self, off: int, n: int):
        return memoryview(self.data)[off : off + n]


def _shift(archive: bytes, delta: int) -> bytes:
    """The archive with every local header offset and the directory offset moved by ``delta``."""
    out = bytearray(archive)
    ar = zr.open_archive(_Mem(archive))
    for e, pos in zip(ar.entries, ar.positions, strict=True):
        struct.pack_into("<I", out, ar.cd_offset + pos + 42, e.header_offset + delta)
    struct.pack_into("<I", out, ar.eocd_offset + 16, ar.cd_offset + delta)
    return bytes(out)


def test_zip64_records_are_read(base, tmp_path: Path) -> None:
    _path, members = base
    ms = [replace(m, zip64=True) for m in members]
    p = write(tmp_path, "z64.pth", build(ms, Layout(zip64=True)))
    r = torch._C.PyTorchFileReader(str(p))
    with open_source(p) as src:
        ar = zr.open_archive(src)
        assert ar.zip64 and list(zr.differentials(ar)) == []
        assert ar.data_offset(ar.record("data/0")) == r.get_record_offset("data/0")  # type: ignore[arg-type]
    with open_checkpoint(p) as ck:
        np.testing.assert_array_equal(ck.numpy("w"), np.arange(6, dtype=np.float32))


def test_zip64_and_32bit_records_that_disagree_are_a_differential(base, tmp_path: Path, cli) -> None:
    _path, members = base
    p = write(tmp_path, "z64x.pth", build(members, Layout(zip64=True, zip64_32bit_sentinels=False, count_delta=0)))
    data = bytearray(p.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 1, 1)  # the 32-bit record now lists one entry
    p.write_bytes(bytes(data))
    torch._C.PyTorchFileReader(str(p))  # torch uses the zip64 record
    assert "parser-differential" in kinds(scan(p))
    assert cli("inspect", p).exit_code == 2


# -- CRCs: torch never checks them (MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS); ckptool does -----------------------
def test_a_crc_bad_deflated_data_pkl_still_names_its_global(base, tmp_path: Path, cli) -> None:
    _path, members = base
    ms = [replace(m, data=EVIL2, method=8, crc=0x12345678) if m.name == b"m/data.pkl" else m for m in members]
    p = write(tmp_path, "crc.pth", build(ms))
    assert torch_pkl(p) == EVIL2  # torch reads it: its miniz skips CRC checks
    report = scan(p)
    assert "zip-crc" in kinds(report) and "posix.system" in dangerous(report)


def test_export_refuses_a_record_whose_crc_does_not_match(base, tmp_path: Path, cli) -> None:
    _path, members = base
    ms = [replace(m, crc=zlib.crc32(m.data) ^ 1) if m.name == b"m/data/0" else m for m in members]
    p = write(tmp_path, "badcrc.pth", build(ms))
    out = tmp_path / "out.safetensors"
    r = cli("export", p, "--safetensors", out)
    assert r.exit_code == 2 and "m/data/0" in r.output and "CRC" in r.output
    assert not out.exists()
    r = cli("export", p, "--pth", tmp_path / "out.pth")
    assert r.exit_code == 2 and "m/data/0" in r.output
    assert "zip-crc" in kinds(scan(p))
    assert (
        cli(
            "export", write(tmp_path, "good.pth", build(members)), "--safetensors", tmp_path / "good.safetensors"
        ).exit_code
        == 0
    )


def test_a_deflated_record_with_a_bad_crc_is_refused_by_export(base, tmp_path: Path, cli) -> None:
    _path, members = base
    ms = [replace(m, method=8, crc=zlib.crc32(m.data) ^ 1) if m.name == b"m/data/0" else m for m in members]
    p = write(tmp_path, "badcrc8.pth", build(ms))
    r = cli("export", p, "--safetensors", tmp_path / "o.safetensors")
    assert r.exit_code == 2 and "m/data/0" in r.output and "CRC" in r.output


# -- several archives in one file ---------------------------------------------------------------------------
def test_concatenated_archives_are_refused_with_the_dcp_hint(base, tmp_path: Path, cli) -> None:
    path, members = base
    one = path.read_bytes()
    evil = build(evil_members(members))
    p = write(tmp_path, "__0_0.distcp", one + evil)
    r = cli("inspect", p)
    assert r.exit_code == 2 and "torch.distributed.checkpoint" in r.output and "more than one zip" in r.output
    report = scan(p)
    assert "zip-multi-archive" in kinds(report)
    with pytest.raises(CorruptFileError, match="more than one zip archive"):
        open_checkpoint(p)


def test_each_slice_of_a_multi_archive_file_is_one_clean_archive(base, tmp_path: Path) -> None:
    path, _members = base
    one = path.read_bytes()
    blob = one + one
    with open_source(write(tmp_path, "second.pth", blob[len(one) :])) as src:
        assert list(zr.differentials(zr.open_archive(src))) == []


def test_the_entry_count_is_bounded_before_the_directory_is_read(tmp_path: Path, cli) -> None:
    n = zr.MAX_ENTRIES + 1
    lay = Layout(zip64=True, count_delta=n - 1)  # claims n entries, lists one
    p = write(tmp_path, "many.pth", build([Member(b"a/version", b"3\n")], lay))
    r = cli("inspect", p)
    assert r.exit_code == 2 and f"{n:,} entries" in r.output and f"{zr.MAX_ENTRIES:,}" in r.output


def test_a_deflated_data_pkl_longer_than_its_claimed_size_is_read_as_torch_reads_it(base, tmp_path: Path) -> None:
    """miniz inflates into a buffer of the claimed size and stops there without an error: torch unpickles the
    first ``size`` bytes of the stream."""
    _path, members = base
    ms = [
        replace(m, data=EVIL2 + b"\x00" * 500, method=8, size=len(EVIL2)) if m.name == b"m/data.pkl" else m
        for m in members
    ]
    p = write(tmp_path, "long.pth", build(ms))
    assert torch_pkl(p) == EVIL2
    report = scan(p)
    assert "parser-differential" in kinds(report) and "posix.system" in dangerous(report)
