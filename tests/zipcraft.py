"""Zip archives built byte by byte, with every structure open to mutation (torch-free): the corpus of the
zip differential tests (tests/formats/test_zip_*.py).

:func:`build` writes local headers, data, the central directory, optional zip64 records and the end record
from a list of :class:`Member`, and each field can be made to lie: local names and sizes, CRCs, the
directory's size and offset, entry counts, comments holding end-record signatures, prefix and trailing data.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass
class Member:
    name: bytes
    data: bytes
    method: int = 0  # 0 stored, 8 deflated
    time: int = 0x6000  # nonzero: miniz's stored-size check reads method and time as one word
    flags: int = 0
    local_name: bytes | None = None  # None: the central name
    local_fields: tuple[int, int, int] | None = None  # (crc, comp, size) in the local header; None: the truth
    local_method: int | None = None
    crc: int | None = None  # the central CRC; None: the truth
    size: int | None = None  # the central plain size; None: the truth
    local_extra: bytes = b""
    pad_to: int = 0  # align the data to this many bytes (torch: 64) with a local extra field
    zip64: bool = False  # sizes and offset as 0xFFFFFFFF, values in a zip64 extra field (central)
    header_offset: int | None = None  # where the central record says the local header is; None: the truth
    external_attr: int = 0
    body: bytes | None = None  # the stored bytes as given (with ``size`` and ``crc``): a record too big to hold plain


@dataclass
class Layout:
    prefix: bytes = b""  # bytes before the first local header (offsets include them)
    comment: bytes = b""
    trailing: bytes = b""  # bytes after the end record's comment
    cd_size_delta: int = 0
    cd_offset_delta: int = 0
    count_delta: int = 0
    zip64: bool = False  # write zip64 end record + locator
    zip64_32bit_sentinels: bool = True  # with zip64: the 32-bit fields say 0xFFFF/0xFFFFFFFF
    comment_len_delta: int = 0
    gap_after_cd: bytes = b""  # bytes between the directory and the end record(s)
    fake_eocd_in_comment: bool = False  # the comment ends with a second end record (pointing at the same directory)
    extra: dict[str, int] = field(default_factory=dict)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def build(members: list[Member], layout: Layout | None = None) -> bytes:
    lay = layout or Layout()
    out = bytearray(lay.prefix)
    central = bytearray()
    for m in members:
        if m.body is not None:
            body, crc = m.body, m.crc or 0
        else:
            body = _deflate(m.data) if m.method == 8 else m.data
            crc = zlib.crc32(m.data)
        lh = len(out)
        lname = m.name if m.local_name is None else m.local_name
        extra = m.local_extra
        if m.pad_to:
            start = lh + 30 + len(lname) + len(extra) + 4
            pad = (-start) % m.pad_to
            extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
        plain = len(m.data) if m.body is None else (m.size or 0)
        lcrc, lcomp, lsize = m.local_fields if m.local_fields is not None else (crc, len(body), plain)
        lmethod = m.method if m.local_method is None else m.local_method
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, m.flags, lmethod, m.time, 0x21, lcrc, lcomp, lsize, len(lname), len(extra)
        )
        out += lname + extra + body
        ccrc = crc if m.crc is None else m.crc
        csize = plain if m.size is None else m.size
        ccomp = len(body)
        cho = lh if m.header_offset is None else m.header_offset
        cextra = b""
        if m.zip64:
            cextra = struct.pack("<HHQQQ", 1, 24, csize, ccomp, cho)
            csize = ccomp = cho = 0xFFFFFFFF
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, m.flags, m.method, m.time, 0x21, ccrc, ccomp, csize,
            len(m.name), len(cextra), 0, 0, 0, m.external_attr, cho,
        )  # fmt: skip
        central += m.name + cextra
    cd_ofs = len(out)
    out += central
    out += lay.gap_after_cd
    n = len(members) + lay.count_delta
    cd_size = len(central) + lay.cd_size_delta
    cd_off = cd_ofs + lay.cd_offset_delta
    if lay.zip64:
        z64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    if lay.zip64 and lay.zip64_32bit_sentinels:
        n16, size32, off32 = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        n16, size32, off32 = n & 0xFFFF, cd_size & 0xFFFFFFFF, cd_off & 0xFFFFFFFF
    comment = lay.comment
    if lay.fake_eocd_in_comment:
        comment = comment + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n16, n16, size32, off32, 0)
    out += struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, n16, n16, size32, off32, (len(comment) + lay.comment_len_delta) & 0xFFFF
    )
    out += comment + lay.trailing
    return bytes(out)


def members_of(path: Path, *, pad_to: int = 64) -> list[Member]:
    """The records of a real archive (``torch.save`` output) as Members, stored and 64-byte aligned as torch
    writes them."""
    with zipfile.ZipFile(path) as zf:
        return [Member(i.filename.encode(), zf.read(i), pad_to=pad_to) for i in zf.infolist()]


def renamed(members: list[Member], old: bytes, new: bytes) -> list[Member]:
    return [replace(m, name=new) if m.name == old else m for m in members]
