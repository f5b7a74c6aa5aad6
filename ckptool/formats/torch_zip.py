"""torch zip archives (``torch.save`` since 1.6) and TorchScript archives, header-only.

Reads the zip central directory, ``<prefix>/data.pkl`` (through the restricted unpickler) and
``<prefix>/byteorder``. Tensor bytes are located (member, absolute file offset) but not read.
"""

from __future__ import annotations

import itertools
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo
from ..errors import CorruptFileError, UnsupportedFormatError
from ..sources import CHUNK, Source
from . import unpickler
from ._torch_tree import build_checkpoint, inert_notes, storage_ref

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "torch-zip"
MAX_PICKLE_BYTES = 1 << 30
MAX_COMPRESSED_PICKLE = 64 << 20  # torch stores pickles uncompressed; a deflated one is inflated in memory
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand more than this; a larger claimed size is a lie

# What the zipfile module raises on damaged archives besides BadZipFile: short reads (EOFError), bad
# seeks (OSError, OverflowError), unsupported methods (NotImplementedError), encrypted members
# (RuntimeError), broken deflate streams (zlib.error), bad names (UnicodeDecodeError is a ValueError).
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError, RuntimeError,
    OverflowError, zlib.error,
)  # fmt: skip


class _SourceZip(zipfile.ZipFile):
    """A ZipFile over a Source's file object, which it closes with itself."""

    def __init__(self, fobj: IO[bytes]):
        self._fobj = fobj
        super().__init__(fobj)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._fobj.close()


def detect(head: bytes, size: int) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


def open_zip(src: Source) -> zipfile.ZipFile:
    """The zip directory of a Source; every failure is a CorruptFileError naming it."""
    path = src.name
    fobj = src.fileobj()
    try:
        return _SourceZip(fobj)
    except zipfile.BadZipFile as e:
        fobj.close()
        raise CorruptFileError(f"not a valid zip archive ({e}); the file may be truncated", path=path) from None
    except ZIP_ERRORS as e:
        fobj.close()
        raise CorruptFileError(f"cannot read the zip directory ({type(e).__name__}: {e})", path=path) from None


@dataclass(frozen=True)
class Inflate:
    """The decoder of a deflated member: streamed inflate through :mod:`zipfile` (which checks the CRC)."""

    member: str

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        mv = memoryview(buf)
        pos = 0
        try:
            with open_zip(source) as zf, zf.open(self.member) as fh:
                while pos < stop:
                    k = fh.readinto(mv[: min(len(buf), stop - pos)])  # type: ignore[attr-defined]
                    if not k:
                        raise CorruptFileError(
                            f"{self.member!r} inflates to {pos} bytes, expected {stop}", path=source.name
                        )
                    lo = max(start - pos, 0)
                    if lo < k:
                        yield mv[lo:k]
                    pos += k
        except CorruptFileError:
            raise
        except ZIP_ERRORS as e:
            raise CorruptFileError(f"cannot inflate {self.member!r} ({e})", path=source.name) from None


def check_member(mm: Any, info: zipfile.ZipInfo, path: str) -> int:
    """Validate a member's claimed sizes against the file; return the absolute offset of its data."""
    if info.flag_bits & 0x1:
        raise CorruptFileError(f"zip member {info.filename!r} is encrypted", path=path)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CorruptFileError(
            f"zip member {info.filename!r} uses compression method {info.compress_type}; torch archives are "
            "stored (or, rarely, deflated)",
            path=path,
        )
    off = data_offset(mm, info, path)
    if off + info.compress_size > len(mm):
        raise CorruptFileError(
            f"zip member {info.filename!r} claims {info.compress_size} bytes at offset {off} but the file has "
            f"{len(mm)} (truncated?)",
            path=path,
        )
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise CorruptFileError(
                f"zip member {info.filename!r} is stored but its sizes disagree ({info.file_size} vs "
                f"{info.compress_size})",
                path=path,
            )
    elif info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CorruptFileError(
            f"zip member {info.filename!r} claims {info.file_size} bytes from {info.compress_size} compressed: "
            "more than deflate can expand",
            path=path,
        )
    return off


