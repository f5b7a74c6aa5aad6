"""torch.distributed.checkpoint (DCP) folders, read torch-free: ``.metadata`` plus ``__<rank>_<n>.distcp``.

**The bytes** (torch 2.x ``FileSystemWriter``, ``_write_item`` in ``torch/distributed/checkpoint/filesystem.py``):

- ``.metadata`` is a pickle of ``torch.distributed.checkpoint.metadata.Metadata``: ``state_dict_metadata``
  maps each flattened name (``model.embed.weight``) to a ``TensorStorageMetadata`` (``properties.dtype``,
  the global ``size``, and ``chunks``: ``ChunkStorageMetadata(offsets, sizes)`` boxes in the global tensor)
  or a ``BytesStorageMetadata`` (a non-tensor value); ``storage_data`` maps a ``MetadataIndex(fqn, offset)``
  to a ``_StorageInfo(relative_path, offset, length)``; ``planner_data`` maps a name to its path of keys in
  the original nested state (``('model', 'embed.weight')``).
- Every item in a ``.distcp`` file is a complete ``torch.save`` zip archive at its offset (a tensor chunk,
  saved whole; or, for a non-tensor, ``torch.save(value)``), written back to back.

**Read** (:func:`read_location`): ``.metadata`` goes through the restricted unpickler with the DCP classes
allowed *for that one read* (:func:`~ckptool.formats.unpickler.extend_allowlist`, recorded as inert
:class:`~ckptool.formats.unpickler.Opaque` values, never imported); the chunks' boxes must tile each tensor
exactly. Each tensor's bytes come from :class:`Assemble`, the :class:`~ckptool.checkpoint.Decoder` that
streams the whole tensor in C order: each chunk is a :class:`~ckptool.sources.slice.SliceSource` of its
``.distcp`` read by the torch zip reader; row-sharded tensors (``Shard(0)``, FSDP) are the chunks' bytes one
after another, other layouts (``Shard(1)``, 2-D) are gathered through a bounded slab of rows. Non-tensor
entries are read (restricted, like any torch file) and summarised as extras.

**Rules** (:func:`findings`, one generator: the reader raises the first, ``scan`` lists them all).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ..errors import CkptError, CorruptFileError, UnsafeFileError, UnsupportedFormatError
from ..sources import Location, Source, open_location
from ..sources.slice import SliceSource
from . import torch_zip, unpickler
from ._torch_tree import build_checkpoint, plural
from .unpickler import DTypeOrStorage, Opaque, PickledDict, StorageRef, TensorRecord

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "dcp"
METADATA = ".metadata"
SUFFIX = ".distcp"
MAX_METADATA = 1 << 30
MAX_BYTES_ITEMS = 1000  # non-tensor entries read for the summary; the rest are listed unread
SLAB = 16 << 20  # bytes of rows gathered at once for a tensor whose chunks are not whole rows
Finding = tuple[str, str, str | None]  # (kind, message, where)

_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed._shard.checkpoint.metadata")
_FS_MODULES = ("torch.distributed.checkpoint.filesystem", "torch.distributed._shard.checkpoint.filesystem")
_CLASSES = (
    "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "TensorProperties",
    "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
)  # fmt: skip
_LAYOUTS = frozenset({"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch._mkldnn"})


class Record(Opaque):
    """An inert DCP dataclass: its kind, and the fields BUILD gave it (hashable by identity: ``MetadataIndex``
    is a dict key in ``storage_data``)."""

    __hash__ = object.__hash__  # type: ignore[assignment]


def _record(kind: str) -> Callable[..., Record]:
    def make(*args: Any) -> Record:
        value = args[0] if len(args) == 1 and isinstance(args[0], (int, str)) else None  # an Enum's value
        return Record(kind, value=value)

    return make


def _get_layout(name: Any = None, *_: Any) -> str:
    """``torch.serialization._get_layout('torch.strided')``: the layout's name (torch's own weights_only
    unpickler allows it too); nothing is looked up."""
    if isinstance(name, str) and name in _LAYOUTS:
        return name
    raise CorruptFileError(f"_get_layout of {str(name)[:40]!r}, which is not a torch layout")


# The globals a DCP ``.metadata`` pickle names, recorded as data in that read only (never imported or called).
ALLOWLIST: dict[str, Callable[..., Any] | None] = {
    **{f"{m}.{c}": _record(c) for m in _MODULES for c in _CLASSES},
    **{f"{m}._StorageInfo": _record("_StorageInfo") for m in _FS_MODULES},
    "torch.serialization._get_layout": _get_layout,
    # StorageMeta.checkpoint_id is the folder torch wrote to: a path, recorded as its string (pure path arithmetic)
    **{k: v for k, v in unpickler.INERT.items() if k.startswith("pathlib.")},
}


def detect(head: bytes, size: int) -> bool:
    """A ``.metadata`` file: a pickle whose first global is a DCP metadata class."""
    return head[:1] == b"\x80" and any(m.encode() in head[:256] for m in _MODULES)


# -- where the files are ---------------------------------------------------------------------------------
class Folder:
    """The DCP folder, through its :class:`~ckptool.sources.Location`: a ``relative_path`` from ``.metadata``
    resolves inside it (never outside: no ``..``, no absolute name, no symlink out) and opens as a Source."""

    def __init__(self, where: str | os.PathLike[str] | Location):
        self.loc = open_location(where)
        self.path = self.loc.folder
        self.metadata = self.loc.resolve(METADATA)
        self.open: Callable[[str], Source] = self.loc.open_path

    def resolve(self, rel: Any) -> str:
        if not isinstance(rel, str) or not rel:
            raise UnsafeFileError(f"storage file name {str(rel)[:60]!r} is not a file name", path=self.metadata)
        try:
            return self.loc.resolve(rel)
        except UnsafeFileError as e:
            raise UnsafeFileError(f"storage file: {e.message}", path=self.metadata) from None


def detect_folder(loc: Location) -> bool:
    """A folder holding a ``.metadata`` that is a DCP metadata pickle."""
    try:
        if not loc.exists(METADATA):
            return False
        src = loc.open(METADATA)
        try:
            return detect(src.read(0, min(256, src.size)), src.size)
        finally:
            src.close()
    except CkptError:
        return False


def member_files(where: str | os.PathLike[str] | Location) -> list[str]:
    """The storage files of a DCP folder: a folder scan reads them through ``.metadata`` (:func:`scan`), not as
    files of their own (a ``.distcp`` is archives back to back, no file a reader opens alone). Listed through
    the folder's Location, as every other read of the folder is."""
    loc = open_location(where)
    return [loc.resolve(n) for n in loc.names() if n.endswith(".distcp")]


