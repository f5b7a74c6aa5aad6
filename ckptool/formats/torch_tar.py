"""torch's tar checkpoints (``torch.save`` before 0.1.10), read the way ``torch.load`` still reads them.

``torch.serialization._legacy_load`` tries this format first on every file that is not a zip: it opens the
file with ``tarfile.open(fileobj=f, mode="r:", format=PAX_FORMAT)`` and, only when that raises a ``TarError``
(anywhere in the tar attempt, member lookups included), goes on to the stacked pickles of the legacy format.
A tar it opens must hold three members, looked up by ``TarFile.getmember`` (exact name, the LAST member of
that name wins) and read in this order:

- ``storages``: a pickle of the storage count; per storage a pickle of ``(key, location, storage_type)``
  followed by an 8-byte little-endian element count and the raw bytes (``UntypedStorage._new_with_file``);
  then a pickle of the storage views ``[(view key, root key, element offset, numel), ...]``.
- ``tensors``: a pickle of the tensor count; per tensor a pickle of ``(key, storage key, tensor type)``
  followed by an int32 ndim, 4 pad bytes, ndim int64 sizes, ndim int64 strides and an int64 storage offset.
- ``pickle``: the object, whose persistent ids are ``str(key)`` of those tensors and storages (or a
  ``(module class, source file, source)`` tuple).

All three are unpickled by torch with the full pickle machinery (the tar path refuses ``weights_only=True``
but runs under ``weights_only=False``), so ``scan`` walks every pickle of the three. Reading is header-only
and in place: member data is never extracted; a storage is a byte range of the file itself. Python's own
``tarfile`` (the module torch calls) resolves the archive, so ckptool sees exactly the members torch does.
"""

from __future__ import annotations

import struct
import tarfile
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo
from ..errors import CkptError, CorruptFileError, UnsupportedFormatError
from ..sources import Source
from . import unpickler
from ._torch_tree import build_checkpoint, inert_notes
from .unpickler import DTypeOrStorage, StorageRef, TensorRecord

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "torch-tar"
MEMBERS = ("storages", "tensors", "pickle")  # the order torch reads them in
MAX_TAR_MEMBERS = 100_000  # a torch tar file has 4; tarfile keeps every header in memory
MAX_RECORDS = 10_000_000  # storages / tensors a member may declare (bounded again by its bytes)
# The legacy tensor types the ``tensors`` member names (torch.FloatTensor, ...): values, never called.
TENSOR_TYPES: dict[str, None] = {
    f"{mod}.{s.removesuffix('Storage')}Tensor": None
    for s in dtypes.BY_STORAGE
    if s not in ("UntypedStorage",) and not s.startswith("Q")
    for mod in ("torch", "torch.cuda")
}


def tar_header(head: bytes) -> bool:
    """True when the first 512 bytes parse as a tar header (what ``tarfile.open`` needs to get going)."""
    if len(head) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def detect(head: bytes, size: int) -> bool:
    # Registered after torch-legacy: a file that also starts with the legacy magic number is the legacy
    # module's (its reader and scan make this tar attempt first, as torch does); any other tar header is ours.
    return tar_header(head)


class TarView:
    """What torch's tar attempt finds: ``members`` (name -> (data offset, size)) when it would go on to read the
    three members; ``fallback`` when it raises a TarError (torch then reads the file as stacked pickles);
    ``refusal`` when it fails for good (the sentence says why), and ``missing`` when that is because a member
    is missing (torch.load fails with a KeyError before any pickle: nothing of the file runs)."""

    def __init__(self) -> None:
        self.members: dict[str, tuple[int, int]] = {}
        self.fallback: str | None = None
        self.refusal: str | None = None
        self.missing: str | None = None
        self.link = False  # a member torch would extract is a link (it would read what the link points to)


