"""safetensors, header-only: 8-byte little-endian length N, N bytes of JSON, then the data.

Enforces the reference implementation's rules (N <= 100,000,000; a JSON object of name -> {dtype, shape,
data_offsets} plus an optional string -> string ``__metadata__``; offsets contiguous from 0 and covering the
data exactly; sizes equal to shape x dtype size; no duplicate names).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import mul, sub
from typing import TYPE_CHECKING, Any

from .. import dtypes
from .._gc import paused_gc
from ..checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ..errors import CorruptFileError
from ..sources import Source
from ._json import loads_noting_duplicates

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "safetensors"
MAX_HEADER = 100_000_000
KIND = "safetensors-header"  # the finding kind of every rule here
Finding = tuple[str, str, str | None]  # (kind, message, where): what scan reports, what the reader raises


def detect(head: bytes, size: int) -> bool:
    """An 8-byte length, then a JSON object. A length that overflows the file still counts when the head reads
    like a safetensors header, so that the file is reported as a broken safetensors file, not an unknown one."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if n <= size - 8:
        return True
    return head[9:10] == b'"' and any(k in head for k in (b'"dtype"', b'"data_offsets"', b'"__metadata__"'))


@dataclass
class Parsed:
    """What :func:`findings` read, for the reader: the tensors in header order (one list per column),
    metadata, where the data starts."""

    names: list[str] = field(default_factory=list)
    dtypes: list[dtypes.DType] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    begins: list[int] = field(default_factory=list)  # data_offsets, relative to the data region
    ends: list[int] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0


def findings(buf: Any, out: Parsed | None = None) -> Iterator[Finding]:
    """Every violation of the reference implementation's rules, in file order. The reader raises the first;
    ``scan`` lists them all. When there is none, ``out`` holds the parsed header.

    A sound header is accepted by :func:`_sound` (column checks at C speed: no per-entry Python beyond list
    building); anything it cannot vouch for is parsed again and walked entry by entry by :func:`_rules`, which
    names every violation. Both apply the same rules."""
    where = "header"
    size = len(buf)
    if size < 8:
        yield KIND, "file is shorter than its 8-byte header length", where
        return
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER:
        yield KIND, f"header length {n} exceeds the 100 MB limit", where
        return
    if 8 + n > size:
        yield KIND, f"header length {n} overflows the file ({size - 8} bytes after it)", where
        return
    try:
        text = bytes(buf[8 : 8 + n]).decode("utf-8")
    except UnicodeDecodeError as e:
        yield KIND, f"header is not UTF-8 ({e.reason} at byte {8 + e.start})", where
        return
    data_len = size - 8 - n
    with paused_gc():
        try:
            header = json.loads(text)
        except (ValueError, RecursionError):
            header = None  # _rules says why
        parsed = _sound(header, text, data_len) if header is not None else None
    if parsed is not None:
        if out is not None:
            out.names, out.dtypes, out.shapes, out.begins, out.ends, out.metadata = parsed
            out.data_start = 8 + n
        return
    yield from _rules(text, data_len, 8 + n, out)


_BY_CODE = dtypes.BY_SAFETENSORS
_META = "__metadata__"


def _sound(
    header: Any, text: str, data_len: int
) -> tuple[list[str], list[dtypes.DType], list[list[int]], list[int], list[int], dict[str, str]] | None:
    """The header's columns when it breaks no rule; None when it may break one (then :func:`_rules` decides).

    Duplicate keys without the object hook: when the text has no backslash, every ``"`` opens or closes a
    string, so the text holds ``count('"') / 2`` strings. A sound header of N tensors and M metadata entries
    holds exactly len(header) keys + 4 N (three entry keys and the dtype code) + 2 M strings; a duplicated key
    would add at least its own string to the text and none to the parsed header. Equal counts: no duplicate."""
    if type(header) is not dict or "\\" in text:
        return None
    names = list(header)
    entries = list(header.values())
    meta: Any = None
    if _META in header:
        i = names.index(_META)
        meta = entries[i]
        del names[i], entries[i]
        if meta is not None and not (
            type(meta) is dict and not set(map(type, meta)) - {str} and not set(map(type, meta.values())) - {str}
        ):
            return None
    if text.count('"') != 2 * (len(header) + 4 * len(entries) + (len(meta) if meta else 0) * 2):
        return None
    if set(map(type, entries)) - {dict} or set(map(len, entries)) - {3}:
        return None
    try:
        codes = [e["dtype"] for e in entries]
        shapes = [e["shape"] for e in entries]
        offs = [e["data_offsets"] for e in entries]
        found = list(map(_BY_CODE.__getitem__, codes))
    except (KeyError, TypeError):  # another key, an unknown or unhashable dtype code
        return None
    if set(map(type, shapes)) - {list} or set(map(type, offs)) - {list} or set(map(len, offs)) - {2}:
        return None
    dims = list(chain.from_iterable(shapes))
    begins = [o[0] for o in offs]
    ends = [o[1] for o in offs]
    for col in (dims, begins, ends):  # ints (not bools, not floats), none negative
        if set(map(type, col)) - {int} or (col and min(col) < 0):
            return None
    itemsizes = [d.itemsize for d in found]
    if list(map(sub, ends, begins)) != list(map(mul, map(math.prod, shapes), itemsizes)):
        return None
    sb, se = begins, ends
    if sorted(begins) != begins:
        order = sorted(range(len(begins)), key=begins.__getitem__)
        sb, se = [begins[i] for i in order], [ends[i] for i in order]
    if (se[-1] if se else 0) != data_len or (sb and (sb[0] != 0 or sb[1:] != se[:-1])):
        return None  # a gap, an overlap, uncovered bytes (or ties _rules orders otherwise)
    return names, found, shapes, begins, ends, meta or {}


