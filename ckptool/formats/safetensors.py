"""safetensors, header-only: 8-byte little-endian length N, N bytes of JSON, then the data.

Enforces the reference implementation's rules (N <= 100,000,000; a JSON object of name -> {dtype, shape,
data_offsets} plus an optional string -> string ``__metadata__``; offsets contiguous from 0 and covering the
data exactly; sizes equal to shape x dtype size; no duplicate names).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import dtypes
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
    """What :func:`findings` read, for the reader: tensors in header order, metadata, where the data starts."""

    tensors: list[tuple[str, dtypes.DType, list[int], int, int]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0


def findings(buf: Any, out: Parsed | None = None) -> Iterator[Finding]:
    """Every violation of the reference implementation's rules, in file order. The reader raises the first;
    ``scan`` lists them all. When there is none, ``out`` holds the parsed header."""
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
    try:
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
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        bad = True
        yield KIND, "__metadata__ must map strings to strings", where
    data_len = size - 8 - n
    parsed = Parsed(metadata=meta or {}, data_start=8 + n)
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            bad = True
            yield KIND, f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets", None
            continue
        code, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        dt = dtypes.BY_SAFETENSORS.get(code) if isinstance(code, str) else None
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
            parsed.tensors.append((name, dt, shape, begin, end))
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
        out.tensors, out.metadata, out.data_start = parsed.tensors, parsed.metadata, parsed.data_start


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    path = src.name
    parsed = Parsed()
    for _kind, message, _where in findings(src.buffer(), parsed):
        raise CorruptFileError(f"safetensors {message}", path=path)
    if key:
        from ..errors import UsageError

        raise UsageError("--key applies to torch checkpoints; safetensors files hold one flat mapping", path=path)
    tensors = []
    for name, dt, shape, begin, end in parsed.tensors:
        numel = math.prod(shape)
        st = StorageInfo(name, dt.name, numel, "cpu", ByteSource(path, parsed.data_start + begin, end - begin))
        tensors.append(TensorInfo(name=name, dtype=dt.name, shape=tuple(shape), storage=st))
    return Checkpoint(path=path, format=NAME, tensors=tensors, metadata={"__metadata__": parsed.metadata})


def scan(ctx: ScanContext) -> None:
    """Every header rule as a finding; the values only when the header is sound."""
    ctx.set_format(NAME)
    for kind, message, where in findings(ctx.mm):
        ctx.find(kind, message, where)
    if not ctx.count(KIND):
        ctx.values_pass()
