"""ONNX models, header-only, without the onnx package: a minimal protobuf wire-format walk over the mmap.

Graph initializers become tensors; ``raw_data`` is located (offset, length) and never copied;
``external_data`` is resolved relative to the model's folder and must stay inside it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ..errors import CorruptFileError, UnsafeFileError


class _Wire(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Wire("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): varint -> int, LEN -> (start, end), fixed -> int."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise _Wire("field number 0")
        if wt == 0:
            val, pos = _varint(buf, pos, end)
            yield num, wt, val
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Wire("length-delimited field runs past its message")
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise _Wire("truncated fixed32")
            yield num, wt, struct.unpack("<I", buf[pos : pos + 4])[0]
            pos += 4
        elif wt == 1:
            if pos + 8 > end:
                raise _Wire("truncated fixed64")
            yield num, wt, struct.unpack("<Q", buf[pos : pos + 8])[0]
            pos += 8
        else:
            raise _Wire(f"unsupported wire type {wt}")


def _str(buf: Any, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")


MAX_DIMS = 1024  # ONNX sets no limit; torch allows 64 dims. More is a corrupt (or hostile) file.


def _packed_varints(buf: Any, span: tuple[int, int], limit: int | None = None) -> list[int]:
    out, pos = [], span[0]
    while pos < span[1]:
        v, pos = _varint(buf, pos, span[1])
        out.append(v)
        if limit is not None and len(out) > limit:
            raise _Wire(f"more than {limit} values in a packed field")
    return out


def _count_varints(buf: Any, span: tuple[int, int]) -> int:
    """How many varints a packed field holds: every varint ends with exactly one byte below 0x80."""
    raw = bytes(buf[span[0] : span[1]])
    return len(raw) - len(raw.translate(None, bytes(range(128))))


MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}  # ModelProto's field numbers


def looks_like_onnx(head: bytes) -> bool:
    """A cheap content check on the first bytes: a run of valid ModelProto field tags (any order) that includes
    ir_version (field 1, varint; serialisers write it first in practice) and at least one other field. A field
    whose value runs past the head (the graph, usually) still counts: only its tag has to be there."""
    if len(head) < 2 or head[0] != 0x08:
        return False
    seen: set[int] = set()
    pos, end = 0, len(head)
    try:
        while pos < end:
            tag, pos = _varint(head, pos, end)
            num, wt = tag >> 3, tag & 7
            if num not in MODEL_FIELDS or wt not in (0, 2):
                return False
            seen.add(num)
            if wt == 0:
                _, pos = _varint(head, pos, end)
            else:
                n, pos = _varint(head, pos, end)
                pos += n
    except _Wire:
        pass  # a value cut off by the end of the head
    return 1 in seen and (len(seen) > 1 or len(head) < 16)


def _shape(buf: Any, span: tuple[int, int]) -> tuple[int | None, list[int | str]]:
    elem: int | None = None
    dims: list[int | str] = []
    for num, wt, v in fields(buf, *span):  # TypeProto
        if num == 1 and wt == 2:  # tensor_type
            for n2, w2, v2 in fields(buf, *v):
                if n2 == 1 and w2 == 0:
                    elem = v2
                elif n2 == 2 and w2 == 2:  # shape
                    for n3, w3, v3 in fields(buf, *v2):
                        if n3 == 1 and w3 == 2:
                            dim: int | str = "?"
                            for n4, w4, v4 in fields(buf, *v3):
                                if n4 == 1 and w4 == 0:
                                    dim = v4
                                elif n4 == 2 and w4 == 2:
                                    dim = _str(buf, v4)
                            dims.append(dim)
    return elem, dims


def _value_info(buf: Any, span: tuple[int, int]) -> dict[str, Any]:
    name, elem = "", None
    dims: list[int | str] = []
    for num, wt, v in fields(buf, *span):
        if num == 1 and wt == 2:
            name = _str(buf, v)
        elif num == 2 and wt == 2:
            elem, dims = _shape(buf, v)
    dt = dtypes.BY_ONNX.get(elem) if elem is not None else None
    return {"name": name, "shape": dims, "dtype": dt.name if dt else None}


def safe_external_path(model_path: str, location: str) -> str:
    """Resolve an external-data location; refuse anything outside the model's folder."""
    base = os.path.dirname(os.path.abspath(model_path))
    if "\0" in location:
        raise UnsafeFileError(f"external data location {location!r} contains a NUL byte", path=model_path)
    if (
        not location
        or os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or ".." in location.replace("\\", "/").split("/")
    ):
        raise UnsafeFileError(f"external data location {location!r} points outside the model's folder", path=model_path)
    full = os.path.join(base, location)
    real = os.path.realpath(full)
    if os.path.commonpath([real, os.path.realpath(base)]) != os.path.realpath(base):
        raise UnsafeFileError(
            f"external data location {location!r} resolves outside the model's folder", path=model_path
        )
    return full