def _rules(text: str, data_len: int, data_start: int, out: Parsed | None) -> Iterator[Finding]:
    """Every rule, entry by entry, with the duplicate-key hook: the findings in file order."""
    where = "header"
    try:
        with paused_gc():
            header, dups = loads_noting_duplicates(text)
    except (ValueError, RecursionError) as e:
        yield KIND, f"header is not valid JSON ({str(e)[:120]})", where
        return
    bad = False
    for k in dict.fromkeys(dups):
        bad = True
        yield KIND, f"duplicate key {k!r}: which entry a reader keeps is ambiguous", where
    if not isinstance(header, dict):
        yield KIND, "header is not a JSON object", where
        return
    meta = header.pop(_META, None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        bad = True
        yield KIND, "__metadata__ must map strings to strings", where
    parsed = Parsed(metadata=meta or {}, data_start=data_start)
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            bad = True
            yield KIND, f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets", None
            continue
        code, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        dt = _BY_CODE.get(code) if isinstance(code, str) else None
        ok_shape = isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        )
        ok_offs = (
            isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
        )
        if dt is None:
            bad = True
            yield KIND, f"tensor {name!r}: unknown dtype {code!r}", None
        if not ok_shape:
            bad = True
            yield KIND, f"tensor {name!r}: shape {str(shape)[:80]} is not a list of non-negative ints", None
        if not ok_offs:
            bad = True
            yield KIND, f"tensor {name!r}: data_offsets {str(offs)[:80]} is not [begin, end]", None
            continue
        begin, end = offs
        if end < begin:
            bad = True
            yield KIND, f"tensor {name!r}: data_offsets {offs} end before they begin", None
            continue
        if dt is not None and ok_shape and end - begin != math.prod(shape) * dt.itemsize:
            bad = True
            yield (
                KIND,
                f"tensor {name!r}: data_offsets hold {end - begin} bytes but {shape} x {dt.name} needs "
                f"{math.prod(shape) * dt.itemsize}",
                None,
            )
        spans.append((begin, end, name))
        if dt is not None and ok_shape:
            parsed.names.append(name)
            parsed.dtypes.append(dt)
            parsed.shapes.append(shape)
            parsed.begins.append(begin)
            parsed.ends.append(end)
    expect = 0
    for begin, end, name in sorted(spans):
        if begin > expect:
            bad = True
            yield KIND, f"tensor {name!r}: a gap of {begin - expect} bytes before it at {expect}", None
        elif begin < expect:
            bad = True
            yield KIND, f"tensor {name!r}: data_offsets [{begin}, {end}] overlap the previous tensor", None
        expect = max(expect, end)
    if expect != data_len:
        bad = True
        what = "runs past the end of the file" if expect > data_len else f"leaves {data_len - expect} bytes uncovered"
        yield KIND, f"the tensors cover {expect} bytes of the {data_len}-byte data region: the header {what}", None
    if not bad and out is not None:
        out.names, out.dtypes, out.shapes = parsed.names, parsed.dtypes, parsed.shapes
        out.begins, out.ends, out.metadata, out.data_start = parsed.begins, parsed.ends, parsed.metadata, data_start


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    path = src.name
    parsed = Parsed()
    for _kind, message, _where in findings(src.buffer(), parsed):
        raise CorruptFileError(f"safetensors {message}", path=path)
    if key:
        from ..errors import UsageError

        raise UsageError("--key applies to torch checkpoints; safetensors files hold one flat mapping", path=path)
    return checkpoint(path, parsed)


def checkpoint(path: str, parsed: Parsed) -> Checkpoint:
    """The reader's view of a parsed, sound header: one storage per tensor, in header order."""
    start = parsed.data_start
    with paused_gc():
        tensors = [
            TensorInfo(name, dt.name, tuple(shape), StorageInfo(name, dt.name, math.prod(shape), "cpu",
                                                                ByteSource(path, start + b, e - b)))
            for name, dt, shape, b, e in zip(
                parsed.names, parsed.dtypes, parsed.shapes, parsed.begins, parsed.ends, strict=True
            )
        ]  # fmt: skip
    return Checkpoint(path=path, format=NAME, tensors=tensors, metadata={"__metadata__": parsed.metadata})


def scan(ctx: ScanContext) -> None:
    """Every header rule as a finding; the values only when the header is sound, on the header parsed here
    (the reader's own view, without reading the file a second time)."""
    ctx.set_format(NAME)
    parsed = Parsed()
    for kind, message, where in findings(ctx.mm, parsed):
        ctx.find(kind, message, where)
    if not ctx.count(KIND):
        with checkpoint(ctx.path, parsed) as ck:
            ctx.check_values(ck)