def view(src: Source) -> TarView:
    v = TarView()
    if src.size < tarfile.BLOCKSIZE:
        v.fallback = "shorter than a tar header"
        return v
    last: dict[str, tarfile.TarInfo] = {}
    try:
        with src.fileobj() as f, tarfile.open(fileobj=f, mode="r:", format=tarfile.PAX_FORMAT) as tar:
            n = 0
            while (info := tar.next()) is not None:  # the walk getmember() makes, bounded
                n += 1
                if n > MAX_TAR_MEMBERS:
                    v.refusal = f"a tar archive of more than {MAX_TAR_MEMBERS:,} members (a torch tar file has 4)"
                    return v
                last[info.name] = info
    except tarfile.TarError as e:
        v.fallback = f"{type(e).__name__}: {e}"
        return v
    except Exception as e:  # anything else escapes torch.load too
        v.refusal = f"torch.load fails while reading its tar header ({type(e).__name__}: {e})"
        return v
    for name in MEMBERS:
        info = last.get(name)
        if info is None:
            v.missing = name
            v.refusal = (
                f"its first 512 bytes are a valid tar header, so torch.load reads it as the old tar format and "
                f"fails (no {name!r} member): torch cannot load this file either"
            )
            return v
        if not info.isfile() or info.sparse is not None:
            v.link = info.issym() or info.islnk()
            kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link"}.get(info.type, "not a file")
            v.refusal = (
                f"tar member {name!r} is {kind} (type {info.type!r}): torch.load would extract it and read "
                "whatever it points to; ckptool reads regular members only"
            )
            return v
        if info.offset_data + info.size > src.size:
            v.fallback = f"member {name!r} runs past the end of the file (tarfile: unexpected end of data)"
            return v
        v.members[name] = (info.offset_data, info.size)
    return v


def _load(mm: Any, pos: int, end: int, where: str, **kw: Any) -> tuple[Any, int]:
    if pos >= end:
        raise CorruptFileError(f"{where}: the member ends before this pickle")
    return unpickler.load(mm, pos, end=end, where=where, **kw)


def _count(obj: Any, what: str, room: int) -> int:
    if not isinstance(obj, int) or isinstance(obj, bool) or obj < 0 or obj > min(MAX_RECORDS, room):
        raise CorruptFileError(f"the {what} count {str(obj)[:40]!r} is not a count this member can hold")
    return obj


def _storages(mm: Any, off: int, size: int, path: str) -> tuple[dict[Any, StorageRef], dict[str, StorageInfo]]:
    """The ``storages`` member: root storages (in place) and views."""
    end = off + size
    n, pos = _load(mm, off, end, "tar member 'storages': storage count")
    refs: dict[Any, StorageRef] = {}
    infos: dict[str, StorageInfo] = {}
    for i in range(_count(n, "storage", size)):
        rec, pos = _load(mm, pos, end, f"tar member 'storages': storage {i + 1}")
        if not (isinstance(rec, tuple) and len(rec) == 3):
            raise CorruptFileError(f"tar member 'storages': storage {i + 1} is not (key, location, type)")
        key, location, cls = rec
        if not (isinstance(cls, DTypeOrStorage) and cls.name in dtypes.BY_STORAGE) or isinstance(key, (list, dict)):
            raise CorruptFileError(f"tar member 'storages': storage {i + 1} names {cls!r}, not a storage type")
        dt = dtypes.BY_STORAGE[cls.name]
        if pos + 8 > end:
            raise CorruptFileError(f"tar member 'storages' ends before storage {key!r}'s element count (truncated?)")
        (numel,) = struct.unpack("<q", mm[pos : pos + 8])
        nbytes = numel * dt.itemsize
        if numel < 0 or pos + 8 + nbytes > end:
            raise CorruptFileError(
                f"storage {key!r} claims {numel} elements ({nbytes} bytes) but tar member 'storages' holds "
                f"{end - pos - 8} more bytes (truncated?)"
            )
        skey = str(key)
        loc = location if isinstance(location, str) else str(location)
        refs[key] = StorageRef(key=skey, dtype=dt.name, numel=numel, location=loc)
        infos[skey] = StorageInfo(skey, dt.name, numel, loc, ByteSource(path, pos + 8, nbytes))
        pos += 8 + nbytes
    views, pos = _load(mm, pos, end, "tar member 'storages': storage views")
    if not isinstance(views, list):
        raise CorruptFileError("tar member 'storages': the storage views are not a list")
    for v in views:
        if not (isinstance(v, tuple) and len(v) == 4 and all(isinstance(x, int) for x in v[2:])):
            raise CorruptFileError(f"tar member 'storages': bad storage view {str(v)[:60]}")
        target, root, offset, numel = v
        base = refs.get(root)
        if base is None or base.view_of is not None:
            raise CorruptFileError(f"storage view {target!r} names storage {root!r}, which the file does not hold")
        if offset < 0 or numel < 0 or offset + numel > base.numel:
            raise CorruptFileError(f"storage view {target!r} lies outside its storage {root!r}")
        refs[target] = StorageRef(
            key=str(target), dtype=base.dtype, numel=numel, location=base.location, view_of=base.key, view_offset=offset
        )
    return refs, infos