def _initializer(buf: Any, span: tuple[int, int], path: str) -> TensorInfo:
    dims: list[int] = []
    elem = 0
    name = ""
    raw: tuple[int, int] | None = None
    typed: tuple[str, tuple[int, int]] | None = None
    external: dict[str, str] = {}
    location = 0
    for num, wt, v in fields(buf, *span):
        if num == 1:
            dims.extend(_packed_varints(buf, v, MAX_DIMS) if wt == 2 else [v])
            if len(dims) > MAX_DIMS:
                raise CorruptFileError(f"initializer has more than {MAX_DIMS} dimensions", path=path)
        elif num == 2 and wt == 0:
            elem = v
        elif num == 8 and wt == 2:
            name = _str(buf, v)
        elif num == 9 and wt == 2:
            raw = v
        elif num == 13 and wt == 2:
            k = val = ""
            for n2, w2, v2 in fields(buf, *v):
                if n2 == 1 and w2 == 2:
                    k = _str(buf, v2)
                elif n2 == 2 and w2 == 2:
                    val = _str(buf, v2)
            external[k] = val
        elif num == 14 and wt == 0:
            location = v
        elif wt == 2 and num in (4, 5, 7, 10, 11):
            enc = {4: "fixed32", 5: "varint32", 7: "varint64", 10: "fixed64", 11: "varint64"}[num]
            typed = (enc, v)
    dt = dtypes.BY_ONNX.get(elem)
    if dt is None:
        raise CorruptFileError(f"initializer {name!r} has unsupported data type {elem}", path=path)
    dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
    if any(d < 0 for d in dims):
        raise CorruptFileError(f"initializer {name!r} has a negative dimension", path=path)
    shape = tuple(dims)
    numel = 1
    for d in shape:
        numel *= d
    need = numel * dt.itemsize
    if location == 1 or external:
        loc = external.get("location", "")
        full = safe_external_path(path, loc)
        try:
            off = int(external.get("offset", "0") or 0)
            length = int(external.get("length", str(need)) or need)
        except ValueError:
            raise CorruptFileError(
                f"initializer {name!r}: external data offset/length are not integers", path=path
            ) from None
        if not os.path.isfile(full):
            raise CorruptFileError(
                f"initializer {name!r}: external data file {loc!r} is missing (or not a regular file)", path=path
            )
        try:
            fsize = os.path.getsize(full)
        except OSError:
            raise CorruptFileError(f"initializer {name!r}: external data file {loc!r} is missing", path=path) from None
        if off < 0 or length != need or off + length > fsize:
            raise CorruptFileError(
                f"initializer {name!r}: external data [{off}, {off + length}) of {loc!r} does not hold {need} bytes "
                f"(file size {fsize})",
                path=path,
            )
        src = ByteSource(full, off, length)
    elif raw is not None:
        if raw[1] - raw[0] != need:
            raise CorruptFileError(
                f"initializer {name!r}: raw_data has {raw[1] - raw[0]} bytes, expected {need}", path=path
            )
        src = ByteSource(path, raw[0], need)
    elif typed is not None:
        enc, span = typed
        got = span[1] - span[0] if enc.startswith("fixed") else _count_varints(buf, span)
        want = need if enc.startswith("fixed") else numel
        if got != want:
            unit = "bytes" if enc.startswith("fixed") else "values"
            raise CorruptFileError(
                f"initializer {name!r}: typed data holds {got} {unit}, but {list(shape)} x {dt.name} needs {want}",
                path=path,
            )
        src = ByteSource(path, span[0], span[1] - span[0], encoding=enc)
    elif numel == 0:
        src = ByteSource(path, 0, 0)
    else:
        raise CorruptFileError(f"initializer {name!r} has no data", path=path)
    st = StorageInfo(name, dt.name, numel, "cpu", src)
    return TensorInfo(name=name, dtype=dt.name, shape=shape, storage=st)