# -- the metadata, as data ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One box of a tensor and where its ``torch.save`` archive is."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str | None = None  # relative_path as written; None: no storage_data entry
    offset: int = 0
    length: int = 0
    transforms: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass
class Entry:
    """A flattened state_dict entry: a tensor (dtype, global shape, chunks) or a non-tensor (one item)."""

    fqn: str
    dtype: str | None  # None: a non-tensor (BytesStorageMetadata)
    shape: tuple[int, ...] = ()
    chunks: list[Chunk] = field(default_factory=list)
    requires_grad: bool = False


@dataclass
class Layout:
    """What ``.metadata`` says, checked for shape: the entries, their key paths and the writer's version."""

    entries: dict[str, Entry]
    paths: dict[str, tuple[Any, ...]]  # planner_data: fqn -> keys in the nested state
    version: str | None
    files: list[str]  # relative paths named, in first-use order


def _fields(obj: Any, kind: str, where: str) -> dict[str, Any]:
    if not isinstance(obj, Opaque) or obj.kind != kind:
        got = obj.kind if isinstance(obj, Opaque) else type(obj).__name__
        raise CorruptFileError(f".metadata: expected a {kind}, found {got}", path=where)
    return obj.fields


def _ints(x: Any, what: str, where: str) -> tuple[int, ...]:
    if isinstance(x, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x):
        return tuple(x)
    raise CorruptFileError(f".metadata: {what} is not a tuple of non-negative ints", path=where)