def _tensors(mm: Any, off: int, size: int, refs: dict[Any, StorageRef]) -> dict[Any, TensorRecord]:
    """The ``tensors`` member: each tensor's storage key and metadata (torch uses the storage's dtype)."""
    end = off + size
    with unpickler.extend_allowlist(TENSOR_TYPES):
        n, pos = _load(mm, off, end, "tar member 'tensors': tensor count")
        out: dict[Any, TensorRecord] = {}
        for i in range(_count(n, "tensor", size)):
            rec, pos = _load(mm, pos, end, f"tar member 'tensors': tensor {i + 1}")
            if not (isinstance(rec, tuple) and len(rec) == 3):
                raise CorruptFileError(f"tar member 'tensors': tensor {i + 1} is not (key, storage key, type)")
            key, sid, _type = rec
            ref = refs.get(sid) if not isinstance(sid, (list, dict)) else None
            if ref is None:
                raise CorruptFileError(f"tensor {key!r} names storage {sid!r}, which the file does not hold")
            if pos + 8 > end:
                raise CorruptFileError(f"tar member 'tensors' ends inside tensor {key!r}'s metadata (truncated?)")
            (ndim,) = struct.unpack("<i", mm[pos : pos + 4])
            need = 8 + 16 * max(ndim, 0) + 8
            if ndim < 0 or ndim > 64 or pos + need > end:
                raise CorruptFileError(f"tensor {key!r}: bad metadata (ndim {ndim})")
            shape = struct.unpack(f"<{ndim}q", mm[pos + 8 : pos + 8 + 8 * ndim])
            stride = struct.unpack(f"<{ndim}q", mm[pos + 8 + 8 * ndim : pos + 8 + 16 * ndim])
            (offset,) = struct.unpack("<q", mm[pos + 8 + 16 * ndim : pos + need])
            pos += need
            if any(d < 0 for d in shape) or any(s < 0 for s in stride) or offset < 0:
                raise CorruptFileError(f"tensor {key!r}: negative size, stride or offset")
            if 0 not in shape:
                hi = offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True)) + 1
                if hi > ref.numel:  # torch's set_() refuses a tensor beyond its (view) storage
                    raise CorruptFileError(
                        f"tensor {key!r} ({list(shape)}) reaches element {hi} of a storage of {ref.numel}"
                    )
            out[key] = TensorRecord(ref, offset, tuple(shape), tuple(stride), ref.dtype)
    return out


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    v = view(src)
    if v.refusal is not None:
        raise CorruptFileError(v.refusal, path=src.name)
    if v.fallback is not None:
        raise UnsupportedFormatError(
            f"its first 512 bytes are a tar header, but tarfile cannot read the archive ({v.fallback}): torch.load "
            "falls back to reading it as a legacy pickle file, which it is not",
            path=src.name,
        )
    return read_members(src, v, key=key)


def read_members(src: Source, v: TarView, *, key: str | None = None) -> Checkpoint:
    path, mm = src.name, src.buffer()
    refs, storages = _storages(mm, *v.members["storages"], path)
    tensors = _tensors(mm, *v.members["tensors"], refs)
    inert: set[str] = set()

    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, tuple):  # (module class, source file, source): torch returns the class
            return pid[0] if pid else None
        try:
            k = int(pid)
        except (TypeError, ValueError):
            raise CorruptFileError(f"persistent id {str(pid)[:40]!r} is not a tensor or storage key") from None
        if k in tensors:
            return tensors[k]
        if k in refs:
            return refs[k]
        raise CorruptFileError(f"the object names tensor or storage {k}, which the file does not hold")

    off, size = v.members["pickle"]
    root, _ = _load(mm, off, off + size, "tar member 'pickle'", persistent_load=persistent_load, inert=inert)
    ck = build_checkpoint(root, storages, path=path, fmt=NAME, key=key, metadata={"byteorder": "little"})
    ck.byteorder = "little"
    ck.notes.append("torch's tar format (torch.save before 0.1.10); torch.load reads it with weights_only=False only")
    ck.notes.extend(inert_notes(inert))
    return ck


