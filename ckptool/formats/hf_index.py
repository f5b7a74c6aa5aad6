"""Hugging Face sharded checkpoints: an ``*.index.json`` and its shards, or a folder of them, as one checkpoint.

An index is ``{"metadata": {"total_size": N, ...}, "weight_map": {tensor name: shard file}}``
(``model.safetensors.index.json`` beside ``model-00001-of-00003.safetensors`` ..., or
``pytorch_model.bin.index.json`` beside ``pytorch_model-00001-of-00003.bin`` ...). Every shard is read by its
own format's reader (safetensors, torch zip, torch legacy); the result is one :class:`Checkpoint` whose
tensors' ``ByteSource.path`` is their shard and whose ``files`` lists the shards in order.

**What a folder means** (:func:`choose`): the folder's ``*.index.json`` when there is one
(``model.safetensors.index.json`` before ``pytorch_model.bin.index.json`` when both are there, as
``transformers`` prefers it); else its one weight file; else, when its weight files are exactly one complete
``NAME-0000K-of-0000N.EXT`` series, that series (names must be disjoint across shards); anything else is an
error that lists the files and says to name one.

**The index rules** (:func:`findings`, one generator: the reader raises the first, ``scan`` lists them all):
the index is a JSON object with a ``weight_map`` of strings; a shard name stays inside the folder (no
``..``, not absolute, no symlink out: :meth:`~ckptool.sources.Location.resolve`); every shard named exists
and is a checkpoint; every tensor of the map is in the shard the map names, no tensor is in two shards, no
shard holds a tensor the map does not list; ``metadata.total_size``, when given, equals the tensors' bytes
(the one rule the reader reports as a note, not an error: real indexes sometimes count differently).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..checkpoint import Checkpoint, StorageInfo, TensorInfo
from ..errors import CkptError, CorruptFileError, UnsafeFileError, UnsupportedFormatError
from ..sources import Location, open_location
from . import _members
from ._json import loads_noting_duplicates

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "hf-index"
INDEX_SUFFIX = ".index.json"
MAX_INDEX = 100_000_000  # bytes of JSON, as safetensors bounds its header
SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})(?P<ext>\.[A-Za-z0-9]+)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx")
SHARD_FORMATS = ("safetensors", "torch-zip", "torch-legacy")
INDEX_PREFERENCE = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
NOTE_KINDS = frozenset({"index-total-size"})  # reported by the reader as notes, not raised

Finding = tuple[str, str, str | None]  # (kind, message, where)
# the registry's one-file reader (formats.sniff.read_file, found in _members): a shard is read by its own format
ReadFile = Callable[..., Checkpoint]


def _reader(read_file: ReadFile | None) -> ReadFile:
    rf = read_file or _members.READ_FILE
    assert rf is not None, "ckptool.formats.sniff sets it on import"
    return rf


def detect(head: bytes, size: int) -> bool:
    """A JSON object whose first 4 KB mention ``weight_map`` (HF writes ``metadata`` first, keys sorted)."""
    return head.lstrip()[:1] == b"{" and b'"weight_map"' in head


def detect_folder(loc: Location) -> bool:
    """A folder holding an ``*.index.json`` or weight files (what :func:`choose` then decides about)."""
    return any(n.endswith(INDEX_SUFFIX) or n.endswith(WEIGHT_SUFFIXES) for n in loc.names())


# -- what a folder means ------------------------------------------------------------------------------------
@dataclass
class Choice:
    """What :func:`choose` picked in a folder: an index, one file, or an index-less shard series."""

    index: str | None = None
    single: str | None = None
    series: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def shard_series(names: list[str]) -> list[str] | None:
    """``names`` when they are exactly one complete ``STEM-0000K-of-0000N.EXT`` series, in order; else None."""
    parts = [SHARD_RE.match(n) for n in names]
    if not names or not all(parts):
        return None
    keys = {(m.group("stem"), m.group("n"), m.group("ext")) for m in parts if m}
    if len(keys) != 1:
        return None
    n = int(next(iter(keys))[1])
    ks = sorted(int(m.group("k")) for m in parts if m)
    return sorted(names) if ks == list(range(1, n + 1)) else None


def choose(loc: Location) -> Choice:
    """The index, file or shard series a folder stands for (see the module docstring), or UnsupportedFormatError."""
    names = loc.names()
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    if indexes:
        preferred = [n for n in INDEX_PREFERENCE if n in indexes]
        pick = preferred[0] if preferred else (indexes[0] if len(indexes) == 1 else None)
        if pick is None:
            raise UnsupportedFormatError(
                f"the folder has {len(indexes)} index files ({', '.join(indexes)}): which one is the checkpoint "
                "is ambiguous",
                path=loc.name,
                hint="name the index file instead of the folder",
            )
        c = Choice(index=pick)
        if len(indexes) > 1:
            c.notes.append(f"the folder also has {', '.join(n for n in indexes if n != pick)}: read {pick}")
        return c
    weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    if len(weights) == 1:
        return Choice(single=weights[0])
    series = shard_series(weights)
    if series is not None:
        return Choice(
            series=series, notes=[f"no index file: read the {len(series)} shards {series[0]} ... {series[-1]}"]
        )
    if not weights:
        raise UnsupportedFormatError("a folder without an *.index.json or a weight file", path=loc.name)
    shown = ", ".join(weights[:8]) + (f", ... ({len(weights)} files)" if len(weights) > 8 else "")
    raise UnsupportedFormatError(
        f"a folder of several weight files that are not one shard series and have no index: {shown}",
        path=loc.name,
        hint="name the file to read (or write an index.json for a sharded checkpoint)",
    )


# -- the index ---------------------------------------------------------------------------------------------
@dataclass
class Index:
    """A parsed index: the weight map in file order, its metadata, and ``total_size`` when it is an integer."""

    name: str  # the index file's name inside the folder ("" for an index-less series)
    weight_map: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    total_size: int | None = None

    def shards(self) -> list[str]:
        return list(dict.fromkeys(self.weight_map.values()))


def parse_index(data: bytes, name: str, out: Index) -> Iterator[Finding]:
    """The index file's own rules, filling ``out`` with what is usable."""
    where = name
    if len(data) > MAX_INDEX:
        yield "index-invalid", f"index is {len(data)} bytes, over the {MAX_INDEX:,}-byte limit", where
        return
    try:
        doc, dups = loads_noting_duplicates(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        yield "index-invalid", f"index is not UTF-8 ({e.reason} at byte {e.start})", where
        return
    except (ValueError, RecursionError) as e:
        yield "index-invalid", f"index is not valid JSON ({str(e)[:120]})", where
        return
    if not isinstance(doc, dict):
        yield "index-invalid", "index is not a JSON object", where
        return
    wm = doc.get("weight_map")
    if not isinstance(wm, dict):
        yield "index-invalid", "index has no weight_map object", where
        return
    for k in dict.fromkeys(dups):
        yield "index-duplicate-tensor", f"{k!r} appears twice in the index: which shard holds it is ambiguous", where
    for k, v in wm.items():
        if not isinstance(v, str):
            yield "index-invalid", f"weight_map[{k!r}] is {str(v)[:40]}, not a file name", where
            continue
        out.weight_map[k] = v
    meta = doc.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        yield "index-invalid", "index metadata is not an object", where
        meta = None
    out.metadata = meta or {}
    total = out.metadata.get("total_size")
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0 or total != int(total):
            yield "index-invalid", f"metadata.total_size {str(total)[:40]} is not a byte count", where
        else:
            out.total_size = int(total)


@dataclass
class Sharded:
    """What :func:`findings` read: each shard's checkpoint, in shard order (the reader builds from this)."""

    index: Index | None = None
    shards: dict[str, Checkpoint] = field(default_factory=dict)  # shard name -> its checkpoint
    full: dict[str, str] = field(default_factory=dict)  # shard name -> its full (resolved) name


def findings(
    loc: Location, index: Index, out: Sharded, *, read_file: ReadFile | None = None, key: str | None = None
) -> Iterator[Finding]:
    """The rules between an index and its shards (see the module docstring), opening each shard with its own
    format's reader (``read_file(loc, full_name, key=)``). ``out`` keeps the shards that opened (the caller
    closes them)."""
    read_file = _reader(read_file)
    out.index = index
    warm = getattr(loc, "prefetch", None)  # a remote folder: every shard's first read, concurrently
    if warm is not None:
        warm(index.shards())
    for shard in index.shards():
        try:
            full = loc.resolve(shard)
        except UnsafeFileError as e:
            yield "index-escape", f"shard {shard!r}: {e.message}", index.name or None
            continue
        if not loc.exists(shard):
            claimed = sum(1 for v in index.weight_map.values() if v == shard)
            yield "index-missing-shard", f"shard {shard!r} (holding {claimed} tensors) is not in the folder", shard
            continue
        try:
            ck = read_file(loc, full, key=key)
        except CkptError as e:
            yield "index-bad-shard", f"shard {shard!r}: {e.message}", shard
            continue
        if ck.format not in SHARD_FORMATS:
            ck.close()
            yield "index-bad-shard", f"shard {shard!r} is a {ck.format} file, not a tensor shard", shard
            continue
        out.shards[shard] = ck
        out.full[shard] = full
    # tensors against the map
    seen: dict[str, str] = {}
    for shard, ck in out.shards.items():
        for t in ck.tensors:
            first = seen.get(t.name)
            if first is not None:
                yield (
                    "index-duplicate-tensor",
                    f"tensor {t.name!r} is in both {first} and {shard}: which one a loader keeps is arbitrary",
                    t.name,
                )
                continue
            seen[t.name] = shard
            mapped = index.weight_map.get(t.name)
            if mapped is None and index.name:
                yield (
                    "index-unmapped-tensor",
                    f"tensor {t.name!r} is in {shard} but not in the index's weight_map",
                    t.name,
                )
            elif mapped is not None and mapped != shard and mapped in out.shards:
                yield "index-wrong-shard", f"tensor {t.name!r}: the index says {mapped}, but it is in {shard}", t.name
    for name, shard in index.weight_map.items():
        if name not in seen and shard in out.shards:
            yield "index-missing-tensor", f"tensor {name!r}: the index says {shard}, which does not hold it", name
    if index.total_size is not None and len(out.shards) == len(index.shards()):
        have = sum(t.nbytes for ck in out.shards.values() for t in ck.tensors)
        if have != index.total_size:
            yield (
                "index-total-size",
                f"metadata.total_size says {index.total_size:,} bytes, the shards' tensors hold {have:,}",
                index.name or None,
            )


# -- the reader ----------------------------------------------------------------------------------------------
def read_location(loc: Location, *, key: str | None = None, read_file: ReadFile | None = None) -> Checkpoint:
    """One Checkpoint from an index file, or a folder (see :func:`choose`). Raises the first rule broken."""
    read_file = _reader(read_file)
    out = Sharded()
    choice = choose(loc) if loc.is_folder else Choice()
    if choice.single is not None:
        return read_file(loc, loc.resolve(choice.single), key=key)
    if choice.series:
        gen = _series_findings(loc, choice.series, out, read_file=read_file, key=key)
    else:
        gen = findings(loc, load_index(loc, choice.index), out, read_file=read_file, key=key)
    notes = list(choice.notes)
    try:
        for kind, message, _where in gen:
            if kind in NOTE_KINDS:
                notes.append(message)
                continue
            err = UnsafeFileError if kind == "index-escape" else CorruptFileError
            raise err(message, path=loc.name)
        return _combine(loc, out, notes)
    except BaseException:
        for ck in out.shards.values():
            ck.close()
        raise


def _series_findings(
    loc: Location, series: list[str], out: Sharded, *, read_file: ReadFile | None, key: str | None
) -> Iterator[Finding]:
    """An index-less shard series: read every shard; the map is what they hold (names must be disjoint)."""
    read_file = _reader(read_file)
    index = out.index = Index(name="")
    for shard in series:
        ck = read_file(loc, loc.resolve(shard), key=key)
        out.shards[shard] = ck
        out.full[shard] = loc.resolve(shard)
        for t in ck.tensors:
            if t.name in index.weight_map:
                yield (
                    "index-duplicate-tensor",
                    f"tensor {t.name!r} is in both {index.weight_map[t.name]} and {shard}",
                    t.name,
                )
            index.weight_map[t.name] = shard


def load_index(loc: Location, rel: str | None) -> Index:
    """Parse an index (``rel`` in the folder, or the location's own file); raise its first rule broken."""
    name = rel if rel is not None else loc.name.replace("\\", "/").rsplit("/", 1)[-1]
    src = loc.open(rel)
    try:
        if src.size > MAX_INDEX:
            raise CorruptFileError(f"index is {src.size} bytes, over the {MAX_INDEX:,}-byte limit", path=src.name)
        data = src.read(0, src.size)
    finally:
        src.close()
    index = Index(name=name)
    for _kind, message, _where in parse_index(data, name, index):
        raise CorruptFileError(message, path=src.name)
    return index


def _combine(loc: Location, out: Sharded, notes: list[str]) -> Checkpoint:
    index = out.index
    assert index is not None
    cks = list(out.shards.values())
    formats = sorted({ck.format for ck in cks})
    if len(formats) > 1:
        raise CorruptFileError(f"the shards mix formats ({', '.join(formats)})", path=loc.name)
    orders = {ck.byteorder for ck in cks}
    if len(orders) > 1:
        raise CorruptFileError("the shards mix byte orders", path=loc.name)
    tensors: list[TensorInfo] = []
    storages: dict[str, StorageInfo] = {}
    extras: dict[str, str] = {}
    for shard, ck in out.shards.items():
        tensors.extend(ck.tensors)
        for k, st in ck.storages.items():
            storages[f"{shard}:{k}"] = st
        for k, v in ck.extras.items():
            extras[f"{shard}:{k}"] = v
        notes.extend(f"{shard}: {n}" for n in ck.notes)
        ck.close()
    meta: dict[str, Any] = {}
    metas = [ck.metadata.get("__metadata__") for ck in cks]
    if metas and all(m == metas[0] for m in metas) and metas[0] is not None:
        meta["__metadata__"] = metas[0]
    names = {t.name for t in tensors}
    for k, v in index.metadata.items():  # HF's record of tensors dropped as shared storage: dropped -> kept
        if isinstance(v, str) and v in names and k not in names:
            notes.append(f"{k} is not stored: the index metadata says it shares storage with {v} (dropped on save)")
    meta["index"] = {
        "file": index.name or None,
        "metadata": index.metadata,
        "total_size": index.total_size,
        "shards": list(out.shards),
    }
    return Checkpoint(
        path=loc.name,
        format=formats[0] if formats else "safetensors",
        tensors=tensors,
        state_dict_key=cks[0].state_dict_key if cks else None,
        extras=extras,
        metadata=meta,
        notes=notes,
        byteorder=orders.pop() if orders else "little",
        storages=storages,
        opener=loc.open_path,
        files={out.full[s]: s for s in out.shards},
    )


# -- scan -----------------------------------------------------------------------------------------------------
def folder_findings(
    where: str | Location, *, key: str | None = None, read_file: ReadFile | None = None
) -> Iterator[Finding]:
    """Every index rule of a folder or index file, collected (what ``scan`` reports for it). Yields nothing for
    a folder that is one file; the shards' own findings are the shard scans'."""
    loc = open_location(where)
    if loc.is_folder:
        try:
            choice = choose(loc)
        except UnsupportedFormatError as e:
            yield "index-invalid", e.message, None
            return
        if choice.single is not None:
            return
        if choice.index is None:
            out = Sharded()
            try:
                yield from _series_findings(loc, choice.series, out, read_file=read_file, key=key)
            except CkptError as e:
                yield "index-bad-shard", e.message, None
            finally:
                for ck in out.shards.values():
                    ck.close()
            return
        rel: str | None = choice.index
    else:
        rel = None
    name = rel if rel is not None else loc.name.replace("\\", "/").rsplit("/", 1)[-1]
    src = loc.open(rel)
    try:
        data = src.read(0, min(src.size, MAX_INDEX + 1))
    finally:
        src.close()
    index = Index(name=name)
    bad = False
    for f in parse_index(data, name, index):
        bad = bad or f[0] == "index-invalid"
        yield f
    if bad:
        return
    out = Sharded()
    try:
        yield from findings(loc, index, out, read_file=read_file, key=key)
    finally:
        for ck in out.shards.values():
            ck.close()


def shard_paths(where: str | Location) -> list[str]:
    """The full names of the shards an index file or folder names that exist and stay inside the folder (for a
    folder scan that scans each shard as a file of its own)."""
    loc = open_location(where)
    if loc.is_folder:
        choice = choose(loc)
        if choice.single is not None:
            return [loc.resolve(choice.single)]
        if choice.index is None:
            return [loc.resolve(s) for s in choice.series]
        index = load_index(loc, choice.index)
    else:
        index = load_index(loc, None)
    paths = []
    for shard in index.shards():
        try:
            if loc.exists(shard):
                paths.append(loc.resolve(shard))
        except UnsafeFileError:
            continue
    return paths


def scan(ctx: ScanContext) -> None:
    """An index file: its rules and the rules between it and its shards (the shards are scanned as files)."""
    ctx.set_format(NAME)
    for kind, message, where in folder_findings(ctx.path):
        ctx.find(kind, message, where)


def scan_folder(ctx: Any) -> None:
    """The folder-level hook (``ckptool.scanset``): a folder whose shards have no index gets the series rules
    (a tensor in two shards) as a report of its own. A folder with an index needs none: its index file is
    scanned as a file (:func:`scan`), and its shards as files of their own."""
    loc = ctx.loc
    try:
        choice = choose(loc)
    except UnsupportedFormatError:
        # no index and not one complete series: the series on disk (a shard missing, stale shards of another
        # save) and, for each complete one, its rules; other weight files are scanned as files
        found = list(disk_series_findings(loc))
        if found:
            ctx.set_format(NAME)
        for kind, message, where in found:
            ctx.find(kind, message, where)
        return
    if not choice.series:
        return
    ctx.set_format(NAME)
    for kind, message, where in folder_findings(loc):
        ctx.find(kind, message, where)


def disk_series_findings(loc: Location) -> Iterator[Finding]:
    """The ``NAME-0000K-of-0000N.EXT`` series among a folder's weight files, when they are not one complete
    series: every shard a series is missing (``index-missing-shard``), a shard number outside 1..N
    (``index-invalid``), shards of the same name from series of different lengths (``index-mixed-series``:
    left over from an earlier save; a loader that globs the folder mixes them), and the series rules of each
    complete series (a tensor in two shards)."""
    groups: dict[tuple[str, str], dict[int, list[tuple[int, str]]]] = {}
    for name in loc.names():
        m = SHARD_RE.match(name)
        if m is None or not name.endswith(WEIGHT_SUFFIXES):
            continue
        key = (m.group("stem"), m.group("ext"))
        groups.setdefault(key, {}).setdefault(int(m.group("n")), []).append((int(m.group("k")), name))
    for (stem, ext), by_n in sorted(groups.items()):
        if len(by_n) > 1:
            lengths = ", ".join(f"{len(v)} of {n}" for n, v in sorted(by_n.items()))
            yield (
                "index-mixed-series",
                f"{stem}-*-of-*{ext}: shards of {len(by_n)} different series ({lengths}): stale shards of an "
                "earlier save? a loader that globs the folder mixes them",
                None,
            )
        for n, members in sorted(by_n.items()):
            have = {k for k, _ in members}
            for k, name in sorted(members):
                if not 1 <= k <= n:
                    yield "index-invalid", f"{name}: shard number {k} is outside 1..{n}", name
            missing = [k for k in range(1, n + 1) if k not in have]
            for k in missing:
                want = f"{stem}-{k:05d}-of-{n:05d}{ext}"  # SHARD_RE's five digits
                yield "index-missing-shard", f"shard {want} of the {n}-shard series is not in the folder", want
            if not missing and len(have) == n == len(members):
                out = Sharded()
                try:
                    yield from _series_findings(loc, sorted(nm for _, nm in members), out, read_file=None, key=None)
                except CkptError as e:
                    yield "index-bad-shard", e.message, None
                finally:
                    for ck in out.shards.values():
                        ck.close()