def _dtype(props: Any, fqn: str, where: str) -> tuple[str, bool]:
    if not isinstance(props, Opaque) or props.kind != "TensorProperties":
        raise CorruptFileError(f".metadata: {fqn!r} has no TensorProperties", path=where)
    state = props.state
    dt = state[0] if isinstance(state, tuple) and state else props.fields.get("dtype")
    if not isinstance(dt, DTypeOrStorage):
        raise CorruptFileError(f".metadata: {fqn!r} has no torch dtype", path=where)
    try:
        name = dtypes.lookup(dt.name).name
    except CkptError:
        raise CorruptFileError(
            f".metadata: {fqn!r} has dtype {dt.qualname}, which ckptool does not know", path=where
        ) from None
    rg = state[2] if isinstance(state, tuple) and len(state) > 2 else props.fields.get("requires_grad", False)
    return name, bool(rg)


def parse(root: Any, where: str) -> Layout:
    """The Layout of an unpickled ``.metadata`` (Records and dicts), or CorruptFileError naming what is wrong."""
    md = _fields(root, "Metadata", where)
    sdm = md.get("state_dict_metadata")
    storage = md.get("storage_data")
    if not isinstance(sdm, dict):
        raise CorruptFileError(".metadata: state_dict_metadata is not a dict", path=where)
    if not isinstance(storage, dict):
        raise CorruptFileError(
            ".metadata: storage_data is not a dict (not written by torch's FileSystemWriter?)", path=where
        )
    entries: dict[str, Entry] = {}
    for fqn, item in sdm.items():
        if not isinstance(fqn, str):
            raise CorruptFileError(f".metadata: entry name {fqn!r} is not a string", path=where)
        kind = item.kind if isinstance(item, Opaque) else type(item).__name__
        if kind == "BytesStorageMetadata":
            entries[fqn] = Entry(fqn, None)
            continue
        f = _fields(item, "TensorStorageMetadata", where)
        dt, rg = _dtype(f.get("properties"), fqn, where)
        shape = _ints(f.get("size"), f"the size of {fqn!r}", where)
        chunks = f.get("chunks")
        if not isinstance(chunks, list):
            raise CorruptFileError(f".metadata: {fqn!r} has no list of chunks", path=where)
        boxes = []
        for c in chunks:
            cf = _fields(c, "ChunkStorageMetadata", where)
            boxes.append(
                Chunk(_ints(cf.get("offsets"), "chunk offsets", where), _ints(cf.get("sizes"), "chunk sizes", where))
            )
        entries[fqn] = Entry(fqn, dt, shape, boxes, rg)
    files: dict[str, None] = {}
    located: dict[tuple[str, tuple[int, ...] | None], Chunk] = {}
    for key, info in storage.items():
        k = _fields(key, "MetadataIndex", where)
        s = _fields(info, "_StorageInfo", where)
        fqn, off = k.get("fqn"), k.get("offset")
        rel, offset, length = s.get("relative_path"), s.get("offset"), s.get("length")
        if not isinstance(fqn, str) or not isinstance(rel, str):
            raise CorruptFileError(".metadata: a storage_data entry has no name or no file", path=where)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (offset, length)):
            raise CorruptFileError(f".metadata: {fqn!r} has a bad offset or length in {rel!r}", path=where)
        tds = s.get("transform_descriptors") or ()
        box = None if off is None else _ints(off, f"the chunk offset of {fqn!r}", where)
        assert isinstance(offset, int) and isinstance(length, int)
        located[(fqn, box)] = Chunk(box or (), (), rel, offset, length, tuple(str(t) for t in tds))
        files.setdefault(rel)
    for e in entries.values():
        if e.dtype is None:
            hit = located.get((e.fqn, None))
            e.chunks = [Chunk((), (), hit.file, hit.offset, hit.length, hit.transforms)] if hit else [Chunk((), ())]
            continue
        placed = []
        for c in e.chunks:
            hit = located.get((e.fqn, c.offsets))
            placed.append(
                Chunk(c.offsets, c.sizes, *(() if hit is None else (hit.file, hit.offset, hit.length, hit.transforms)))
            )
        e.chunks = placed
    paths: dict[str, tuple[Any, ...]] = {}
    planner = md.get("planner_data")
    if isinstance(planner, dict):
        for fqn, keys in planner.items():
            if (
                isinstance(fqn, str)
                and isinstance(keys, tuple)
                and keys
                and all(isinstance(x, (str, int)) for x in keys)
            ):
                paths[fqn] = keys
    version = md.get("version")
    return Layout(entries, paths, version if isinstance(version, str) else None, list(files))


