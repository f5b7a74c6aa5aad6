"""safetensors, header-only: 8-byte little-endian length N, N bytes of JSON, then the data.

Enforces the reference implementation's rules (N <= 100,000,000; a JSON object of name -> {dtype, shape,
data_offsets} plus an optional string -> string ``__metadata__``; offsets contiguous from 0 and covering the
data exactly; sizes equal to shape x dtype size; no duplicate names).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ..errors import CorruptFileError

MAX_HEADER = 100_000_000


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CorruptFileError(f"safetensors header names {k!r} twice")
        out[k] = v
    return out


def parse_header(mm: Any, path: str) -> tuple[dict[str, Any], int]:
    """(header dict, offset where the data starts). Raises CorruptFileError on any rule violation."""
    size = len(mm)
    if size < 8:
        raise CorruptFileError("safetensors file shorter than its 8-byte header length", path=path)
    (n,) = struct.unpack("<Q", mm[:8])
    if n > MAX_HEADER:
        raise CorruptFileError(f"safetensors header length {n} exceeds the 100 MB limit", path=path)
    if 8 + n > size:
        raise CorruptFileError(f"safetensors header claims {n} bytes but the file has {size - 8}", path=path)
    raw = bytes(mm[8 : 8 + n])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"safetensors header is not UTF-8 ({e.reason} at byte {e.start})", path=path) from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except CorruptFileError as e:
        raise CorruptFileError(e.message, path=path) from None
    except (ValueError, RecursionError) as e:
        raise CorruptFileError(f"safetensors header is not valid JSON ({e})", path=path) from None
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=path)
    return header, 8 + n


def read(path: str, mm: Any, *, key: str | None = None) -> Checkpoint:
    header, data_start = parse_header(mm, path)
    data_len = len(mm) - data_start
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise CorruptFileError("safetensors __metadata__ must map strings to strings", path=path)
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"} or len(entry) != 3:
            raise CorruptFileError(
                f"tensor {name!r}: header entry must have exactly dtype, shape, data_offsets", path=path
            )
        code, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        dt = dtypes.BY_SAFETENSORS.get(code) if isinstance(code, str) else None
        if dt is None:
            raise CorruptFileError(f"tensor {name!r}: unknown dtype {code!r}", path=path)
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise CorruptFileError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints", path=path)
        if not (
            isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise CorruptFileError(f"tensor {name!r}: data_offsets {offs!r} is not [begin, end]", path=path)
        begin, end = offs
        numel = math.prod(shape)
        if begin < 0 or end < begin or end - begin != numel * dt.itemsize:
            raise CorruptFileError(
                f"tensor {name!r}: data_offsets {offs} hold {end - begin} bytes, but {shape} x {dt.name} needs "
                f"{numel * dt.itemsize}",
                path=path,
            )
        spans.append((begin, end, name))
        src = ByteSource(path, data_start + begin, end - begin)
        st = StorageInfo(name, dt.name, numel, "cpu", src)
        tensors.append(TensorInfo(name=name, dtype=dt.name, shape=tuple(shape), storage=st))
    expect = 0
    for begin, end, name in sorted(spans):
        if begin != expect:
            what = "overlaps the previous tensor" if begin < expect else f"leaves a gap of {begin - expect} bytes"
            raise CorruptFileError(f"tensor {name!r}: data_offsets {[begin, end]} {what}", path=path)
        expect = end
    if expect != data_len:
        raise CorruptFileError(
            f"safetensors data region has {data_len} bytes but the header covers {expect} (truncated or padded)",
            path=path,
        )
    if key:
        from ..errors import UsageError

        raise UsageError("--key applies to torch checkpoints; safetensors files hold one flat mapping", path=path)
    return Checkpoint(path=path, format="safetensors", tensors=tensors, metadata={"__metadata__": meta or {}})