def findings(buf: Any, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> Iterator[tuple[str, str, str | None]]:
    """The archive's structural findings, (kind, message, member): duplicate names, local headers that are
    missing or name another file, records past the end, encrypted members, overlapping records. ``scan``
    lists them all; the reader refuses the ambiguous ones (:data:`FATAL`) with the first."""
    size = len(buf)
    seen: dict[str, int] = {}
    for info in infos:
        seen[info.filename] = seen.get(info.filename, 0) + 1
    for name, n in seen.items():
        if n > 1:
            yield ("zip-duplicate", f"{n} members share this name: which one a loader reads is ambiguous", name)
    pkls = [n for n in seen if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) > 1:
        yield (
            "zip-duplicate",
            f"{len(pkls)} data.pkl members ({', '.join(pkls[:4])}): torch reads the one under the first "
            "member's folder, other tools may read another",
            None,
        )
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        h = info.header_offset
        if h < 0 or h + 30 > size or bytes(buf[h : h + 4]) != b"PK\x03\x04":
            yield ("zip-corrupt", f"local header at offset {h} is missing or damaged", info.filename)
            continue
        name_len, extra_len = struct.unpack("<HH", buf[h + 26 : h + 30])
        local = bytes(buf[h + 30 : h + 30 + name_len]).decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        if local != info.orig_filename:
            yield (
                "zip-name-mismatch",
                f"the local header names it {local[:80]!r}: tools that walk local headers see another file",
                info.filename,
            )
        data = h + 30 + name_len + extra_len
        stop = data + info.compress_size
        if stop > size:
            yield ("zip-corrupt", f"record runs past the end of the file ({stop} > {size})", info.filename)
        if info.flag_bits & 0x1:
            yield ("zip-corrupt", "member is encrypted", info.filename)
        spans.append((h, stop, info.filename))
    spans.sort()
    for (a0, a1, an), (b0, _b1, bn) in itertools.pairwise(spans):
        if b0 < a1:
            yield (
                "zip-overlap",
                f"records overlap: {an!r} spans [{a0}, {a1}) and {bn!r} starts at {b0} (a zip bomb or a smuggled member)",
                bn,
            )
    if spans and zf.start_dir < max(s[1] for s in spans):
        yield ("zip-overlap", "the central directory overlaps member data", None)


FATAL = frozenset({"zip-duplicate"})  # findings the reader refuses: which member a loader reads is ambiguous


def find_prefix(names: list[str], path: str) -> str:
    pkl = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
    if not pkl:
        hint = "a numpy .npz?" if any(n.endswith(".npy") for n in names) else None
        raise UnsupportedFormatError("zip archive without a data.pkl: not a torch checkpoint", path=path, hint=hint)
    if len(pkl) > 1:
        raise CorruptFileError(
            f"zip archive holds {len(pkl)} data.pkl records ({', '.join(pkl[:3])}): which one a loader reads is "
            "ambiguous (torch picks the first member's folder)",
            path=path,
            hint="`ckptool scan` walks all of them",
        )
    return pkl[0][: -len("data.pkl")]


def data_offset(mm: Any, info: zipfile.ZipInfo, path: str) -> int:
    """Absolute offset of a member's data: after its *local* header (whose lengths may differ)."""
    h = info.header_offset
    if h < 0 or h + 30 > len(mm) or bytes(mm[h : h + 4]) != b"PK\x03\x04":
        raise CorruptFileError(f"zip member {info.filename!r} has a bad local header", path=path)
    name_len, extra_len = struct.unpack("<HH", mm[h + 26 : h + 30])
    return h + 30 + name_len + extra_len


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    path, mm = src.name, src.buffer()
    zf = open_zip(src)
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        by_name = {i.filename: i for i in infos}
        for kind, message, where in findings(mm, zf, infos):
            if kind in FATAL:
                raise CorruptFileError(
                    f"zip archive: {where + ': ' if where else ''}{message}",
                    path=path,
                    hint="`ckptool scan` reports every member",
                )
        prefix = find_prefix(names, path)
        torchscript = any(n.startswith(prefix + "code/") for n in names) or (prefix + "constants.pkl") in by_name
        byteorder = "little"
        if prefix + "byteorder" in by_name:
            byteorder = _small(zf, by_name[prefix + "byteorder"], path).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CorruptFileError(f"byteorder record says {byteorder!r}", path=path)
        pkl_info = by_name[prefix + "data.pkl"]
        if pkl_info.file_size > MAX_PICKLE_BYTES:
            raise CorruptFileError(f"data.pkl claims {pkl_info.file_size} bytes (limit {MAX_PICKLE_BYTES})", path=path)
        if pkl_info.compress_type == zipfile.ZIP_STORED:  # walk it in place: no copy
            pkl_buf, pkl_pos = mm, check_member(mm, pkl_info, path)
        else:
            pkl_buf, pkl_pos = _member(zf, mm, pkl_info, path), 0
        refs: dict[str, Any] = {}
        inert: set[str] = set()

        def persistent_load(pid: Any) -> Any:
            ref = storage_ref(pid, legacy=False)
            prev = refs.setdefault(ref.key, ref)
            if (
                prev.dtype != ref.dtype
                and prev.numel * dtypes.lookup(prev.dtype).itemsize != ref.numel * dtypes.lookup(ref.dtype).itemsize
            ):
                raise CorruptFileError(f"storage {ref.key!r} is declared twice with different sizes", path=path)
            return ref

        root, _ = unpickler.load(
            pkl_buf,
            pkl_pos,
            end=pkl_pos + pkl_info.file_size,
            persistent_load=persistent_load,
            torchscript=torchscript,
            where=f"{path}: data.pkl",
            inert=inert,
        )

        storages: dict[str, StorageInfo] = {}
        for k, ref in refs.items():
            member = f"{prefix}data/{k}"
            info = by_name.get(member)
            if info is None:
                raise CorruptFileError(f"storage record {member!r} is missing from the archive", path=path)
            need = ref.numel * dtypes.lookup(ref.dtype).itemsize
            if info.file_size < need:
                raise CorruptFileError(
                    f"storage {member!r} declares {need} bytes but its record holds {info.file_size}", path=path
                )
            stored = info.compress_type == zipfile.ZIP_STORED
            off = check_member(mm, info, path)
            bs = ByteSource(
                path=path, offset=off, nbytes=info.file_size, member=member, compressed=not stored,
                decoder=None if stored else Inflate(member),
            )  # fmt: skip
            storages[k] = StorageInfo(key=k, dtype=ref.dtype, numel=ref.numel, location=ref.location, source=bs)

    fmt = "torchscript" if torchscript else NAME
    meta: dict[str, Any] = {"archive_prefix": prefix.rstrip("/"), "byteorder": byteorder}
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


def _small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> bytes:
    if info.file_size > 64:
        raise CorruptFileError(f"{info.filename} is larger than expected", path=path)
    try:
        return zf.read(info)
    except ZIP_ERRORS as e:
        raise CorruptFileError(f"cannot read {info.filename} ({type(e).__name__}: {e})", path=path) from None


def _member(zf: zipfile.ZipFile, mm: Any, info: zipfile.ZipInfo, path: str) -> Any:
    off = check_member(mm, info, path)
    if info.compress_type == zipfile.ZIP_STORED:
        return mm[off : off + info.file_size]
    if info.file_size > MAX_COMPRESSED_PICKLE:
        raise CorruptFileError(
            f"{info.filename} is compressed and claims {info.file_size} bytes; ckptool inflates compressed "
            f"pickles up to {MAX_COMPRESSED_PICKLE >> 20} MB (torch itself never compresses them)",
            path=path,
        )
    try:
        with zf.open(info) as fh:
            data = fh.read(MAX_COMPRESSED_PICKLE + 1)
    except ZIP_ERRORS as e:
        raise CorruptFileError(f"cannot read {info.filename} ({type(e).__name__}: {e})", path=path) from None
    if len(data) > MAX_COMPRESSED_PICKLE:
        raise CorruptFileError(f"{info.filename} inflates past {MAX_COMPRESSED_PICKLE} bytes", path=path)
    return data


# --------------------------------------------------------------------------------------------
# scan: every member's pickles (by name or by content), the archive's rules, the CRCs, then the values
# --------------------------------------------------------------------------------------------
def scan(ctx: ScanContext) -> None:
    ctx.set_format(NAME)
    zf = open_zip(ctx.src)
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        ctx.torchscript = any("/code/" in f"/{n}" or n.endswith("constants.pkl") for n in names)
        if ctx.torchscript:
            ctx.set_format("torchscript")
            ctx.note(
                "TorchScript archive: torch.jit.load compiles and runs its code/ folder (TorchScript, not "
                "Python); __torch__.* globals name its classes"
            )
        for kind, message, where in findings(ctx.mm, zf, infos):
            ctx.find(kind, message, where)
        for info in infos:
            if info.filename.endswith("/"):  # (ZipInfo.is_dir fails on an empty name)
                continue
            try:
                _scan_member(ctx, zf, info)
            except ZIP_ERRORS as e:
                ctx.find("zip-corrupt", f"cannot read member ({type(e).__name__}: {e})", info.filename)
            except CorruptFileError as e:
                ctx.find("zip-corrupt", e.message, info.filename)
    ctx.values_pass()


def _scan_member(ctx: ScanContext, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Walk a member that is a pickle by name or by its first bytes, whatever it is called; check its CRC
    (storage records only when values are read)."""
    stored = info.compress_type == zipfile.ZIP_STORED
    name = info.filename
    is_storage = "/data/" in f"/{name}" and not name.endswith(".pkl")
    pkl = name.endswith(".pkl")
    magic = unpickler.PICKLE_MAGIC
    if stored:
        off = check_member(ctx.mm, info, ctx.path)
        end = off + info.compress_size
        if pkl or bytes(ctx.mm[off : off + 2]) in magic:
            ctx.walk_stream(ctx.mm, off, end, name, 0, probe=not pkl)
        if ctx.values or not is_storage:
            _check_crc(ctx, info, off, end)
        return
    check_member(ctx.mm, info, ctx.path)
    with zf.open(info) as fh:
        head = fh.read(2)
    if pkl or head in magic:
        data = _member(zf, ctx.mm, info, ctx.path)  # bounded; zipfile checks the CRC
        ctx.walk_stream(data, 0, len(data), name, None, probe=not pkl)
        return
    if ctx.values or not is_storage:
        try:
            with zf.open(info) as fh:
                while fh.read(CHUNK):
                    pass
        except zipfile.BadZipFile as e:
            ctx.find("zip-crc", str(e), name)


def _check_crc(ctx: ScanContext, info: zipfile.ZipInfo, off: int, end: int) -> None:
    crc = 0
    mv = memoryview(bytearray(CHUNK))
    pos, stop = off, min(end, ctx.size)
    while pos < stop:
        k = min(CHUNK, stop - pos)
        ctx.src.read_into(pos, mv[:k])
        crc = zlib.crc32(mv[:k], crc)
        pos += k
    if crc != info.CRC:
        ctx.find(
            "zip-crc",
            f"CRC-32 is {crc:08x} but the directory says {info.CRC:08x}: the record was modified or damaged",
            info.filename,
        )