def load_layout(folder: Folder, src: Source | None = None) -> Layout:
    """Read and parse ``.metadata`` (restricted: the DCP classes are data in this read, nothing else is allowed)."""
    own = src is None
    src = src or folder.open(folder.metadata)
    try:
        if src.size > MAX_METADATA:
            raise CorruptFileError(f".metadata is {src.size} bytes (limit {MAX_METADATA})", path=src.name)
        with unpickler.extend_allowlist(ALLOWLIST):
            root, end = unpickler.load(src.buffer(), 0, end=src.size, where=f"{src.name}", inert=set())
        if end != src.size:
            raise CorruptFileError(f"{src.size - end} bytes follow the metadata pickle", path=src.name)
        return parse(root, src.name)
    finally:
        if own:
            src.close()


# -- the rules ------------------------------------------------------------------------------------------------
def tensor_findings(e: Entry) -> Iterator[Finding]:
    """The chunks of one tensor tile its shape exactly: inside it, no two overlapping, no gap, and each has a
    storage_data entry."""
    if e.dtype is None:
        return
    n = len(e.shape)
    total = 0
    for c in e.chunks:
        if len(c.offsets) != n or len(c.sizes) != n:
            yield ("dcp-chunk", f"a chunk at {list(c.offsets)} has {len(c.sizes)} dims, the tensor {n}", e.fqn)
            return
        if any(o + s > d for o, s, d in zip(c.offsets, c.sizes, e.shape, strict=True)):
            yield (
                "dcp-chunk",
                f"chunk {list(c.offsets)} + {list(c.sizes)} reaches outside the tensor's shape {list(e.shape)}",
                e.fqn,
            )
            return
        if c.file is None and c.numel:
            yield (
                "dcp-missing-chunk",
                f"chunk at {list(c.offsets)} has no storage_data entry: its values are nowhere",
                e.fqn,
            )
        total += c.numel
    boxes = sorted((c for c in e.chunks if c.numel), key=lambda c: c.offsets)
    active: list[Chunk] = []
    for c in boxes:  # sweep along dim 0: only boxes still open there can overlap
        active = [a for a in active if a.offsets[0] + a.sizes[0] > c.offsets[0]] if n else active
        for a in active:
            if all(
                ao < co + cs and co < ao + as_
                for ao, as_, co, cs in zip(a.offsets, a.sizes, c.offsets, c.sizes, strict=True)
            ):
                yield (
                    "dcp-overlap",
                    f"chunks at {list(a.offsets)} and {list(c.offsets)} overlap: which one holds the values is ambiguous",
                    e.fqn,
                )
                return
        active.append(c)
    numel = math.prod(e.shape)
    if total != numel:
        yield ("dcp-gap", f"the chunks cover {total} of its {numel} elements: some values are missing", e.fqn)


def findings(folder: Folder, layout: Layout) -> Iterator[Finding]:
    """Every rule but the embedded archives': coverage, missing / unsafe files, items outside their file or
    overlapping another, transforms ckptool cannot decode."""
    sizes: dict[str, int | None] = {}
    for rel in layout.files:
        try:
            full = folder.resolve(rel)
        except UnsafeFileError as err:
            yield ("dcp-path", err.message, rel)
            sizes[rel] = None
            continue
        sizes[rel] = None
        if folder.loc.exists(rel):
            try:
                f = folder.open(full)
                sizes[rel] = f.size
                f.close()
            except CkptError:
                pass
        if sizes[rel] is None:
            yield (
                "dcp-missing-file",
                f"named by .metadata but not in the folder: {plural(_count(layout, rel), 'item')} have no bytes",
                rel,
            )
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for ent in layout.entries.values():
        yield from tensor_findings(ent)
        for c in ent.chunks:
            if c.file is None:
                if ent.dtype is None:
                    yield ("dcp-missing-chunk", "non-tensor entry has no storage_data entry", ent.fqn)
                continue
            if c.transforms:
                yield (
                    "dcp-transform",
                    f"stored through {', '.join(c.transforms)}: ckptool reads only untransformed torch.save items",
                    ent.fqn,
                )
            size = sizes.get(c.file)
            if size is not None and c.offset + c.length > size:
                yield (
                    "dcp-chunk-bounds",
                    f"item [{c.offset}, {c.offset + c.length}) runs past the end of {c.file} ({size} bytes)",
                    ent.fqn,
                )
            spans.setdefault(c.file, []).append((c.offset, c.offset + c.length, ent.fqn))
    for rel, items in spans.items():
        items.sort()
        for (a0, a1, an), (b0, _b1, bn) in itertools.pairwise(items):
            if b0 < a1:
                yield ("dcp-item-overlap", f"items of {an!r} [{a0}, {a1}) and {bn!r} (at {b0}) share bytes", rel)


