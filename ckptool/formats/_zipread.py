"""Zip archives read exactly as torch reads them: miniz 3.0.2 behind caffe2's ``PyTorchFileReader`` (torch-free).

torch opens a ``torch.save`` archive with miniz (``mz_zip_reader_init`` with flags 0, then
``mz_zip_reader_locate_file`` with flags 0), not with Python's :mod:`zipfile`. The two disagree on hostile
archives, and a scanner that reads another archive than the loader protects nothing. This module follows
miniz's rules, step by step (``third_party/miniz-3.0.2/miniz.c``):

- **End record:** the *last* ``PK\\5\\6`` signature with at least 22 bytes after it, searched backwards in
  4096-byte blocks (overlapping by 3) until the search has gone 65,557 bytes back, or would start before byte 0
  (an unsigned wrap in miniz: a file of less than 8 KB is searched in its last 4096 bytes only); no check of
  the comment.
- **zip64:** a ``PK\\6\\7`` locator 20 bytes before the end record whose record offset is at most
  ``size - 56`` (else: not an archive), and a ``PK\\6\\6`` record there; then the zip64 counts, size and offset
  replace the 32-bit ones, whatever those say.
- **Central directory:** read from its stated offset (no adjustment for bytes before the archive), entry count
  equal on this disk, ``cdir_size >= 46 * entries``, inside the file; each header's sizes, disk, flags and
  lengths checked as miniz checks them (a stored entry is refused only when the 32-bit word at the method
  offset, method *and* time, is zero); zip64 extra fields only for 32-bit values of ``0xFFFFFFFF``.
- **Names:** compared case-insensitively (ASCII), by binary search over a heap sort of the lowercased names;
  the key is a C string (it ends at its first NUL); the archive name is the first entry's name up to its
  first ``/``.
- **Data:** at ``local header offset + 30 + local name length + local extra length`` (the *local* lengths),
  ``comp_size`` bytes, stored or deflated; torch builds miniz with ``MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS``,
  so torch never checks a CRC (ckptool does, as the bytes stream: :func:`member_chunks`).

All reads go through a :class:`~ckptool.sources.Source`: the tail once (end record, zip64 records and,
usually, the whole central directory), then the directory itself if it lies before the tail.
:func:`differentials` lists where a plain, strict reading (Python's :mod:`zipfile`, a streaming reader, the
zip specification) would see another archive.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..sources import CHUNK, Source

EOCD_SIG = 0x06054B50
CDH_SIG = 0x02014B50
LDH_SIG = 0x04034B50
Z64_LOC_SIG = 0x07064B50
Z64_EOCD_SIG = 0x06064B50
EOCD_SIZE = 22
CDH_SIZE = 46
LDH_SIZE = 30
Z64_LOC_SIZE = 20
Z64_EOCD_SIZE = 56
U32 = 0xFFFFFFFF
U16 = 0xFFFF
SEARCH_BLOCK = 4096
MAX_NAME = 511  # MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE - 1: what get_all_records copies of a name

MAX_ENTRIES = 500_000
"""ckptool's limit on the entries of one archive (checked from the end record, before the directory is read).
A torch archive has one entry per storage plus six; 500,000 holds a 499,990-storage checkpoint, and the parsed
directory of that many entries stays far below 300 MB."""

_CDH = struct.Struct("<IHHHHHHIIIHHHHHII")  # the 46-byte central directory header
_LDH = struct.Struct("<IHHHHHIIIHH")  # the 30-byte local header
_CDH_DTYPE = [
    ("sig", "<u4"), ("vm", "<u2"), ("vn", "<u2"), ("flags", "<u2"), ("method", "<u2"), ("time", "<u2"),
    ("date", "<u2"), ("crc", "<u4"), ("comp", "<u4"), ("size", "<u4"), ("nl", "<u2"), ("el", "<u2"),
    ("cl", "<u2"), ("disk", "<u2"), ("ia", "<u2"), ("ea", "<u4"), ("lho", "<u4"),
]  # fmt: skip


class ZipError(Exception):
    """miniz (and so torch) refuses the archive: ``reason`` is what miniz's error string says, in words."""

    def __init__(self, reason: str, *, kind: str = "corrupt"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # "corrupt", "not-zip", "too-many", "multi-archive", "unspecified"


class Entry:
    """One central directory entry, with miniz's view of its fields (zip64 values applied). Built cheaply from
    the raw 46-byte header tuple (100k entries parse in a fraction of a second); fields are properties."""

    __slots__ = ("_at", "_cd", "_h", "index", "local", "raw", "zip64_extra")

    def __init__(
        self, index: int, h: tuple[int, ...] | None, raw: bytes, zip64_extra: bool = False, cd: bytes = b"", at: int = 0
    ):
        self.index = index
        # the header fields (``h``): given (zip64 values applied), or None: read again from the directory bytes
        # ``cd`` at ``at`` when asked for. A 17-int tuple per entry is ~300 bytes: 30 MB at 100k entries.
        self._h = h
        self._cd = cd
        self._at = at
        self.raw = raw
        self.zip64_extra = zip64_extra
        self.local: tuple[int, ...] | bool | None = False  # the local header, once read (None: there is none)

    @property
    def h(self) -> tuple[int, ...]:
        """_CDH fields: sig, made-by, needed, flags, method, time, date, crc, comp, size, name len, extra len,
        comment len, disk, internal attr, external attr, local header offset (zip64 values applied)."""
        h = self._h
        return _CDH.unpack_from(self._cd, self._at) if h is None else h

    @property
    def name(self) -> str:
        return self.raw.decode("utf-8", "replace")

    @property
    def flags(self) -> int:
        return self.h[3]

    @property
    def method(self) -> int:
        return self.h[4]

    @property
    def time(self) -> int:
        return self.h[5]

    @property
    def crc(self) -> int:
        return self.h[7]

    @property
    def comp_size(self) -> int:
        return self.h[8]

    @property
    def size(self) -> int:
        return self.h[9]

    @property
    def header_offset(self) -> int:
        return self.h[16]

    @property
    def cname(self) -> bytes:
        """The name as C code sees it (``get_all_records``): up to the first NUL, at most 511 bytes."""
        nul = self.raw.find(b"\0")
        return (self.raw if nul < 0 else self.raw[:nul])[:MAX_NAME]

    @property
    def is_dir(self) -> bool:
        return self.raw.endswith(b"/")

    def __repr__(self) -> str:
        return f"Entry({self.index}, {self.raw!r}, method={self.method}, size={self.size}, at={self.header_offset})"


@dataclass
class Archive:
    """The archive as miniz reads it."""

    size: int
    eocd_offset: int
    comment_len: int
    cd_offset: int
    cd_size: int
    cd_used: int  # bytes of the directory the entries span
    zip64: bool
    zip64_offset: int | None  # the zip64 end record miniz used
    locator_offset: int | None  # a PK\6\7 signature 20 bytes before the end record (used or not)
    eocd32: tuple[int, int, int, int, int, int]  # the 32-bit record's disk, cd disk, entries here, total, size, offset
    entries: list[Entry]
    cd: bytes = field(repr=False)  # the directory as read
    positions: list[int] = field(repr=False)  # where each entry's header starts in ``cd``
    patched: list[int] = field(repr=False)  # entries whose sizes or offset come from a zip64 extra field
    tail_offset: int
    tail: bytes  # the last bytes of the file, read once
    read: Callable[[int, int], bytes] = field(repr=False)
    small: Callable[[int, int], bytes] = field(repr=False)
    whole: Callable[[], Any] = field(repr=False)  # the whole file as a buffer without a copy, or None
    prefetch: Any = field(default=None, repr=False)  # a source's ``prefetch(spans)`` (remote: many ranges at once)
    _sorted: list[int] | None = field(default=None, repr=False)
    _by_lower: dict[bytes, int] | None = field(default=None, repr=False)
    _dups: set[bytes] = field(default_factory=set, repr=False)
    _lt: Any = field(default=None, repr=False)
    _cols: Any = field(default=None, repr=False)

    def columns(self) -> Any:
        """Every entry's central header as one numpy record array (fields ``flags``, ``method``, ``time``, ``crc``,
        ``comp``, ``size``, ``name_len``, ``lho``; zip64 values applied), gathered in one vectorised step."""
        if self._cols is None:
            import numpy as np

            n = len(self.entries)
            rows = np.zeros((n, CDH_SIZE), dtype=np.uint8)
            if n:
                mem = np.frombuffer(self.cd, dtype=np.uint8)
                gather_rows(mem, np.asarray(self.positions, dtype=np.int64), rows)
            f = rows.view(_CDH_DTYPE).reshape(n)
            cols = {k: f[k].astype(np.int64) for k in ("flags", "method", "time", "crc", "comp", "size", "nl", "lho")}
            for i in self.patched:  # zip64 values
                e = self.entries[i]
                cols["comp"][i], cols["size"][i], cols["lho"][i] = e.h[8], e.h[9], e.h[16]
            self._cols = cols
        return self._cols

    def table(self) -> LocalTable:
        """Every entry's local header (read once, vectorised)."""
        if self._lt is None:
            self._lt = local_table(self)
        return self._lt

    # ---- names, as mz_zip_reader_locate_file(flags 0) finds them ----
    _has_nul: bool | None = field(default=None, repr=False)

    @property
    def has_nul(self) -> bool:
        """Does any name hold a NUL byte?"""
        if self._has_nul is None:
            self._has_nul = b"\0" in b"".join([e.raw for e in self.entries])
        return self._has_nul

    _cnames: list[bytes] | None = field(default=None, repr=False)

    @property
    def cnames(self) -> list[bytes]:
        """Every entry's name as C code sees it (:attr:`Entry.cname`), in directory order; built once."""
        if self._cnames is None:
            entries = self.entries
            self._cnames = [e.cname for e in entries] if self.has_nul else [e.raw[:MAX_NAME] for e in entries]
        return self._cnames

    def _index(self) -> None:
        lows = [e.raw.lower() for e in self.entries]
        n = len(lows)
        # the first entry of each name: built backwards, so the first one is the one that stays
        by = dict(zip(reversed(lows), range(n - 1, -1, -1), strict=True))
        dups: set[bytes] = set()
        if len(by) < n:  # some name is there twice
            seen: set[bytes] = set()
            for low in lows:
                if low in seen:
                    dups.add(low)
                seen.add(low)
        self._by_lower, self._dups = by, dups

    @property
    def duplicates(self) -> set[bytes]:
        """Lowercased names that more than one entry carries (case variants included)."""
        if self._by_lower is None:
            self._index()
        return self._dups

    def locate(self, name: bytes) -> Entry | None:
        """The entry miniz returns for ``name`` (a C string: it ends at its first NUL), or None."""
        nul = name.find(b"\0")
        if nul >= 0:
            name = name[:nul]
        if self._by_lower is None:
            self._index()
        assert self._by_lower is not None
        low = name.lower()
        if low not in self._dups:  # a unique key: any sorted order finds this one
            i = self._by_lower.get(low)
            return None if i is None else self.entries[i]
        return self._binary_search(low)

    def locate_all(self, names: list[bytes]) -> list[Entry | None]:
        """:meth:`locate` for each of ``names`` (a torch archive's storage records: one pass, not a call each)."""
        if self._by_lower is None:
            self._index()
        by, dups, entries = self._by_lower, self._dups, self.entries
        assert by is not None
        if dups or any(b"\0" in n for n in names):
            return [self.locate(n) for n in names]
        found = [by.get(n.lower()) for n in names]
        return [None if i is None else entries[i] for i in found]

    def _binary_search(self, low: bytes) -> Entry | None:
        if self._sorted is None:
            self._sorted = _heap_sort([e.raw.lower() for e in self.entries])
        keys = self.entries
        lo, hi = 0, len(self._sorted) - 1
        while lo <= hi:
            m = lo + ((hi - lo) >> 1)
            e = keys[self._sorted[m]]
            k = e.raw.lower()
            if k == low:
                return e
            if k < low:
                lo = m + 1
            else:
                hi = m - 1
        return None

    def candidates(self, name: bytes) -> list[Entry]:
        """Every entry a reader could take for ``name``: the same name, any case (miniz takes one of them)."""
        low = name.lower()
        if low not in self.duplicates:
            e = self.locate(name)
            return [] if e is None else [e]
        return [e for e in self.entries if e.raw.lower() == low]

    # ---- the archive name and torch's records ----
    @property
    def prefix(self) -> bytes | None:
        """torch's archive name: the first entry's name up to its first ``/`` (None: torch refuses)."""
        if not self.entries:
            return None
        raw = self.entries[0].raw
        pos = raw.find(b"/")
        return None if pos < 0 else raw[:pos]

    def record(self, name: str) -> Entry | None:
        """``PyTorchFileReader.get_record(name)``'s entry: ``<archive name>/<name>``, located as miniz does."""
        prefix = self.prefix
        if prefix is None:
            return None
        return self.locate(prefix + b"/" + name.encode())

    # ---- member data ----
    def peek(self, off: int, n: int) -> bytes:
        """A few bytes of the file (a local header, a name): from the tail, a memory map, or one read."""
        if off >= self.tail_offset and off + n <= self.size:
            return self.tail[off - self.tail_offset : off - self.tail_offset + n]
        return self.small(off, n)

    def local_header(self, e: Entry) -> tuple[int, ...] | None:
        """The entry's local header fields, or None when there is none (past the end, or a bad signature)."""
        if e.local is not False:
            return e.local  # type: ignore[return-value]
        h = e.header_offset
        fields: tuple[int, ...] | None = None
        if h >= 0 and h + LDH_SIZE <= self.size:
            fields = _LDH.unpack(self.peek(h, LDH_SIZE))
            if fields[0] != LDH_SIG:
                fields = None
        e.local = fields
        return fields

    def data_offset(self, e: Entry) -> int:
        """Where the entry's data starts, as miniz finds it (raises ZipError where miniz fails to read it)."""
        lt = self.table()
        if not lt.ok[e.index]:
            raise ZipError(f"member {e.name!r} has no local header at offset {e.header_offset}")
        off = int(lt.data[e.index])
        if off + e.comp_size > self.size:
            raise ZipError(f"member {e.name!r} claims {e.comp_size} bytes at offset {off} but the file has {self.size}")
        return off

    def check_readable(self, e: Entry) -> None:
        """Raise ZipError where ``mz_zip_reader_extract_to_mem`` refuses the entry before reading data."""
        if e.flags & 0x1 or e.flags & 0x40 or e.flags & 0x20:
            raise ZipError(f"member {e.name!r} is encrypted or a patch (flags {e.flags:#x})")
        if e.method not in (0, 8):
            raise ZipError(f"member {e.name!r} uses compression method {e.method}; torch reads stored and deflated")


def _heap_sort(keys: list[bytes]) -> list[int]:
    """miniz's ``mz_zip_reader_sort_central_dir_offsets_by_filename``, step for step (heap sort is not stable:
    among equal names, which one a binary search meets depends on this exact order)."""
    size = len(keys)
    idx = list(range(size))
    if size <= 1:
        return idx

    def less(a: int, b: int) -> bool:
        return keys[a] < keys[b]

    start = (size - 2) >> 1
    while True:
        root = start
        while True:
            child = (root << 1) + 1
            if child >= size:
                break
            if child + 1 < size and less(idx[child], idx[child + 1]):
                child += 1
            if not less(idx[root], idx[child]):
                break
            idx[root], idx[child] = idx[child], idx[root]
            root = child
        if not start:
            break
        start -= 1
    end = size - 1
    while end > 0:
        idx[end], idx[0] = idx[0], idx[end]
        root = 0
        while True:
            child = (root << 1) + 1
            if child >= end:
                break
            if child + 1 < end and less(idx[child], idx[child + 1]):
                child += 1
            if not less(idx[root], idx[child]):
                break
            idx[root], idx[child] = idx[child], idx[root]
            root = child
        end -= 1
    return idx


def _tail_span(size: int) -> int:
    """How far back from the end miniz's end-record search can reach: it stops after a block that starts
    65,557 (0xFFFF + 22) or more bytes before the end."""
    cur = max(size - SEARCH_BLOCK, 0)
    while cur and size - cur < U16 + EOCD_SIZE and cur >= SEARCH_BLOCK - 3:
        cur -= SEARCH_BLOCK - 3
    return size - cur


def find_eocd(tail: bytes, tail_offset: int, size: int) -> int | None:
    """``mz_zip_reader_locate_header_sig``: the absolute offset of the end record miniz uses."""
    cur = max(size - SEARCH_BLOCK, 0)
    while True:
        n = min(SEARCH_BLOCK, size - cur)
        block = tail[cur - tail_offset : cur - tail_offset + n]
        i = block.rfind(b"PK\x05\x06")
        while i >= 0:
            if size - (cur + i) >= EOCD_SIZE:
                return cur + i
            i = block.rfind(b"PK\x05\x06", 0, i + 3)
        if not cur or size - cur >= U16 + EOCD_SIZE:
            return None
        # ``MZ_MAX(cur_file_ofs - (sizeof(buf_u32) - 3), 0)`` subtracts a size_t: below zero it wraps, the read
        # at that offset fails, and miniz gives up (torch 2.13 behaves so: measured)
        cur -= SEARCH_BLOCK - 3
        if cur < 0:
            return None


def open_archive(src: Source, *, max_entries: int = MAX_ENTRIES) -> Archive:
    """Read the archive's directory as miniz does; raise :class:`ZipError` where miniz refuses it."""
    size = src.size
    read = src.read
    if size < EOCD_SIZE:
        raise ZipError("file is smaller than an end-of-central-directory record", kind="not-zip")
    span = min(size, max(_tail_span(size), 128 << 10))  # one read: the search window, and usually the directory
    tail_offset = size - span
    tail = read(tail_offset, span)

    def get(off: int, n: int) -> bytes:
        if off >= tail_offset and off + n <= size:
            return tail[off - tail_offset : off - tail_offset + n]
        return read(off, n)

    eocd = find_eocd(tail, tail_offset, size)
    if eocd is None:
        raise ZipError("no end-of-central-directory record in the last 64 KB", kind="not-zip")
    (_sig, disk, cd_disk, here, total, cd_size, cd_ofs, comment_len) = struct.unpack("<IHHHHIIH", get(eocd, EOCD_SIZE))
    eocd32 = (disk, cd_disk, here, total, cd_size, cd_ofs)
    zip64 = False
    z64_ofs: int | None = None
    locator: int | None = None
    loc = b""
    z64 = b""
    if eocd >= Z64_LOC_SIZE + Z64_EOCD_SIZE:
        loc = get(eocd - Z64_LOC_SIZE, Z64_LOC_SIZE)
        if struct.unpack_from("<I", loc)[0] == Z64_LOC_SIG:
            locator = eocd - Z64_LOC_SIZE
            ofs = struct.unpack_from("<Q", loc, 8)[0]
            if ofs > size - Z64_EOCD_SIZE:
                raise ZipError("the zip64 locator points past the end of the file", kind="not-zip")
            z64 = get(ofs, Z64_EOCD_SIZE)
            if struct.unpack_from("<I", z64)[0] == Z64_EOCD_SIG:
                zip64, z64_ofs = True, ofs
    n_disk, cdir_disk = disk, cd_disk
    if zip64:
        (_s, rec_size, _vm, _vn, n_disk, cdir_disk, here, total, cd_size, cd_ofs) = struct.unpack("<IQHHIIQQQQ", z64)
        disks = struct.unpack_from("<I", loc, 16)[0]
        if rec_size < Z64_EOCD_SIZE - 12:
            raise ZipError("the zip64 end record is too short")
        if disks != 1:
            raise ZipError("multi-disk archives are not supported (zip64 locator)")
        if total > U32 or here > U32:
            raise ZipError("too many entries (zip64)", kind="too-many")
        if cd_size > U32:
            raise ZipError("the central directory is larger than 4 GB")
    if total != here:
        raise ZipError("multi-disk archives are not supported (entry counts differ)")
    if (n_disk | cdir_disk) != 0 and (n_disk != 1 or cdir_disk != 1):
        raise ZipError("multi-disk archives are not supported")
    if total > max_entries:
        raise ZipError(
            f"the archive lists {total:,} entries; ckptool reads at most {max_entries:,} (a torch archive has one "
            "per storage plus six)",
            kind="too-many",
        )
    if cd_size < total * CDH_SIZE:
        raise ZipError(f"the central directory ({cd_size} bytes) cannot hold {total} entries")
    if cd_ofs + cd_size > size:
        raise ZipError(f"the central directory [{cd_ofs}, {cd_ofs + cd_size}) runs past the end of the file ({size})")
    cd = get(cd_ofs, cd_size) if total else b""
    entries, positions, patched, used = _parse_cd(cd, cd_ofs, total, n_disk, size, get)
    return Archive(
        size=size, eocd_offset=eocd, comment_len=comment_len, cd_offset=cd_ofs, cd_size=cd_size, cd_used=used, cd=cd, positions=positions, patched=patched,
        zip64=zip64, zip64_offset=z64_ofs, locator_offset=locator, eocd32=eocd32, entries=entries,
        tail_offset=tail_offset, tail=tail, read=read, small=_small_reader(src), whole=_whole_view(src), prefetch=getattr(src, "prefetch", None),
    )  # fmt: skip


def _whole_view(src: Source) -> Callable[[], Any]:
    def whole() -> Any:
        try:
            return src.view(0, src.size)
        except Exception:
            return None

    return whole


def _small_reader(src: Source) -> Callable[[int, int], bytes]:
    """Small reads at scattered offsets (one local header per record): through the source's memory map when it
    has one (no system call each), else one read each."""
    view = getattr(src, "view", None)

    def small(off: int, n: int) -> bytes:
        if view is not None:
            try:
                v = view(off, n)
            except Exception:
                v = None
            if v is not None:
                return bytes(v)
        return src.read(off, n)

    return small


def _parse_cd(
    cd: bytes, cd_ofs: int, total: int, n_disk: int, size: int, get: Callable[[int, int], bytes]
) -> tuple[list[Entry], list[int], list[int], int]:
    """The per-entry loop of ``mz_zip_reader_read_central_dir``: one pass, miniz's checks in miniz's order
    (constants bound to locals: this loop runs once per entry)."""
    entries: list[Entry] = []
    positions: list[int] = []
    patched: list[int] = []
    append = entries.append
    mark = positions.append
    unpack = _CDH.unpack_from
    make = Entry
    hs, sig, u32, u16, lhs = CDH_SIZE, CDH_SIG, U32, U16, LDH_SIZE
    p = 0
    n = len(cd)
    for i in range(total):
        if n - p < hs:
            raise ZipError(f"central directory entry {i} is cut off")
        h = unpack(cd, p)
        if h[0] != sig:
            raise ZipError(f"central directory entry {i} has a bad signature")
        _s, _vm, _vn, flags, method, time, _d, _c, comp, usize, fn_len, ex_len, cm_len, disk, _ia, _ea, lho = h
        z64x = False
        kept: tuple[int, ...] | None = None  # (the fields are read again from cd, unless zip64 values changed them)
        if ex_len and (comp == u32 or usize == u32 or lho == u32):
            comp, usize, lho, z64x = _zip64_extra(cd, p, i, fn_len, ex_len, comp, usize, lho, cd_ofs, get)
            kept = (*h[:8], comp, usize, *h[10:16], lho)
            patched.append(i)
        # MZ_READ_LE32 at the method offset reads method *and* time: only both zero make it "stored"
        if ((usize != comp and not method and not time) or (usize and not comp)) and comp != u32 and usize != u32:
            raise ZipError(f"central directory entry {i} has inconsistent sizes ({comp} stored, {usize} plain)")
        if disk == u16 or (disk != n_disk and disk != 1):
            raise ZipError(f"central directory entry {i} is on another disk")
        if lho + lhs + comp > size and comp != u32:
            raise ZipError(f"central directory entry {i} points past the end of the file")
        if flags & 0x2000:
            raise ZipError(f"central directory entry {i} has a masked local header (encryption)")
        rec = hs + fn_len + ex_len + cm_len
        if rec > n - p:
            raise ZipError(f"central directory entry {i} runs past the directory")
        append(make(i, kept, cd[p + hs : p + hs + fn_len], z64x, cd, p))
        mark(p)
        p += rec
    return entries, positions, patched, p


def _zip64_extra(
    cd: bytes, p: int, i: int, fn_len: int, ex_len: int, comp: int, usize: int, lho: int, cd_ofs: int,
    get: Callable[[int, int], bytes],
) -> tuple[int, int, int, bool]:  # fmt: skip
    """miniz's walk of an entry's extra field for the zip64 one (sizes and offset that are 0xFFFFFFFF)."""
    start = p + CDH_SIZE + fn_len
    if CDH_SIZE + fn_len + ex_len > len(cd) - p:
        # miniz re-reads the extra field from the file, at the *first* entry's position (a miniz quirk)
        extra = get(cd_ofs + CDH_SIZE + fn_len, ex_len)
    else:
        extra = cd[start : start + ex_len]
    rem, q = ex_len, 0
    found = False
    while rem:
        if rem < 4:
            raise ZipError(f"central directory entry {i} has a damaged extra field")
        fid, fsize = struct.unpack_from("<HH", extra, q)
        if fsize + 4 > rem:
            raise ZipError(f"central directory entry {i} has a damaged extra field")
        if fid == 1:
            found = True
            break
        q += 4 + fsize
        rem -= 4 + fsize
    if rem >= 4:
        rem -= 4
        q += 4
        if usize == U32 and rem >= 8:
            usize = struct.unpack_from("<Q", extra, q)[0]
            rem -= 8
            q += 8
        if comp == U32 and rem >= 8:
            comp = struct.unpack_from("<Q", extra, q)[0]
            rem -= 8
            q += 8
        if lho == U32 and rem >= 8:
            lho = struct.unpack_from("<Q", extra, q)[0]
    return comp, usize, lho, found


# --------------------------------------------------------------------------------------------------------
# where a plain reading sees another archive
# --------------------------------------------------------------------------------------------------------
def multi_archive(ar: Archive | None, src: Source) -> str | None:
    """A file that holds several concatenated archives (a torch.distributed.checkpoint ``.distcp`` shard is
    many ``torch.save`` archives at offsets): a message, or None."""
    size = src.size
    head = src.read(0, 4) if size >= 4 else b""
    if head != b"PK\x03\x04":
        return None
    span = min(size, _tail_span(size))
    if ar is not None:
        anchor = ar.zip64_offset if ar.zip64 and ar.zip64_offset is not None else ar.eocd_offset
        start = anchor - ar.cd_size - ar.cd_offset
        if start <= 0:
            return None
        return (
            f"holds more than one zip archive: the last one starts at byte {start}, after other data that begins "
            "with a zip local header"
        )
    # miniz failed: see whether the end record describes an archive that starts later in the file
    tail = src.read(size - span, span)
    eocd = find_eocd(tail, size - span, size)
    if eocd is None:
        return None
    e = eocd - (size - span)
    _s, _d, _cd, _here, _total, cd_size, cd_ofs, _cl = struct.unpack("<IHHHHIIH", tail[e : e + EOCD_SIZE])
    anchor = eocd  # the central directory ends here, or at the zip64 end record (torch.save writes one)
    z64 = eocd - Z64_LOC_SIZE - Z64_EOCD_SIZE
    if z64 >= 0 and src.read(eocd - Z64_LOC_SIZE, 4) == b"PK\x06\x07" and src.read(z64, 4) == b"PK\x06\x06":
        anchor = z64
        cd_size, cd_ofs = struct.unpack("<QQ", src.read(z64 + 40, 16))
    start = anchor - cd_size - cd_ofs
    if start > 0 and anchor - cd_size >= 0 and src.read(anchor - cd_size, 4) == b"PK\x01\x02":
        return f"holds more than one zip archive: the last one starts at byte {start} and its offsets count from there"
    return None


@dataclass
class LocalTable:
    """Every entry's local header at once (numpy arrays indexed like ``Archive.entries``)."""

    ok: Any  # a local header signature is there
    flags: Any
    method: Any
    crc: Any
    comp: Any
    size: Any
    name_len: Any
    extra_len: Any
    name_ok: Any  # the local name is the central name, byte for byte
    data: Any  # where the data starts (header + 30 + local lengths)


GATHER_ROWS = 8192  # rows per vectorised gather: the int64 index arrays stay a few MB at 100k entries


def gather_rows(mem: Any, starts: Any, out: Any) -> Any:
    """``out[i] = mem[starts[i] : starts[i] + width]`` for every row, a slice of rows at a time (one gather of
    100k rows would build a 100k x width int64 index array: 37 MB for the central directory's 46 bytes)."""
    import numpy as np

    width = out.shape[1]
    cols = np.arange(width)
    for a in range(0, len(starts), GATHER_ROWS):
        b = min(a + GATHER_ROWS, len(starts))
        out[a:b] = mem[starts[a:b, None] + cols]
    return out


def local_table(ar: Archive) -> LocalTable:
    """Read all local headers in one vectorised gather from the file's memory map (a few ms for 100k entries);
    sources without a map read them one by one."""
    import numpy as np

    n = len(ar.entries)
    cols = ar.columns()
    offs = cols["lho"]
    ok = (offs >= 0) & (offs + LDH_SIZE <= ar.size)
    buf = ar.whole() if n > 64 or ar.prefetch is None else None
    rows = np.zeros((n, LDH_SIZE), dtype=np.uint8)
    if buf is not None:
        mem = np.frombuffer(buf, dtype=np.uint8)
        safe = np.where(ok, offs, 0)
        rows[ok] = gather_rows(mem, safe[ok], np.zeros((int(ok.sum()), LDH_SIZE), dtype=np.uint8))
    else:
        mem = None
        if ar.prefetch is not None:  # a remote source: every local header (and name) in one round trip
            ar.prefetch([(int(offs[i]), LDH_SIZE + int(cols["nl"][i])) for i in range(n) if ok[i]])
        for i, e in enumerate(ar.entries):
            if ok[i]:
                rows[i] = np.frombuffer(ar.peek(e.h[16], LDH_SIZE), dtype=np.uint8)
    dt = np.dtype(
        [("sig", "<u4"), ("ver", "<u2"), ("flags", "<u2"), ("method", "<u2"), ("t", "<u2"), ("d", "<u2"),
         ("crc", "<u4"), ("comp", "<u4"), ("size", "<u4"), ("nl", "<u2"), ("el", "<u2")]
    )  # fmt: skip
    f = rows.view(dt).reshape(n)
    ok &= f["sig"] == LDH_SIG
    nl = f["nl"].astype(np.int64)
    el = f["el"].astype(np.int64)
    clen = cols["nl"]
    name_ok = ok & (nl == clen) & (offs + LDH_SIZE + nl <= ar.size)
    idx = np.flatnonzero(name_ok & (clen > 0))
    if len(idx):
        entries = ar.entries
        central = np.frombuffer(b"".join([entries[i].raw for i in idx.tolist()]), dtype=np.uint8)
        lens = clen[idx]
        starts = np.cumsum(lens) - lens
        if mem is not None:
            local = np.empty_like(central)
            for a in range(0, len(idx), GATHER_ROWS):  # in slices: the index arrays stay small
                b = min(a + GATHER_ROWS, len(idx))
                lo, hi = int(starts[a]), int(starts[b - 1] + lens[b - 1])
                pos = np.repeat(offs[idx[a:b]] + LDH_SIZE - starts[a:b], lens[a:b]) + np.arange(lo, hi)
                local[lo:hi] = mem[pos]
        else:
            local = np.frombuffer(b"".join(ar.peek(int(offs[i]) + LDH_SIZE, int(clen[i])) for i in idx), dtype=np.uint8)
        bad = np.add.reduceat((local != central).astype(np.int64), starts) > 0
        name_ok[idx[bad]] = False
    return LocalTable(
        ok=ok, flags=f["flags"], method=f["method"], crc=f["crc"], comp=f["comp"], size=f["size"],
        name_len=nl, extra_len=el, name_ok=name_ok, data=offs + LDH_SIZE + nl + el,
    )  # fmt: skip


def differentials(ar: Archive) -> Iterator[tuple[str, bytes | None]]:
    """Where a plain, strict reader (Python's zipfile, a streaming reader, the zip specification) reads another
    archive than miniz: (message, member name or None). Each is a ``[parser-differential]``."""
    import numpy as np

    size = ar.size
    end = ar.eocd_offset + EOCD_SIZE + ar.comment_len
    if end != size:
        if end < size:
            yield (
                f"{size - end} bytes follow the end-of-central-directory record and its comment: readers disagree "
                "on where the archive ends",
                None,
            )
        else:
            yield (
                f"the end-of-central-directory record at {ar.eocd_offset} claims a {ar.comment_len}-byte comment but "
                f"the file ends {size - ar.eocd_offset - EOCD_SIZE} bytes after it",
                None,
            )
    # another end record that a forward or exact-fit search would take
    lo = ar.tail_offset
    t = ar.tail
    i = t.find(b"PK\x05\x06")
    while i >= 0:
        off = lo + i
        if off != ar.eocd_offset and off + EOCD_SIZE <= size:
            cl = struct.unpack_from("<H", t, i + 20)[0]
            if off + EOCD_SIZE + cl == size:
                yield (
                    f"a second end-of-central-directory record at byte {off} (miniz uses the one at "
                    f"{ar.eocd_offset}): another reader reads another directory",
                    None,
                )
                break
        i = t.find(b"PK\x05\x06", i + 1)
    # zip64
    if ar.locator_offset is not None and not ar.zip64:
        yield ("a zip64 locator points to no zip64 end record: miniz ignores it, other readers do not", None)
    if ar.zip64:
        _disk, _cd_disk, here, total, cd_size, cd_ofs = ar.eocd32
        pairs = [
            ("entry count", total, len(ar.entries), U16),
            ("entry count on this disk", here, len(ar.entries), U16),
            ("directory size", cd_size, ar.cd_size, U32),
            ("directory offset", cd_ofs, ar.cd_offset, U32),
        ]
        for what, v32, v64, sentinel in pairs:
            if v32 != sentinel and v32 != v64:
                yield (
                    f"the 32-bit end record says {what} {v32}, the zip64 record {v64}: miniz uses the zip64 value, "
                    "readers that trust the 32-bit one read another directory",
                    None,
                )
        assert ar.zip64_offset is not None
        if ar.locator_offset is not None:
            rec = struct.unpack_from("<Q", ar.peek(ar.zip64_offset + 4, 8))[0]
            if ar.zip64_offset + 12 + rec != ar.locator_offset:
                yield ("the zip64 end record does not end at its locator", None)
    anchor = ar.zip64_offset if ar.zip64 and ar.zip64_offset is not None else ar.eocd_offset
    if ar.cd_offset + ar.cd_size != anchor:
        yield (
            f"the central directory [{ar.cd_offset}, {ar.cd_offset + ar.cd_size}) does not end at the end record "
            f"({anchor}): Python's zipfile reads the directory from another offset",
            None,
        )
    elif ar.cd_used != ar.cd_size:
        yield (f"{ar.cd_size - ar.cd_used} bytes of the central directory belong to no entry", None)
    # names
    for low in sorted(ar.duplicates):
        names = sorted({e.raw for e in ar.entries if e.raw.lower() == low})
        if len(names) > 1:
            msg = f"{len(names)} entries differ only in case ({_show(names)}): torch (miniz) takes one, Python another"
        else:
            msg = "several entries share this name: which one a reader takes differs"
        yield (msg, names[0])
    if ar.has_nul:
        for e in ar.entries:
            if b"\0" in e.raw:
                yield ("the name holds a NUL byte: C readers (torch) end it there, Python does not", e.raw)
    cols = ar.columns()
    for j in np.flatnonzero((cols["nl"] > MAX_NAME) | ((cols["method"] == 0) & (cols["size"] != cols["comp"]))):
        e = ar.entries[int(j)]
        if len(e.raw) > MAX_NAME:
            yield (f"the name is {len(e.raw)} bytes long: torch lists only its first {MAX_NAME}", e.raw)
        else:
            yield (
                f"a stored member whose sizes differ ({e.comp_size} stored, {e.size} plain): miniz reads {e.size}",
                e.raw,
            )
    if not ar.entries:
        return
    lt = ar.table()
    cols = ar.columns()
    comp, usize, crc, method = cols["comp"], cols["size"], cols["crc"], cols["method"]
    z64 = np.zeros(len(ar.entries), dtype=bool)
    for e in ar.entries:
        if e.zip64_extra:
            z64[e.index] = True
    bad_method = lt.ok & (lt.method != method)
    bad_sizes = (
        lt.ok & ~bad_method & ((lt.flags & 0x8) == 0) & ~z64
        & ((lt.comp != comp) | (lt.size != usize) | (lt.crc != crc))
    )  # fmt: skip
    bad_name = lt.ok & ~lt.name_ok
    for j in np.flatnonzero(bad_method | bad_sizes | bad_name):
        i = int(j)
        e = ar.entries[i]
        if bad_method[i]:
            yield (
                f"the local header says compression method {lt.method[i]}, the directory {e.method}: streaming "
                "readers decode it otherwise",
                e.raw,
            )
        if bad_sizes[i]:
            yield (
                f"the local header says {lt.comp[i]} bytes ({lt.size[i]} plain, CRC {lt.crc[i]:08x}), the directory "
                f"{e.comp_size} ({e.size}, {e.crc:08x}): streaming readers read other bytes",
                e.raw,
            )
        if bad_name[i]:
            h = e.header_offset + LDH_SIZE
            k = int(lt.name_len[i])
            local_name = ar.peek(h, min(k, size - h)) if k and h < size else b""
            yield (
                f"the local header names it {local_name[:80]!r}: readers that walk local headers see another file",
                e.raw,
            )


def _show(names: list[bytes]) -> str:
    return ", ".join(repr(n.decode("utf-8", "replace")) for n in names[:4])


# --------------------------------------------------------------------------------------------------------
# member bytes: stored or inflated, streamed, with the CRC checked as the bytes go by
# --------------------------------------------------------------------------------------------------------
class CRCError(Exception):
    def __init__(self, got: int, want: int):
        super().__init__(f"CRC-32 is {got:08x} but the directory says {want:08x}")
        self.got, self.want = got, want


def member_chunks(
    src: Source,
    offset: int,
    *,
    name: str,
    method: int,
    comp_size: int,
    size: int,
    crc: int | None,
    buf: bytearray,
    limit: int | None = None,
) -> Iterator[memoryview]:
    """A member's plain bytes, streamed through ``buf`` (views valid until the next step; inflation is streamed,
    never whole). With ``crc``, the CRC-32 is checked once the last byte went by (:class:`CRCError`); a deflate
    stream that ends early or runs long is a :class:`ZipError`. ``limit``: stop after that many plain bytes
    (no CRC check then)."""
    want = size if limit is None else min(limit, size)
    mv = memoryview(buf)
    run = 0
    check = crc is not None and want == size
    if method == 0:
        pos = 0
        while pos < want:
            k = min(len(buf), want - pos)
            src.read_into(offset + pos, mv[:k])
            if check:
                run = zlib.crc32(mv[:k], run)
            yield mv[:k]
            pos += k
    else:
        d = zlib.decompressobj(-15)
        inpos, instop = offset, offset + comp_size
        inbuf = bytearray(min(CHUNK, max(comp_size, 1)))
        inmv = memoryview(inbuf)
        pending = b""
        out = 0
        fill = 0  # bytes waiting in buf: chunks are whole buffers (callers split them into elements)
        try:
            while out < want:
                if not pending:
                    if d.eof or inpos >= instop:
                        break
                    k = min(len(inbuf), instop - inpos)
                    src.read_into(inpos, inmv[:k])
                    inpos += k
                    pending = bytes(inmv[:k])
                piece = d.decompress(pending, min(len(buf) - fill, want - out))
                pending = d.unconsumed_tail
                if not piece:
                    if d.eof:
                        break
                    continue
                n = len(piece)
                mv[fill : fill + n] = piece
                if check:
                    run = zlib.crc32(piece, run)
                fill += n
                out += n
                if fill == len(buf) or out == want:
                    yield mv[:fill]
                    fill = 0
            if fill:
                yield mv[:fill]
            if out < want:
                raise ZipError(f"{name!r} inflates to {out} bytes, the directory says {size}")
            if limit is None and not d.eof and (pending or inpos < instop):
                if not pending:
                    k = min(len(inbuf), instop - inpos)
                    src.read_into(inpos, inmv[:k])
                    pending = bytes(inmv[:k])
                if d.decompress(pending, 1):
                    raise ZipError(f"{name!r} inflates to more than the {size} bytes the directory says")
        except zlib.error as err:
            raise ZipError(f"{name!r} does not inflate ({err})") from None
    if check and run != crc:
        raise CRCError(run, crc or 0)


def entry_chunks(
    src: Source, offset: int, e: Entry, buf: bytearray, *, check_crc: bool = True, limit: int | None = None
) -> Iterator[memoryview]:
    return member_chunks(
        src, offset, name=e.name, method=e.method, comp_size=e.comp_size, size=e.size,
        crc=e.crc if check_crc else None, buf=buf, limit=limit,
    )  # fmt: skip


def read_member(src: Source, offset: int, e: Entry, *, max_bytes: int, check_crc: bool = True) -> bytes:
    """A whole member's plain bytes (at most ``max_bytes``)."""
    if e.size > max_bytes:
        raise ZipError(f"{e.name!r} claims {e.size} bytes (limit {max_bytes})")
    out = bytearray()
    for chunk in entry_chunks(src, offset, e, bytearray(min(CHUNK, max(e.size, 1))), check_crc=check_crc):
        out += chunk
    return bytes(out)


def torch_view(ar: Archive) -> dict[str, Any]:
    """What ``torch._C.PyTorchFileReader`` would list: the archive name and its records (``get_all_records``:
    names as C strings, every one under the archive name, ``.debug_pkl`` records left out)."""
    prefix = ar.prefix
    if prefix is None:
        raise ZipError("the first entry is not in a folder")
    names = []
    for e in ar.entries:
        c = e.cname
        if not c.startswith(prefix.split(b"\0")[0] + b"/"):
            raise ZipError(f"entry {c!r} is not under the archive name {prefix!r}")
        rest = c[len(prefix) + 1 :]
        if not rest.endswith(b".debug_pkl"):
            names.append(rest)
    return {"prefix": prefix, "records": names}


# ---- PyTorchFileReader's own steps (what torch accepts, reads and returns): the reader's open checks, and the differential tests ----
def torch_open_checks(ar: Archive, src: Source) -> None:
    """``PyTorchStreamReader::init`` after miniz: an archive name, the serialization id and the version
    record read (``.data/version``, else ``version``), the version parsed like ``std::stoull`` and in [1, 10]."""
    if not ar.entries:
        raise ZipError("archive does not contain any files")
    if ar.prefix is None:
        raise ZipError("file in archive is not in a subdirectory")
    sid = ar.record(".data/serialization_id")
    if sid is not None:
        torch_record_bytes(ar, src, sid)
    ver = ar.record(".data/version") or ar.record("version")
    if ver is None:
        raise ZipError("no version record")
    if ver.size and _unfilled(ver):
        # miniz "extracts" a directory entry (or one with no stored bytes) without writing the buffer torch
        # allocated: torch parses whatever that heap memory held, and opens the file or not from one run to
        # the next. ckptool refuses it; the kind lets a comparison with torch know torch's answer is undefined.
        raise ZipError(
            f"the version record {ver.name!r} is marked as a directory or has no stored bytes: torch would parse "
            "memory it never filled",
            kind="unspecified",
        )
    text = torch_record_bytes(ar, src, ver)
    i = 0
    while i < len(text) and text[i] in b" \t\n\v\f\r":
        i += 1
    neg = i < len(text) and text[i : i + 1] == b"-"
    if i < len(text) and text[i : i + 1] in (b"+", b"-"):
        i += 1
    j = i
    while j < len(text) and 48 <= text[j] <= 57:
        j += 1
    if j == i:
        raise ZipError(f"cannot parse the version {text!r}")
    value = -int(text[i:j]) if neg else int(text[i:j])
    if not 1 <= value <= 10:
        raise ZipError(f"unsupported version {value}")


def _torch_stat(e: Entry) -> None:
    """``mz_zip_reader_file_stat``: it calls ``mz_zip_reader_is_file_supported``, which sets miniz's error for an
    unsupported method, encryption or a patch, and torch's ``valid()`` then throws."""
    if e.method not in (0, 8) or e.flags & 0x61:
        raise ZipError("unsupported record (method, encryption or patch)")


def torch_record_offset(ar: Archive, e: Entry) -> int:
    """``getRecordOffset``: the local header's lengths, read without checking its signature."""
    _torch_stat(e)
    h = e.header_offset
    if h + LDH_SIZE > ar.size:
        raise ZipError("cannot read the local header")
    nl, el = struct.unpack("<HH", ar.peek(h + 26, 4))
    return h + LDH_SIZE + nl + el


class Unspecified(Exception):
    """torch returns a buffer it never filled (a broken deflate stream: miniz stops without setting an error)."""


def _unfilled(e: Entry) -> bool:
    """miniz returns success for this entry without writing a byte: a directory (a name ending in "/" or the
    MS-DOS directory attribute) or no stored bytes."""
    return e.is_dir or bool(e.h[15] & 0x10) or not e.comp_size


def torch_record_bytes(ar: Archive, src: Source, e: Entry) -> bytes:
    """``getRecord`` (``mz_zip_reader_extract_to_mem``, CRC checks compiled out): the bytes torch returns, or
    ZipError where it fails. A directory or an empty record returns ``b""`` (torch: an uninitialised buffer).
    miniz stops inflating when the claimed size is reached and sets no error for a stream that runs longer
    (torch returns the first ``size`` bytes) or that breaks (:class:`Unspecified`); a stream that ends short
    is an error ("unexpected decompressed size")."""
    _torch_stat(e)
    size, comp = e.size, e.comp_size
    if _unfilled(e):
        return b""
    lh = ar.local_header(e)
    if lh is None:
        raise ZipError("bad local header")
    off = e.header_offset + LDH_SIZE + lh[9] + lh[10]
    if off + comp > ar.size:
        raise ZipError("record past the end")
    if e.method == 0:
        if off + size > ar.size:
            raise ZipError("short read")
        return src.read(off, size)
    out, status = inflate_as_miniz(src.read(off, comp), size)
    if status == "short":
        raise ZipError("unexpected decompressed size")
    if status == "broken":
        raise Unspecified(e.name)
    return out


def inflate_as_miniz(data: bytes, size: int) -> tuple[bytes, str]:
    """Inflate ``data`` into a buffer of ``size`` bytes as miniz does: ("ok" | "long" | "short" | "broken").
    "long": the stream has more than ``size`` bytes (miniz returns the first ``size``, no error)."""
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, size)
    except zlib.error:
        return b"", "broken"
    if len(out) == size:
        if d.eof:
            return out, "ok"
        try:
            more = d.decompress(d.unconsumed_tail, 1)
        except zlib.error:
            return out, "long"
        return out, "long" if more or not d.eof else "ok"
    return out, "short" if d.eof else "broken"
