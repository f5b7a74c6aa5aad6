"""torch zip archives (``torch.save`` since 1.6) and TorchScript archives, header-only.

Reads the zip central directory, ``<prefix>/data.pkl`` (through the restricted unpickler) and
``<prefix>/byteorder``. Tensor bytes are located (member, absolute file offset) but not read.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from typing import Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo
from ..errors import CorruptFileError, UnsupportedFormatError
from . import unpickler
from ._torch_tree import build_checkpoint, inert_notes, storage_ref

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


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CorruptFileError(f"not a valid zip archive ({e}); the file may be truncated", path=path) from None
    except ZIP_ERRORS as e:
        raise CorruptFileError(f"cannot read the zip directory ({type(e).__name__}: {e})", path=path) from None


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


def read(path: str, mm: Any, *, key: str | None = None) -> Checkpoint:
    zf = _open_zip(path)
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        by_name = {i.filename: i for i in infos}
        if len(by_name) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise CorruptFileError(
                f"zip archive holds two members named {dup!r}: which one a loader reads is ambiguous",
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
            src = ByteSource(path=path, offset=off, nbytes=info.file_size, member=member, compressed=not stored)
            storages[k] = StorageInfo(key=k, dtype=ref.dtype, numel=ref.numel, location=ref.location, source=src)

    fmt = "torchscript" if torchscript else "torch-zip"
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