def _count(layout: Layout, rel: str) -> int:
    return sum(c.file == rel for e in layout.entries.values() for c in e.chunks)


FATAL = frozenset(
    {
        "dcp-chunk",
        "dcp-missing-chunk",
        "dcp-overlap",
        "dcp-gap",
        "dcp-path",
        "dcp-missing-file",
        "dcp-chunk-bounds",
        "dcp-item-overlap",
    }
)


# -- reading a chunk and assembling a tensor -------------------------------------------------------------
class Files:
    """The open ``.distcp`` Sources of one Checkpoint (bound to :meth:`Checkpoint.source`, which caches and
    closes them)."""

    def __init__(self, folder: Folder):
        self.folder = folder
        self.open: Callable[[str], Source] = folder.open


def open_item(files: Files, c: Chunk, fqn: str) -> Checkpoint:
    """The embedded ``torch.save`` archive of one item, read by the torch zip reader (restricted)."""
    if c.file is None:
        raise CorruptFileError(f"{fqn!r}: a chunk has no storage_data entry", path=files.folder.metadata)
    if c.transforms:
        raise UnsupportedFormatError(
            f"{fqn!r} is stored through {', '.join(c.transforms)} (a DCP storage extension)",
            path=files.folder.path,
            hint="re-save without _extensions, or convert with torch.distributed.checkpoint.format_utils",
        )
    full = files.folder.resolve(c.file)
    parent = files.open(full)
    sl = SliceSource(parent, c.offset, c.length, name=f"{full}@{c.offset}")
    try:
        ck = torch_zip.read(sl)
    except CkptError as e:
        raise CorruptFileError(
            f"the item of {fqn!r} at byte {c.offset} is not a clean torch.save archive: {e.message}", path=full
        ) from None
    ck._sources[sl.name] = sl
    return ck


def chunk_tensor(files: Files, c: Chunk, e: Entry) -> tuple[Checkpoint, TensorInfo]:
    """A tensor chunk's Checkpoint and its one tensor, checked against what ``.metadata`` says of it."""
    ck = open_item(files, c, e.fqn)
    where = f"{files.folder.resolve(c.file or '')}@{c.offset}"
    if len(ck.tensors) != 1 or ck.state_dict_key is not None:
        ck.close()
        raise CorruptFileError(f"the chunk of {e.fqn!r} holds {plural(len(ck.tensors), 'tensor')}, not one", path=where)
    t = ck.tensors[0]
    if t.dtype != e.dtype or t.shape != c.sizes:
        ck.close()
        raise CorruptFileError(
            f"the chunk of {e.fqn!r} at {list(c.offsets)} is {list(t.shape)} {t.dtype}; .metadata says "
            f"{list(c.sizes)} {e.dtype}",
            path=where,
        )
    return ck, t