# --------------------------------------------------------------------------------------------
# scan: every pickle torch's tar path unpickles, in the three members it reads
# --------------------------------------------------------------------------------------------
def _walk(ctx: ScanContext, pos: int, end: int, where: str) -> int | None:
    """Walk one pickle at ``pos``; its end, or None when it is not a complete pickle (a finding)."""
    w = unpickler.collect_globals(ctx.mm, pos, end)
    ctx.record_walk(w, where, 0, pos)
    if not w.complete:
        ctx.find("invalid-pickle", f"not a valid pickle at byte {w.end}: {w.error}", where)
        return None
    return w.end


def _value(ctx: ScanContext, pos: int, end: int) -> Any:
    """The restricted reader's value of the (already walked) pickle at ``pos``, or None when it refuses."""
    try:
        return unpickler.load(ctx.mm, pos, end=end)[0]
    except CkptError:
        return None


def _scan_records(ctx: ScanContext, name: str, off: int, size: int) -> None:
    """Walk a ``storages`` or ``tensors`` member's pickles, stepping over the raw bytes between them."""
    end = off + size
    label = f"tar member {name!r}"
    pos = _walk(ctx, off, end, f"{label}: count")
    n = _value(ctx, off, end) if pos is not None else None
    if pos is None or not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= min(MAX_RECORDS, size):
        return
    for i in range(n):
        at = pos
        pos = _walk(ctx, at, end, f"{label}: record {i + 1}")
        if pos is None:
            return
        rec = _value(ctx, at, end)
        if not (isinstance(rec, tuple) and len(rec) == 3):
            ctx.note(f"{label}: record {i + 1} is not one torch reads; the member's rest was not walked")
            return
        if name == "storages":
            cls = rec[2]
            dt = dtypes.BY_STORAGE.get(cls.name) if isinstance(cls, DTypeOrStorage) else None
            if dt is None or pos + 8 > end:
                ctx.note(f"{label}: record {i + 1} names no storage type; the member's rest was not walked")
                return
            pos += 8 + int.from_bytes(bytes(ctx.mm[pos : pos + 8]), "little", signed=True) * dt.itemsize
        else:
            ndim = int.from_bytes(bytes(ctx.mm[pos : pos + 4]), "little", signed=True)
            pos += 8 + 16 * max(ndim, 0) + 8
        if not off <= pos <= end:
            return
    if name == "storages" and pos < end:
        _walk(ctx, pos, end, f"{label}: storage views")


def scan(ctx: ScanContext) -> None:
    ctx.set_format(NAME)
    v = view(ctx.src)
    if v.fallback is not None:
        ctx.note(f"a tar header that tarfile cannot read ({v.fallback}): torch.load falls back to a pickle at byte 0")
        ctx.walk_stream(ctx.mm, 0, ctx.size, "pickle at byte 0 (torch's fallback)", 0, probe=True)
        return
    if v.missing is not None:
        ctx.note(f"a tar archive without a {v.missing!r} member: torch.load fails on it before unpickling anything")
        return
    if v.refusal is not None:
        ctx.find("unsafe" if v.link else "corrupt", v.refusal)
        return
    scan_members(ctx, v)


def scan_members(ctx: ScanContext, v: TarView) -> None:
    """The three members' pickles (torch reads them in this order), then the reader's values."""
    ctx.set_format(NAME)
    _scan_records(ctx, "storages", *v.members["storages"])
    with unpickler.extend_allowlist(TENSOR_TYPES):
        _scan_records(ctx, "tensors", *v.members["tensors"])
    off, size = v.members["pickle"]
    _walk(ctx, off, off + size, "tar member 'pickle'")
    ctx.values_pass()