def read(path: str, mm: Any, *, key: str | None = None) -> Checkpoint:
    size = len(mm)
    meta: dict[str, Any] = {"opset_import": {}, "inputs": [], "outputs": []}
    tensors: list[TensorInfo] = []
    graph_span = None
    try:
        for num, wt, v in fields(mm, 0, size):
            if num == 1 and wt == 0:
                meta["ir_version"] = v
            elif num == 2 and wt == 2:
                meta["producer_name"] = _str(mm, v)
            elif num == 3 and wt == 2:
                meta["producer_version"] = _str(mm, v)
            elif num == 7 and wt == 2:
                graph_span = v
            elif num == 8 and wt == 2:
                domain, version = "", 0
                for n2, w2, v2 in fields(mm, *v):
                    if n2 == 1 and w2 == 2:
                        domain = _str(mm, v2)
                    elif n2 == 2 and w2 == 0:
                        version = v2
                meta["opset_import"][domain or "ai.onnx"] = version
        if graph_span is None:
            raise CorruptFileError("ONNX model has no graph", path=path)
        init_names: set[str] = set()
        nodes = 0
        inputs, outputs = [], []
        for num, wt, v in fields(mm, *graph_span):
            if num == 5 and wt == 2:
                t = _initializer(mm, v, path)
                tensors.append(t)
                init_names.add(t.name)
            elif num == 1 and wt == 2:
                nodes += 1
            elif num == 2 and wt == 2:
                meta["graph_name"] = _str(mm, v)
            elif num == 11 and wt == 2:
                inputs.append(_value_info(mm, v))
            elif num == 12 and wt == 2:
                outputs.append(_value_info(mm, v))
        meta["inputs"] = [i for i in inputs if i["name"] not in init_names]
        meta["outputs"] = outputs
        meta["nodes"] = nodes
    except _Wire as e:
        raise CorruptFileError(f"not a valid ONNX protobuf ({e}); the file may be truncated", path=path) from None
    if key:
        from ..errors import UsageError

        raise UsageError(
            "--key applies to torch checkpoints; an ONNX model's initializers are one flat list", path=path
        )
    return Checkpoint(path=path, format="onnx", tensors=tensors, metadata=meta)


def decode_typed_field(mm: Any, src: ByteSource, dtype: str) -> bytes:
    """Little-endian bytes of an initializer stored in a typed repeated field instead of raw_data."""
    span = (src.offset, src.offset + src.nbytes)
    dt = dtypes.lookup(dtype)
    if src.encoding in ("fixed32", "fixed64"):
        return bytes(mm[span[0] : span[1]])
    vals = _packed_varints(mm, span)
    if src.encoding == "varint32":
        fmt = {1: "b", 2: "H" if dtype in ("float16", "bfloat16", "uint16") else "h", 4: "i"}.get(dt.itemsize)
        if dtype in ("uint8", "bool"):
            fmt = "B"
        if fmt is None:
            raise CorruptFileError(f"cannot decode int32_data as {dtype}", path=src.path)
        vals = [v - (1 << 64) if v >= 1 << 63 else v for v in vals]
        if fmt in ("H", "B"):
            vals = [v & (0xFFFF if fmt == "H" else 0xFF) for v in vals]
        return struct.pack(f"<{len(vals)}{fmt}", *vals)
    signed = dtype == "int64"
    vals = [v - (1 << 64) if signed and v >= 1 << 63 else v for v in vals]
    # uint64_data also carries uint32 (ONNX stores it there): pack each value at the tensor's own width
    fmt = "q" if signed else {4: "I", 8: "Q"}.get(dt.itemsize)
    if fmt is None:
        raise CorruptFileError(f"cannot decode uint64_data as {dtype}", path=src.path)
    try:
        return struct.pack(f"<{len(vals)}{fmt}", *vals)
    except struct.error:
        raise CorruptFileError(f"an int64/uint64 value does not fit {dtype}", path=src.path) from None