@dataclass(frozen=True, eq=False)
class Assemble:
    """The Decoder of a DCP tensor: its bytes in C order, gathered from its chunks.

    Row-sharded chunks (every chunk spans all but the first dim: ``Shard(0)``, FSDP, replicated) are read
    one after another, each through its own archive's byte path. Any other tiling (``Shard(1)``, 2-D) is
    gathered through a slab of whole rows of at most :data:`SLAB` bytes (at least one row): memory is one
    slab plus the rows of one chunk that fall in it, never the tensor.
    """

    entry: Entry
    files: Files

    @property
    def paths(self) -> tuple[str, ...]:
        """The files the tensor's chunks are in (resolved, first-use order): more than one for a tensor that
        several ranks wrote. :meth:`Checkpoint.file_of` names them."""
        seen = {self.files.folder.resolve(c.file): None for c in self.entry.chunks if c.numel and c.file is not None}
        return tuple(seen)

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        e = self.entry
        size = dtypes.lookup(e.dtype or "uint8").itemsize
        shape = e.shape
        rowbytes = math.prod(shape[1:]) * size if shape else size
        boxes = sorted((c for c in e.chunks if c.numel), key=lambda c: c.offsets)
        rowwise = all(c.offsets[1:] == (0,) * (len(shape) - 1) and c.sizes[1:] == shape[1:] for c in boxes)
        if rowwise:
            for c in boxes:
                lo = (c.offsets[0] if shape else 0) * rowbytes
                hi = lo + c.numel * size
                if hi <= start or lo >= stop:
                    continue
                ck, t = chunk_tensor(self.files, c, e)
                with ck:
                    yield from _clip(ck.iter_chunks(t, buf=buf), lo, start, stop)
            return
        yield from self._slabs(boxes, size, rowbytes, start, stop)

    def _slabs(
        self, boxes: list[Chunk], size: int, rowbytes: int, start: int, stop: int
    ) -> Iterator[bytes | memoryview]:
        import numpy as np

        e = self.entry
        void = np.dtype(f"V{size}")
        band = max(1, SLAB // max(rowbytes, 1))
        open_: dict[int, tuple[Checkpoint, TensorInfo]] = {}
        try:
            for r0 in range(0, e.shape[0], band):
                r1 = min(e.shape[0], r0 + band)
                if r1 * rowbytes <= start or r0 * rowbytes >= stop:
                    continue
                slab = np.zeros((r1 - r0, *e.shape[1:]), dtype=void)
                for i, c in enumerate(boxes):
                    a, b = max(r0, c.offsets[0]), min(r1, c.offsets[0] + c.sizes[0])
                    if a >= b:
                        continue
                    if i not in open_:
                        open_[i] = chunk_tensor(self.files, c, e)
                    ck, t = open_[i]
                    crow = math.prod(c.sizes[1:]) * size
                    part = _rows(ck, t, (a - c.offsets[0]) * crow, (b - c.offsets[0]) * crow)
                    box = (
                        slice(a - r0, b - r0),
                        *(slice(o, o + s) for o, s in zip(c.offsets[1:], c.sizes[1:], strict=True)),
                    )
                    slab[box] = np.frombuffer(part, dtype=void).reshape((b - a, *c.sizes[1:]))
                    if b == c.offsets[0] + c.sizes[0]:  # done with this chunk
                        open_.pop(i)[0].close()
                yield from _clip(iter([slab.reshape(-1).view(np.uint8).data]), r0 * rowbytes, start, stop)
        finally:
            for ck, _ in open_.values():
                ck.close()


def _rows(ck: Checkpoint, t: TensorInfo, lo: int, hi: int) -> bytes:
    """Bytes [lo, hi) of a chunk's C-order little-endian values (a contiguous range of its rows)."""
    if t.is_contiguous and ck.byteorder == "little" and t.storage is not None:
        base = t.storage_offset * t.itemsize
        return ck.storage_bytes(t.storage, base + lo, base + hi)
    return ck.read_bytes(t)[lo:hi]  # a strided or big-endian chunk: one chunk in memory


def _clip(parts: Iterator[bytes | memoryview], pos: int, start: int, stop: int) -> Iterator[bytes | memoryview]:
    """The parts of a stream starting at byte ``pos`` that fall in [start, stop)."""
    for p in parts:
        n = len(p)
        lo, hi = max(start - pos, 0), min(stop - pos, n)
        if lo < hi:
            yield p if (lo, hi) == (0, n) else memoryview(p)[lo:hi]
        pos += n
        if pos >= stop:
            return


# -- the Checkpoint -------------------------------------------------------------------------------------------
def read_location(
    where: str | os.PathLike[str] | Location, *, key: str | None = None, src: Source | None = None
) -> Checkpoint:
    """Read a DCP folder (or its ``.metadata``; a path, or a Location): tensors reassembled from their chunks,
    non-tensors as extras."""
    folder = Folder(where)
    layout = load_layout(folder, src)
    for kind, message, at in findings(folder, layout):
        if kind in FATAL:
            raise CorruptFileError(
                f"torch.distributed.checkpoint: {at + ': ' if at else ''}{message}",
                path=folder.path, hint="`ckptool scan` lists every problem",
            )  # fmt: skip
    files = Files(folder)
    storages: dict[str, StorageInfo] = {}
    root: PickledDict = PickledDict()
    notes: list[str] = []
    unread = 0
    read_items = 0
    for e in layout.entries.values():
        keys = layout.paths.get(e.fqn) or (e.fqn,)
        if e.dtype is None:
            if read_items < MAX_BYTES_ITEMS:
                read_items += 1
                value = _bytes_value(files, e, notes)
            else:
                unread += 1
                value = Opaque("not read")
            _place(root, keys, value, e.fqn, folder.metadata)
            continue
        numel = math.prod(e.shape)
        itemsize = dtypes.lookup(e.dtype).itemsize
        first = next((c for c in e.chunks if c.file is not None), None)
        bs = ByteSource(
            path=folder.resolve(first.file) if first and first.file else folder.metadata,
            offset=first.offset if first else 0, nbytes=numel * itemsize, decoder=Assemble(e, files),
        )  # fmt: skip
        storages[e.fqn] = StorageInfo(key=e.fqn, dtype=e.dtype, numel=numel, location="cpu", source=bs)
        stride = TensorInfo(e.fqn, e.dtype, e.shape).contiguous_stride
        rec = TensorRecord(StorageRef(e.fqn, e.dtype, numel, "cpu"), 0, e.shape, stride, e.dtype, e.requires_grad)
        _place(root, keys, rec, e.fqn, folder.metadata)
    if unread:
        notes.append(
            f"{plural(unread, 'more non-tensor entry', 'more non-tensor entries')} not read (limit {MAX_BYTES_ITEMS})"
        )
    sharded = sum(1 for e in layout.entries.values() if e.dtype is not None and sum(c.numel > 0 for c in e.chunks) > 1)
    meta: dict[str, Any] = {
        "dcp_version": layout.version, "files": layout.files,
        "chunks": sum(len(e.chunks) for e in layout.entries.values() if e.dtype is not None),
        "sharded_tensors": sharded,
    }  # fmt: skip
    ck = build_checkpoint(root, storages, path=folder.path, fmt=NAME, key=key, metadata=meta)
    ck.notes[:0] = [
        f"torch.distributed.checkpoint folder: {plural(len(layout.files), 'storage file')}, "
        f"{plural(sharded, 'tensor')} reassembled from chunks written by several ranks"
    ]
    ck.notes.extend(notes)
    ck.opener = folder.open
    ck.files = {folder.resolve(rel): rel for rel in layout.files}  # the shard column: which rank file(s) hold a tensor
    files.open = ck.source  # chunk files are opened (once) and closed with the Checkpoint
    return ck


def _place(root: PickledDict, keys: tuple[Any, ...], value: Any, fqn: str, where: str) -> None:
    cur: Any = root
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = PickledDict()
        if not isinstance(nxt, PickledDict):
            raise CorruptFileError(f".metadata: {fqn!r} is nested under a value, not a mapping", path=where)
        cur = nxt
    if keys[-1] in cur:
        raise CorruptFileError(f".metadata: {fqn!r} is listed twice", path=where)
    cur[keys[-1]] = value


def _bytes_value(files: Files, e: Entry, notes: list[str]) -> Any:
    """A non-tensor entry's value (its own torch.save archive, restricted), or an Opaque saying why not."""
    c = e.chunks[0]
    try:
        ck = open_item(files, c, e.fqn)
    except CkptError as err:
        notes.append(f"non-tensor entry {e.fqn!r} not read: {err.message}")
        return Opaque("not read")
    with ck:
        if ck.tensors:
            return Opaque(f"{plural(len(ck.tensors), 'tensor')}")
        return ck.root


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    """The registry's reader, for a ``.metadata`` file: the folder it is in."""
    return read_location(src.name, key=key, src=src)


# -- scan -------------------------------------------------------------------------------------------------------
def scan(ctx: ScanContext) -> None:
    """``.metadata`` walked with the DCP classes allowed (there only), the folder's rules, every item's own
    archive rules and pickles (the torch zip scan, on the item's slice), then the values reassembled."""
    ctx.set_format(NAME)
    with unpickler.extend_allowlist(ALLOWLIST):
        ctx.walk_stream(ctx.mm, 0, ctx.size, METADATA, 0)
    folder = Folder(ctx.path)
    try:
        layout = load_layout(folder, ctx.src)
    except CkptError as err:
        ctx.find("corrupt", f"the reader refuses it: {err.message}")
        return
    bad = 0
    for kind, message, where in findings(folder, layout):
        ctx.find(kind, message, where)
        bad += 1
    files = Files(folder)
    opened: dict[str, Source] = {}

    def opener(p: str) -> Source:
        if p not in opened:
            opened[p] = folder.open(p)
        return opened[p]

    files.open = opener
    try:
        for ent in layout.entries.values():
            for c in ent.chunks:
                if c.file is None or c.transforms:
                    continue
                try:
                    full = folder.resolve(c.file)
                    sl = SliceSource(opener(full), c.offset, c.length, name=f"{c.file}@{c.offset}")
                except CkptError:
                    continue  # already a finding (missing file, out of bounds, path)
                if bytes(sl.read(0, min(4, sl.size))) != b"PK\x03\x04":
                    ctx.find(
                        "dcp-item", f"the item at byte {c.offset} is not a torch.save archive", f"{c.file} ({ent.fqn})"
                    )
                    continue
                torch_zip.scan(_ItemContext(ctx, sl, f"{c.file}@{c.offset} ({ent.fqn})"))
                if ent.dtype is not None and c.numel:
                    try:
                        ck, _t = chunk_tensor(files, c, ent)
                        ck.close()
                    except CkptError as err:
                        ctx.find("dcp-item", err.message, f"{c.file}@{c.offset} ({ent.fqn})")
    finally:
        for s in opened.values():
            s.close()
    if bad or ctx.count("dcp-item"):
        ctx.note("values not checked: the folder's chunks do not assemble")
        return
    ctx.values_pass()


class _ItemContext:
    """A ScanContext for one item's archive: the torch zip scan runs on the slice, its findings and pickles
    reported in the DCP scan under the item's name (file offsets are the ``.distcp`` file's)."""

    def __init__(self, parent: ScanContext, src: SliceSource, label: str):
        self._parent = parent
        self._label = label
        self._base = src.offset
        self.path = src.name
        self.src: Source = src
        self.mm = src.buffer()
        self.size = src.size
        self.values = parent.values
        self.torchscript = False

    def set_format(self, name: str) -> None:
        if name != torch_zip.NAME:
            self._parent.find("dcp-item", f"the item is a {name} archive, not a torch.save of a value", self._label)

    def note(self, text: str) -> None:
        self._parent.note(f"{self._label}: {text}")

    def find(self, kind: str, message: str, where: str | None = None) -> None:
        self._parent.find(kind, message, f"{self._label}: {where}" if where else self._label)

    def count(self, kind: str) -> int:
        return self._parent.count(kind)

    def walk_stream(
        self, buf: Any, pos: int, end: int, where: str, base: int | None, *, depth: int = 0, probe: bool = False
    ) -> int:
        base = None if base is None else base + self._base
        return self._parent.walk_stream(buf, pos, end, f"{self._label}: {where}", base, depth=depth, probe=probe)

    def record_walk(self, w: unpickler.Walk, where: str, base: int | None, pos: int, depth: int = 0) -> None:
        base = None if base is None else base + self._base
        self._parent.record_walk(w, f"{self._label}: {where}", base, pos, depth)

    def walked_at(self, offset: int) -> bool:
        return False

    def open_reader(self) -> Checkpoint | None:
        return None

    def check_values(self, ck: Checkpoint) -> None:
        pass

    def values_pass(self) -> None:
        pass  # the values are checked once, on the reassembled tensors


__all__ = ["ALLOWLIST", "NAME", "Assemble", "detect", "detect_folder", "findings", "read", "read_location", "scan"]
