"""Resource bounds of the torch zip reader (issue 14 §4), measured on a fresh ``ckptool`` process: a zip with
a million empty entries fails fast with the documented limit, and a single 512 MB deflated storage is
inflated as a stream by scan and export. Behaviour bounds (peak RSS), not speed."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from proc import run_measured
from zipcraft import Layout, Member, build, members_of

from ckptool.formats import _zipread as zr

LIMIT_MB = 300


def million_entries(path: Path, n: int = 1_000_000) -> Path:
    """n empty stored entries named a/0000000.. (zip64 end records), built with numpy in about a second."""
    names = np.char.encode(np.char.add("a/", np.char.zfill(np.arange(n).astype(str), 7)), "ascii")
    nl = 9
    local = np.zeros((n, 30 + nl), dtype=np.uint8)
    local[:, 0:4] = np.frombuffer(struct.pack("<I", 0x04034B50), dtype=np.uint8)
    local[:, 26:28] = np.frombuffer(struct.pack("<H", nl), dtype=np.uint8)
    local[:, 30:] = np.frombuffer(names.tobytes(), dtype=np.uint8).reshape(n, nl)
    offsets = np.arange(n, dtype=np.uint64) * (30 + nl)
    central = np.zeros((n, 46 + nl), dtype=np.uint8)
    central[:, 0:4] = np.frombuffer(struct.pack("<I", 0x02014B50), dtype=np.uint8)
    central[:, 28:30] = np.frombuffer(struct.pack("<H", nl), dtype=np.uint8)
    central[:, 42:46] = offsets.astype("<u4").view(np.uint8).reshape(n, 4)
    central[:, 46:] = local[:, 30:]
    cd_ofs = n * (30 + nl)
    cd_size = n * (46 + nl)
    z64 = cd_ofs + cd_size
    tail = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_ofs)
    tail += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as fh:
        fh.write(local.tobytes())
        fh.write(central.tobytes())
        fh.write(tail)
    return path


@pytest.mark.parametrize("command", [["inspect"], ["scan"], ["scan", "--no-values"], ["export"]])
def test_a_million_entries_fail_fast_under_the_bound(tmp_path: Path, command: list[str]) -> None:
    path = million_entries(tmp_path / "million.pth")
    args = [command[0], str(path), *command[1:]]
    if command[0] == "export":
        args += ["--safetensors", str(tmp_path / "o.safetensors")]
    code, out, err, cpu, _wall, rss = run_measured(args, tmp_path)
    assert code == 2, (out, err)
    assert "1,000,000 entries" in err and f"{zr.MAX_ENTRIES:,}" in err, err
    assert rss < LIMIT_MB, f"{command}: peak RSS {rss:.0f} MB"
    assert cpu < 10, f"{command}: {cpu:.1f} s CPU"  # fails fast: it never reads the directory


def test_the_limit_is_what_miniz_holds_and_more_than_big_checkpoints_need(tmp_path: Path) -> None:
    """Below the limit an archive of 200k entries still opens (the scale of a 200k-tensor checkpoint)."""
    path = million_entries(tmp_path / "200k.pth", 200_000)
    from ckptool.sources import open_source

    with open_source(path) as src:
        ar = zr.open_archive(src)
        assert len(ar.entries) == 200_000 and ar.zip64
        assert ar.locate(b"A/0199999") is ar.entries[-1]  # case-insensitive, as miniz


def deflated_storage(tmp_path: Path, nbytes: int = 512 << 20) -> Path:
    """A torch archive whose one float32 storage is ``nbytes`` of zeros, deflated (about 0.5 MB on disk)."""
    small = tmp_path / "small.pth"
    torch.save({"w": torch.zeros(12345)}, small)
    members = members_of(small)
    numel = nbytes // 4
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    body = bytearray()
    crc = 0
    for _ in range(nbytes >> 20):
        body += comp.compress(chunk)
        crc = zlib.crc32(chunk, crc)
    body += comp.flush()
    out = []
    for m in members:
        if m.name.endswith(b"/data.pkl"):
            pk = m.data.replace(b"M90", b"J" + struct.pack("<i", numel))  # BININT2 12345 -> the new numel
            assert pk.count(b"J" + struct.pack("<i", numel)) == 2
            m = Member(m.name, pk, pad_to=64)
        elif m.name.endswith(b"/data/0"):
            m = Member(m.name, b"", method=8, body=bytes(body), size=nbytes, crc=crc)
        out.append(m)
    path = tmp_path / "deflated.pth"
    path.write_bytes(build(out, Layout()))
    return path


@pytest.mark.parametrize("command", ["scan", "export"])
def test_a_512mb_deflated_storage_streams(tmp_path: Path, command: str) -> None:
    path = deflated_storage(tmp_path)
    assert path.stat().st_size < 4 << 20
    if command == "scan":
        args = ["scan", str(path), "--json"]
    else:
        args = ["export", str(path), "--safetensors", str(tmp_path / "o.safetensors")]
    code, out, err, _cpu, _wall, rss = run_measured(args, tmp_path)
    assert code == 0, (out, err)
    assert rss < LIMIT_MB, f"{command}: peak RSS {rss:.0f} MB"
    if command == "export":
        st = tmp_path / "o.safetensors"
        assert st.stat().st_size > 512 << 20
        from safetensors.numpy import safe_open

        with safe_open(str(st), "np") as f:
            w = f.get_slice("w")
            assert w.get_shape() == [(512 << 20) // 4]
            n = (512 << 20) // 4
            assert not np.any(w[n - 1000 : n])
