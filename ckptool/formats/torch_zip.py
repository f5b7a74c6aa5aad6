"""torch zip archives (``torch.save`` since 1.6) and TorchScript archives, header-only.

The archive is read as torch reads it (:mod:`._zipread`: miniz's rules, not Python's :mod:`zipfile`):
``<archive name>/data.pkl`` through the restricted unpickler, ``byteorder``, and each storage's ``data/<key>``
record, every name located as miniz locates it (case-insensitively). Tensor bytes are located (record,
absolute file offset) but not read. An archive that a plain reader would read differently is refused
(``[parser-differential]``), and ``scan`` reports it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo, crc_mismatch
from ..errors import CorruptFileError, UnsupportedFormatError
from ..sources import CHUNK, Source, prefetch
from . import _zipread as zr
from . import torchscript, unpickler
from ._torch_tree import build_checkpoint, inert_notes, storage_ref

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "torch-zip"
MAX_PICKLE_BYTES = 1 << 30
MAX_COMPRESSED_PICKLE = 64 << 20  # torch stores pickles uncompressed; a deflated one is inflated in memory
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand more than this; a larger claimed size is a lie
MAX_ENTRIES = zr.MAX_ENTRIES
DCP_HINT = "a torch.distributed.checkpoint shard? open its folder"


def detect(head: bytes, size: int) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


def open_zip(src: Source) -> zr.Archive:
    """The archive as torch reads it; every failure is a CorruptFileError naming the file."""
    path = src.name
    try:
        ar = zr.open_archive(src)
    except zr.ZipError as e:
        multi = zr.multi_archive(None, src)
        if multi:
            raise CorruptFileError(multi, path=path, hint=DCP_HINT) from None
        if e.kind == "too-many":
            raise CorruptFileError(e.reason, path=path, hint="see docs/design.md, torch zip limits") from None
        raise CorruptFileError(
            f"not a valid zip archive as torch reads it ({e.reason}); the file may be truncated", path=path
        ) from None
    local_headers(src, ar)
    multi = zr.multi_archive(ar, src)
    if multi:
        raise CorruptFileError(multi, path=path, hint=DCP_HINT)
    return ar


def local_headers(src: Source, ar: zr.Archive) -> None:
    """Fetch every local header (and its data's first bytes), which the reader checks: one round trip when the
    source is remote (:func:`~ckptool.sources.prefetch`), nothing for a local file."""
    if getattr(src, "prefetch", None) is None:  # a local file: nothing to fetch (and no list of 100k spans)
        return
    prefetch(src, [(e.header_offset, zr.LDH_SIZE + len(e.raw) + 128) for e in ar.entries])


@dataclass(frozen=True)
class Inflate:
    """The decoder of a deflated record: streamed inflation (never whole), the CRC checked when the whole
    record goes by (``where.crc32``)."""

    member: str
    comp_size: int
    checks_crc = True  # a whole-record read checks the CRC-32 (ckptool.checkpoint's CRC bookkeeping asks)

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        pos = 0
        whole = start == 0 and stop >= where.nbytes
        try:
            for mv in zr.member_chunks(
                source, where.offset, name=self.member, method=8, comp_size=self.comp_size, size=where.nbytes,
                crc=where.crc32 if whole else None, buf=buf, limit=None if whole else stop,
            ):  # fmt: skip
                k = len(mv)
                lo, hi = max(start - pos, 0), min(stop - pos, k)
                if lo < hi:
                    yield mv[lo:hi]
                pos += k
                if pos >= stop:
                    break
        except zr.CRCError as e:
            raise CorruptFileError(crc_mismatch(self.member, e.got, e.want), path=source.name) from None
        except zr.ZipError as e:
            raise CorruptFileError(f"cannot inflate {e.reason}", path=source.name) from None
        if pos < stop:
            raise CorruptFileError(f"{self.member!r} inflates to {pos} bytes, expected {stop}", path=source.name)


def _check_member(ar: zr.Archive, e: zr.Entry, path: str) -> int:
    """Validate a member as torch would read it; return the absolute offset of its data."""
    try:
        ar.check_readable(e)
        off = ar.data_offset(e)
    except zr.ZipError as err:
        raise CorruptFileError(f"zip member: {err.reason}", path=path) from None
    if e.method == 8 and e.size > MAX_DEFLATE_RATIO * e.comp_size + 1024:
        raise CorruptFileError(
            f"zip member {e.name!r} claims {e.size} bytes from {e.comp_size} compressed: more than deflate can expand",
            path=path,
        )
    return off


# --------------------------------------------------------------------------------------------
# findings: the archive's structure (scan lists them all; the reader refuses FATAL ones)
# --------------------------------------------------------------------------------------------
FATAL = frozenset({"zip-duplicate", "parser-differential", "zip-name-mismatch", "zip-outside"})


def findings(ar: zr.Archive) -> Iterator[tuple[str, str, str | None]]:
    """(kind, message, member): miniz-vs-plain differentials, duplicate names, local headers that are missing or
    name another file, records past the end, encrypted members, overlapping records."""
    dup_exact: set[bytes] = set()
    if ar.duplicates:
        seen: dict[bytes, int] = {}
        for e in ar.entries:
            seen[e.raw] = seen.get(e.raw, 0) + 1
        dup_exact = {n for n, k in seen.items() if k > 1}
        for dup in sorted(dup_exact):
            yield (
                "zip-duplicate",
                f"{seen[dup]} members share this name: which one a loader reads is ambiguous",
                dup.decode("utf-8", "replace"),
            )
    for message, raw in zr.differentials(ar):
        where = None if raw is None else raw.decode("utf-8", "replace")
        if raw is not None and raw in dup_exact and "share this name" in message:
            continue
        if message.startswith("the local header names it"):
            yield ("zip-name-mismatch", message, where)
        else:
            yield ("parser-differential", message, where)
    cnames = ar.cnames
    pkls = [
        ar.entries[i].name
        for i, c in enumerate(cnames)
        if c[-8:].lower() == b"data.pkl" and (len(c) == 8 or c[-9:-8] == b"/")
    ]
    if len(set(pkls)) > 1:
        yield (
            "zip-duplicate",
            f"{len(pkls)} data.pkl members ({', '.join(pkls[:4])}): torch reads the one under the first member's "
            "folder, other tools may read another",
            None,
        )
    prefix = ar.prefix
    if prefix is None:
        yield ("zip-outside", "the first entry is not in a folder: torch refuses the archive", None)
    else:
        under = prefix + b"/"
        k = len(under)
        outside = [ar.entries[i] for i, c in enumerate(cnames) if c[:k] != under]
        for e in outside[:8]:
            yield (
                "zip-outside",
                f"not under the archive folder {prefix.decode('utf-8', 'replace')!r}: torch.load refuses the archive "
                "(other tools may read it)",
                e.name,
            )
    import numpy as np

    if not ar.entries:
        return
    lt = ar.table()
    size = ar.size
    cols = ar.columns()
    comp, flags, method, start = cols["comp"], cols["flags"], cols["method"], cols["lho"]
    stop = lt.data + comp
    for i in np.flatnonzero(~lt.ok):
        e = ar.entries[i]
        yield ("zip-corrupt", f"local header at offset {e.header_offset} is missing or damaged", e.name)
    for i in np.flatnonzero(lt.ok & ((stop > size) | ((flags & 0x41) != 0) | ((method != 0) & (method != 8)))):
        e = ar.entries[i]
        if stop[i] > size:
            yield ("zip-corrupt", f"record runs past the end of the file ({stop[i]} > {size})", e.name)
        if e.flags & 0x41:
            yield ("zip-corrupt", "member is encrypted", e.name)
        elif e.method not in (0, 8):
            yield ("zip-corrupt", f"compression method {e.method}: torch reads stored and deflated records", e.name)
    ok = np.flatnonzero(lt.ok)
    if not len(ok):
        return
    order = ok[np.argsort(start[ok], kind="stable")]
    s0, s1 = start[order], stop[order]
    prev_end = np.maximum.accumulate(s1)
    for j in np.flatnonzero(s0[1:] < prev_end[:-1]) + 1:
        a = order[int(np.argmax(s1[:j] == prev_end[j - 1]))]
        b = order[j]
        yield (
            "zip-overlap",
            f"records overlap: {ar.entries[a].name!r} spans [{start[a]}, {stop[a]}) and {ar.entries[b].name!r} starts "
            f"at {start[b]} (a zip bomb or a smuggled member)",
            ar.entries[b].name,
        )
    if ar.cd_offset < int(s1.max()):
        yield ("zip-overlap", "the central directory overlaps member data", None)


def _refuse_fatal(ar: zr.Archive, path: str) -> None:
    for kind, message, where in findings(ar):
        if kind in FATAL:
            hint = "`ckptool scan` reports every member"
            if kind == "parser-differential":
                message = f"[parser-differential] {message}"
                hint = "torch and other zip readers would read different archives; `ckptool scan` shows both views"
            raise CorruptFileError(f"zip archive: {where + ': ' if where else ''}{message}", path=path, hint=hint)


def _record(ar: zr.Archive, name: str) -> zr.Entry | None:
    return ar.record(name)


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    path = src.name
    ar = open_zip(src)
    _refuse_fatal(ar, path)
    try:  # PyTorchStreamReader's own refusals after miniz's: the version record, the serialization id
        zr.torch_open_checks(ar, src)
    except zr.ZipError as err:
        raise CorruptFileError(f"torch.load refuses this archive: {err.reason}", path=path) from None
    except zr.Unspecified as err:
        raise CorruptFileError(
            f"torch.load's outcome is undefined: record {err} has a broken deflate stream", path=path
        ) from None
    prefix = ar.prefix
    assert prefix is not None  # (zip-outside is fatal)
    names, under = ar.cnames, prefix + b"/"  # (every name is under the archive folder: zip-outside is fatal)
    pkl = _record(ar, "data.pkl")
    if pkl is None:
        hint = "a numpy .npz?" if any(c.endswith(b".npy") for c in names) else None
        raise UnsupportedFormatError("zip archive without a data.pkl: not a torch checkpoint", path=path, hint=hint)
    code = under + b"code/"
    torchscript = under + b"constants.pkl" in names or any(c.startswith(code) for c in names)
    byteorder = "little"
    bo = _record(ar, "byteorder")
    if bo is not None:
        if bo.size > 64:
            raise CorruptFileError(f"{bo.name} is larger than expected", path=path)
        raw = _member_bytes(src, ar, bo, path, 64)
        if raw not in (b"little", b"big"):
            raise CorruptFileError(
                f"byteorder record says {raw[:20]!r} (torch reads only 'little' or 'big')", path=path
            )
        byteorder = raw.decode()
    if pkl.size > MAX_PICKLE_BYTES:
        raise CorruptFileError(f"data.pkl claims {pkl.size} bytes (limit {MAX_PICKLE_BYTES})", path=path)
    pkl_buf: Any
    if pkl.method == 0:  # walk it in place: no copy
        pkl_pos = _check_member(ar, pkl, path)
        pkl_buf = src.buffer()
        _check_crc_of(src, pkl, pkl_pos, path)
    else:
        pkl_buf, pkl_pos = _member_bytes(src, ar, pkl, path, MAX_COMPRESSED_PICKLE), 0
    refs: dict[str, Any] = {}
    inert: set[str] = set()

    def persistent_load(pid: Any) -> Any:
        ref = storage_ref(pid, legacy=False)
        # torch keeps the first declaration of a key (loaded_storages[key]): a later one with another dtype or
        # size gets the first's typed storage, so its tensors show the first dtype
        return refs.setdefault(ref.key, ref)

    root, _ = unpickler.load(
        pkl_buf,
        pkl_pos,
        end=pkl_pos + pkl.size,
        persistent_load=persistent_load,
        torchscript=torchscript,
        where=f"{path}: data.pkl",
        inert=inert,
    )

    storages: dict[str, StorageInfo] = {}
    # per storage: the record located as ``get_record`` locates it, its size, and where its data starts (the
    # local headers were read for every entry at once: ``offsets``); anything unusual goes through _check_member
    base = prefix + b"/data/"
    lt = ar.table()
    ok, data_at = lt.ok.tolist(), lt.data.tolist()
    itemsize: dict[str, int] = {}
    found = ar.locate_all([base + k.encode() for k in refs])
    for (k, ref), e in zip(refs.items(), found, strict=True):
        if e is None:
            raise CorruptFileError(
                f"storage record {prefix.decode('utf-8', 'replace') + '/data/' + k!r} is missing from the archive",
                path=path,
            )
        size = itemsize.get(ref.dtype)
        if size is None:
            size = itemsize[ref.dtype] = dtypes.lookup(ref.dtype).itemsize
        need = ref.numel * size
        h = e.h  # central header fields, zip64 values applied: 3 flags, 4 method, 8 compressed size, 9 size
        if h[9] < need:
            raise CorruptFileError(f"storage {e.name!r} declares {need} bytes but its record holds {e.size}", path=path)
        off = data_at[e.index]
        if h[4] != 0 or h[3] & 0x61 or not ok[e.index] or off + h[8] > ar.size:
            off = _check_member(ar, e, path)  # deflated, encrypted, no local header, past the end: the checks say
        stored = h[4] == 0  # (h: the fields e.size, e.comp_size and e.crc would each read again)
        bs = ByteSource(
            path=path, offset=off, nbytes=h[9], member=e.name, compressed=not stored,
            decoder=None if stored else Inflate(e.name, h[8]), crc32=h[7],
        )  # fmt: skip
        storages[k] = StorageInfo(key=k, dtype=ref.dtype, numel=ref.numel, location=ref.location, source=bs)

    fmt = "torchscript" if torchscript else NAME
    meta: dict[str, Any] = {"archive_prefix": prefix.decode("utf-8", "replace"), "byteorder": byteorder}
    ck = build_checkpoint(root, storages, path=path, fmt=fmt, key=key, metadata=meta)
    ck.byteorder = byteorder
    ck.notes.extend(inert_notes(inert))
    if torchscript:
        ck.notes.append(
            "TorchScript archive: parameters listed from the scripted module's attributes; code was not run"
        )
    locs = sorted({s.location for s in storages.values()} - {"cpu"})
    if locs:
        ck.metadata["storage_locations"] = locs
    return ck


def _check_crc_of(src: Source, e: zr.Entry, off: int, path: str) -> None:
    try:
        for _ in zr.entry_chunks(src, off, e, bytearray(min(CHUNK, max(e.size, 1)))):
            pass
    except zr.CRCError as err:
        raise CorruptFileError(crc_mismatch(e.name, err.got, err.want), path=path) from None
    except zr.ZipError as err:
        raise CorruptFileError(f"cannot read {err.reason}", path=path) from None


def _member_bytes(src: Source, ar: zr.Archive, e: zr.Entry, path: str, limit: int, *, check_crc: bool = True) -> bytes:
    off = _check_member(ar, e, path)
    if e.size > limit:
        raise CorruptFileError(
            f"{e.name} is compressed and claims {e.size} bytes; ckptool inflates compressed pickles up to "
            f"{limit >> 20} MB (torch itself never compresses them)"
            if e.method
            else f"{e.name} claims {e.size} bytes (limit {limit})",
            path=path,
        )
    try:
        return zr.read_member(src, off, e, max_bytes=limit, check_crc=check_crc)
    except zr.CRCError as err:
        raise CorruptFileError(crc_mismatch(e.name, err.got, err.want), path=path) from None
    except zr.ZipError as err:
        raise CorruptFileError(f"cannot read {err.reason}", path=path) from None


# --------------------------------------------------------------------------------------------
# scan: every member torch (or another loader) could unpickle, the archive's rules, the CRCs, then the values
# --------------------------------------------------------------------------------------------
def scan(ctx: ScanContext) -> None:
    ctx.set_format(NAME)
    src = ctx.src
    try:
        ar = zr.open_archive(src)
    except zr.ZipError:
        multi = zr.multi_archive(None, src)
        if multi is None:
            open_zip(src)  # raises the reader's error (exit 2)
        ctx.find("zip-multi-archive", f"{multi}: {DCP_HINT}", None)
        return
    local_headers(src, ar)
    multi = zr.multi_archive(ar, src)
    if multi:
        ctx.find("zip-multi-archive", f"{multi}: {DCP_HINT}", None)
    ctx.torchscript = any(b"/code/" in b"/" + n or n.endswith(b"constants.pkl") for n in ar.cnames)
    if ctx.torchscript:
        ctx.set_format("torchscript")
        ctx.note(
            "TorchScript archive: torch.jit.load compiles and runs its code/ folder (TorchScript, not "
            "Python); __torch__.* globals name its classes"
        )
        _scan_code(ctx, ar)
    for kind, message, where in findings(ar):
        ctx.find(kind, message, where)
    torch_pkl = ar.record("data.pkl")
    for e in ar.entries:
        if e.is_dir:
            continue
        try:
            _scan_member(ctx, ar, e, torch_pkl is e)
        except CorruptFileError as err:
            ctx.find("zip-corrupt", err.message, e.name)
    # the reader's view (refused archives: the refusal is a finding); the CRCs were checked above
    ck = ctx.open_reader()
    if ck is not None:
        with ck:
            ck.verify_crc = False
            ctx.check_values(ck)


def _scan_member(ctx: ScanContext, ar: zr.Archive, e: zr.Entry, is_torch_pkl: bool) -> None:
    """Walk a member that is a pickle by name (any case) or by its first bytes, whatever it is called; check its
    CRC (storage records only when values are read)."""
    name = e.name
    low = e.cname.lower()
    is_storage = b"/data/" in b"/" + low and not low.endswith(b".pkl")
    pkl = is_torch_pkl or low.endswith(b".pkl")
    off = _check_member(ar, e, ctx.path)
    magic = unpickler.PICKLE_MAGIC
    if e.method == 0:
        end = off + e.size
        if end > ctx.size:
            raise CorruptFileError(f"record runs past the end of the file ({end} > {ctx.size})", path=ctx.path)
        if pkl or bytes(ctx.mm[off : off + 2]) in magic:
            ctx.walk_stream(ctx.mm, off, end, name, 0, probe=not pkl)
        if ctx.values or not is_storage:
            _scan_crc(ctx, e, off)
        return
    head = b""
    try:
        for chunk in zr.entry_chunks(ctx.src, off, e, bytearray(2), check_crc=False, limit=2):
            head += bytes(chunk)
    except zr.ZipError as err:
        ctx.find("zip-corrupt", err.reason, name)
        return
    if pkl or head in magic:
        if e.size > MAX_COMPRESSED_PICKLE:
            raise CorruptFileError(
                f"{name} is compressed and claims {e.size} bytes; ckptool inflates compressed pickles up to "
                f"{MAX_COMPRESSED_PICKLE >> 20} MB (torch itself never compresses them)",
                path=ctx.path,
            )
        # what torch unpickles: miniz inflates into a buffer of the claimed size, no more (and checks no CRC)
        raw = ctx.src.read(off, min(e.comp_size, MAX_COMPRESSED_PICKLE + (1 << 20)))
        data, status = zr.inflate_as_miniz(raw, e.size)
        if status == "long":
            ctx.find(
                "parser-differential",
                f"the deflate stream holds more than the {e.size} bytes the directory says: torch unpickles the "
                "first ones, other readers the whole stream",
                name,
            )
        elif status != "ok":
            ctx.find("zip-corrupt", f"the deflate stream {'ends short' if status == 'short' else 'is broken'}", name)
        ctx.walk_stream(data, 0, len(data), name, None, probe=not pkl)
        if status == "ok" and zlib.crc32(data) != e.crc:
            ctx.find(
                "zip-crc",
                f"CRC-32 is {zlib.crc32(data):08x} but the directory says {e.crc:08x}: the record was modified or "
                "damaged",
                name,
            )
        return
    if ctx.values or not is_storage:
        _scan_crc(ctx, e, off)


def _scan_crc(ctx: ScanContext, e: zr.Entry, off: int) -> None:
    try:  # (a buffer the record's size: a 1 MiB one for each of 100k 16-byte records is 100 GB of zeroing)
        for _ in zr.entry_chunks(ctx.src, off, e, bytearray(min(CHUNK, max(e.size, 1)))):
            pass
    except zr.CRCError as err:
        ctx.find(
            "zip-crc",
            f"CRC-32 is {err.got:08x} but the directory says {err.want:08x}: the record was modified or damaged",
            e.name,
        )
    except zr.ZipError as err:
        ctx.find("zip-corrupt", err.reason, e.name)


def _scan_code(ctx: ScanContext, ar: zr.Archive) -> None:
    """A TorchScript archive's code records are a finding: torch.jit.load compiles and runs them."""

    def reader(e: zr.Entry) -> Callable[[], bytes]:
        return lambda: _member_bytes(ctx.src, ar, e, ctx.path, torchscript.MAX_CODE_BYTES)

    code = [(e.name, e.size, reader(e)) for e in ar.entries if not e.is_dir and torchscript.is_code_record(e.name)]
    try:
        found: list[tuple[str | None, str]] = list(torchscript.code_findings(code))
    except CorruptFileError as err:
        found = [(None, f"TorchScript code that torch.jit.load runs; ckptool cannot vouch for it ({err.message})")]
    for member, message in found:
        ctx.find("torchscript-code", message, member)
    if not code:
        ctx.find(
            "torchscript-code",
            "a TorchScript archive without code/ records: torch.load hands it to torch.jit.load, which ckptool "
            "cannot vouch for",
        )
