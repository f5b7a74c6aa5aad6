"""torch legacy files (``torch.save`` before 1.6; torchvision's 2017 VGG files), header-only.

Layout: pickles of the magic number, protocol version, sys_info, the object (with storage persistent ids),
the list of storage keys; then for each key in that list's order an 8-byte little-endian element count
followed by the raw bytes. Storage offsets are computed by walking the counts, never by reading data.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo
from ..errors import CorruptFileError, UnsupportedFormatError
from ..sources import Source, prefetch
from . import torch_tar, unpickler
from ._torch_tree import build_checkpoint, inert_notes, storage_ref

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "torch-legacy"
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
LEGACY_HEAD = b"\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little")  # LONG1 of the magic number (protocol 2+)
LEGACY_TEXT_HEAD = b"L119547037146038801333356L\n"  # the same as a protocol 0/1 LONG (pickle_protocol=0 or 1)


def detect(head: bytes, size: int) -> bool:
    return (
        (len(head) >= 14 and head[0] == 0x80 and head[2:14] == LEGACY_HEAD)
        or head.startswith(LEGACY_HEAD)
        or head.startswith(LEGACY_TEXT_HEAD)
    )


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    path, mm = src.name, src.buffer()
    tar = torch_tar.view(src)  # torch's first attempt: the tar format
    if tar.refusal is not None:
        raise CorruptFileError(tar.refusal, path=path)
    if tar.members:  # a tar checkpoint torch would read (whatever its first bytes also are)
        return torch_tar.read_members(src, tar, key=key)
    where = f"{path}: legacy header"
    magic, pos = unpickler.load(mm, 0, where=where)
    if magic != MAGIC_NUMBER:
        raise UnsupportedFormatError("a pickle file, but not one written by torch.save", path=path)
    proto, pos = unpickler.load(mm, pos, where=where)
    if proto != PROTOCOL_VERSION:
        raise CorruptFileError(f"legacy protocol version {proto!r}, expected {PROTOCOL_VERSION}", path=path)
    sys_info, pos = unpickler.load(mm, pos, where=where)
    if not isinstance(sys_info, dict):
        raise CorruptFileError("legacy sys_info is not a dict", path=path)
    # torch ignores little_endian: sizes and data are read little-endian whatever sys_info says
    little_flag = sys_info.get("little_endian", True)
    type_sizes = sys_info.get("type_sizes", {})
    refs: dict[str, Any] = {}
    inert: set[str] = set()

    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, str):  # pickle_protocol 0/1 writes persistent ids as text: the tuple's repr
            raise UnsupportedFormatError(
                "a legacy file saved with pickle_protocol 0: its storage ids are text reprs, which torch.load "
                "cannot load either (AssertionError: saved_id must be a tuple); `ckptool scan` lists its globals",
                path=path,
            )
        ref = storage_ref(pid, legacy=True)
        root_key = ref.view_of or ref.key
        if ref.view_of is not None:
            base_numel = pid[4]
            refs.setdefault(root_key, storage_ref((*pid[:5], None), legacy=True))
            if ref.view_offset < 0 or ref.view_offset + ref.numel > base_numel:
                raise CorruptFileError(f"storage view {ref.key!r} lies outside its storage", path=path)
        else:
            refs.setdefault(root_key, ref)
        return ref

    root, pos = unpickler.load(mm, pos, persistent_load=persistent_load, where=f"{path}: object pickle", inert=inert)
    keys, pos = unpickler.load(mm, pos, where=f"{path}: storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptFileError("legacy storage key list is not a list of strings", path=path)
    if set(keys) != set(refs):
        missing = sorted(set(refs) - set(keys))[:3]
        raise CorruptFileError(f"storage key list does not match the object's storages (missing {missing})", path=path)

    storages: dict[str, StorageInfo] = {}
    size = len(mm)
    counts, at = [], pos  # where each storage's element count sits, if the pickle tells the truth
    for k in keys:
        counts.append((at, 8))
        at += 8 + refs[k].numel * dtypes.lookup(refs[k].dtype).itemsize
    prefetch(src, counts)  # one round trip for a remote file
    for k in keys:
        ref = refs[k]
        item = dtypes.lookup(ref.dtype).itemsize
        if pos + 8 > size:
            raise CorruptFileError(f"file ends before storage {k!r} (truncated?)", path=path)
        (count,) = struct.unpack("<q", mm[pos : pos + 8])
        if count != ref.numel:
            raise CorruptFileError(
                f"storage {k!r} declares {ref.numel} elements but its record says {count}", path=path
            )
        start = pos + 8
        nbytes = count * item
        if start + nbytes > size:
            raise CorruptFileError(
                f"storage {k!r} needs {nbytes} bytes at offset {start} but the file ends at {size} (truncated?)",
                path=path,
            )
        storages[k] = StorageInfo(k, ref.dtype, ref.numel, ref.location, ByteSource(path, start, nbytes))
        pos = start + nbytes

    meta: dict[str, Any] = {"type_sizes": type_sizes, "byteorder": "little"}
    ck = build_checkpoint(root, storages, path=path, fmt="torch-legacy", key=key, metadata=meta)
    ck.byteorder = "little"
    if little_flag is not True:
        ck.notes.append(
            f"sys_info says little_endian: {little_flag!r}; torch ignores the flag and reads sizes and data "
            "little-endian, and so does ckptool"
        )
    ck.notes.extend(inert_notes(inert))
    if pos < size:
        ck.notes.append(f"{size - pos} bytes after the last storage")
    locs = sorted({s.location for s in storages.values()} - {"cpu"})
    if locs:
        ck.metadata["storage_locations"] = locs
    return ck


# --------------------------------------------------------------------------------------------
# scan: the five stacked pickles, any pickle where the storage data should start or after the last storage
# --------------------------------------------------------------------------------------------
PICKLE_NAMES = ("magic number", "protocol version", "sys_info", "object", "storage keys")


def scan(ctx: ScanContext) -> None:
    tar = torch_tar.view(ctx.src)
    if tar.members:  # torch reads it as a tar checkpoint: those are the pickles it runs
        torch_tar.scan_members(ctx, tar)
        return
    ctx.set_format(NAME)
    mm, size, pos = ctx.mm, ctx.size, 0
    for i, label in enumerate(PICKLE_NAMES):
        where = f"pickle {i + 1} ({label})"
        w = unpickler.collect_globals(mm, pos, size)
        ctx.record_walk(w, where, 0, pos)
        if not w.complete:
            ctx.find("invalid-pickle", f"not a valid pickle at byte {w.end}: {w.error}", where)
            return
        pos = w.end
    k = len(PICKLE_NAMES)
    while pos < size and bytes(mm[pos : pos + 2]) in unpickler.PICKLE_MAGIC:
        w = unpickler.collect_globals(mm, pos, size)
        if not w.complete:
            break
        k += 1
        where = f"pickle {k} (after the storage keys)"
        ctx.record_walk(w, where, 0, pos)
        ctx.find("hidden-pickle", "an extra pickle sits where the storage data should start", where)
        pos = w.end
    ck = ctx.open_reader()
    if ck is None:
        return
    with ck:
        # every storage of the file (an optimizer's too), not only the located state_dict's
        ends = [st.source.offset + st.source.nbytes for st in ck.storages.values() if st.source is not None]
        last = max(ends, default=pos)
        if last < size:
            ctx.walk_stream(mm, last, size, f"{size - last} bytes after the last storage", 0, probe=True)
            if not ctx.walked_at(last):
                ctx.find("trailing-data", f"{size - last} bytes follow the last storage")
        ctx.check_values(ck)
