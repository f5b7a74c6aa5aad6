"""ONNX models, header-only, without the onnx package: a minimal protobuf wire-format walk over the mmap.

Graph initializers become tensors; ``raw_data`` is located (offset, length) and never copied;
``external_data`` is resolved relative to the model's folder and must stay inside it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ..errors import CkptError, CorruptFileError, UnsafeFileError
from ..sources import Source

if TYPE_CHECKING:
    from .scanning import ScanContext

NAME = "onnx"


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


def detect(head: bytes, size: int) -> bool:
    return looks_like_onnx(head)


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


class TypeF:  # TypeProto.tensor_type -> TypeProto.Tensor{elem_type, shape} -> TensorShapeProto.dim -> Dimension
    TENSOR_TYPE = 1
    ELEM_TYPE, SHAPE = 1, 2
    DIM = 1
    DIM_VALUE, DIM_PARAM = 1, 2


class ValueInfoF:
    NAME, TYPE = 1, 2


class EntryF:  # StringStringEntryProto
    KEY, VALUE = 1, 2


def _shape(buf: Any, span: tuple[int, int]) -> tuple[int | None, list[int | str]]:
    elem: int | None = None
    dims: list[int | str] = []
    for num, wt, v in fields(buf, *span):
        if num == TypeF.TENSOR_TYPE and wt == 2:
            for n2, w2, v2 in fields(buf, *v):
                if n2 == TypeF.ELEM_TYPE and w2 == 0:
                    elem = v2
                elif n2 == TypeF.SHAPE and w2 == 2:
                    for n3, w3, v3 in fields(buf, *v2):
                        if n3 == TypeF.DIM and w3 == 2:
                            dim: int | str = "?"
                            for n4, w4, v4 in fields(buf, *v3):
                                if n4 == TypeF.DIM_VALUE and w4 == 0:
                                    dim = v4
                                elif n4 == TypeF.DIM_PARAM and w4 == 2:
                                    dim = _str(buf, v4)
                            dims.append(dim)
    return elem, dims


def _value_info(buf: Any, span: tuple[int, int]) -> dict[str, Any]:
    name, elem = "", None
    dims: list[int | str] = []
    for num, wt, v in fields(buf, *span):
        if num == ValueInfoF.NAME and wt == 2:
            name = _str(buf, v)
        elif num == ValueInfoF.TYPE and wt == 2:
            elem, dims = _shape(buf, v)
    dt = dtypes.BY_ONNX.get(elem) if elem is not None else None
    return {"name": name, "shape": dims, "dtype": dt.name if dt else None}


def _entry(buf: Any, span: tuple[int, int]) -> tuple[str, str]:
    k = val = ""
    for num, wt, v in fields(buf, *span):
        if num == EntryF.KEY and wt == 2:
            k = _str(buf, v)
        elif num == EntryF.VALUE and wt == 2:
            val = _str(buf, v)
    return k, val


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
    from ..sources.remote import is_url, resolve_relative

    if is_url(model_path):  # a remote model: the location resolves against its URL, never outside its folder
        try:
            return resolve_relative(model_path, location)
        except CkptError as e:
            raise UnsafeFileError(e.message, path=model_path) from None
    full = os.path.join(base, location)
    real = os.path.realpath(full)
    if os.path.commonpath([real, os.path.realpath(base)]) != os.path.realpath(base):
        raise UnsafeFileError(
            f"external data location {location!r} resolves outside the model's folder", path=model_path
        )
    return full


def _remote_size(full: str) -> int | None:
    """The size of a remote external-data file (-1: missing), None for a local path."""
    from ..sources.remote import is_url, open_url

    if not is_url(full):
        return None
    try:
        with open_url(full) as src:
            return src.size
    except CkptError:
        return -1


class TensorF:
    DIMS, DATA_TYPE, FLOAT_DATA, INT32_DATA, INT64_DATA, NAME, RAW_DATA, DOUBLE_DATA, UINT64_DATA = (
        1,
        2,
        4,
        5,
        7,
        8,
        9,
        10,
        11,
    )
    EXTERNAL_DATA, DATA_LOCATION = 13, 14


# typed repeated fields -> how their values are encoded
_TYPED = {
    TensorF.FLOAT_DATA: "fixed32",
    TensorF.INT32_DATA: "varint32",
    TensorF.INT64_DATA: "varint64",
    TensorF.DOUBLE_DATA: "fixed64",
    TensorF.UINT64_DATA: "varint64",
}


def _initializer(
    buf: Any, span: tuple[int, int], path: str, *, name: str | None = None, constant: bool = False
) -> TensorInfo:
    dims: list[int] = []
    elem = 0
    own_name = ""
    raw: tuple[int, int] | None = None
    typed: tuple[str, tuple[int, int]] | None = None
    external: dict[str, str] = {}
    location = 0
    for num, wt, v in fields(buf, *span):
        if num == TensorF.DIMS:
            dims.extend(_packed_varints(buf, v, MAX_DIMS) if wt == 2 else [v])
            if len(dims) > MAX_DIMS:
                raise CorruptFileError(f"initializer has more than {MAX_DIMS} dimensions", path=path)
        elif num == TensorF.DATA_TYPE and wt == 0:
            elem = v
        elif num == TensorF.NAME and wt == 2:
            own_name = _str(buf, v)
        elif num == TensorF.RAW_DATA and wt == 2:
            raw = v
        elif num == TensorF.EXTERNAL_DATA and wt == 2:
            k, val = _entry(buf, v)
            external[k] = val
        elif num == TensorF.DATA_LOCATION and wt == 0:
            location = v
        elif wt == 2 and num in _TYPED:
            typed = (_TYPED[num], v)
    name = name or own_name
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
    if location == 1:  # onnx and onnxruntime read external_data only when data_location is EXTERNAL
        loc = external.get("location", "")
        full = safe_external_path(path, loc)
        try:
            off = int(external.get("offset", "0") or 0)
            length = int(external.get("length", str(need)) or need)
        except ValueError:
            raise CorruptFileError(
                f"initializer {name!r}: external data offset/length are not integers", path=path
            ) from None
        fsize = _remote_size(full)
        if fsize is None and not os.path.isfile(full):
            raise CorruptFileError(
                f"initializer {name!r}: external data file {loc!r} is missing (or not a regular file)", path=path
            )
        try:
            fsize = os.path.getsize(full) if fsize is None else fsize
        except OSError:
            raise CorruptFileError(f"initializer {name!r}: external data file {loc!r} is missing", path=path) from None
        if fsize < 0:
            raise CorruptFileError(f"initializer {name!r}: external data file {loc!r} is missing", path=path)
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
        src = ByteSource(path, span[0], span[1] - span[0], encoding=enc, decoder=TypedField(enc, dt.name))
    elif numel == 0:
        src = ByteSource(path, 0, 0)
    else:
        raise CorruptFileError(f"initializer {name!r} has no data", path=path)
    st = StorageInfo(name, dt.name, numel, "cpu", src)
    return TensorInfo(name=name, dtype=dt.name, shape=shape, storage=st, constant=constant)


# Field numbers of onnx.proto3, named once (ckptool walks the protobuf wire format without the onnx package).
class ModelF:
    IR_VERSION, PRODUCER_NAME, PRODUCER_VERSION, GRAPH, OPSET_IMPORT, TRAINING_INFO, FUNCTIONS = 1, 2, 3, 7, 8, 20, 25


class OpsetF:
    DOMAIN, VERSION = 1, 2


class GraphF:
    NODE, NAME, INITIALIZER, INPUT, OUTPUT, SPARSE_INITIALIZER = 1, 2, 5, 11, 12, 15


class NodeF:
    INPUT, OUTPUT, NAME, OP_TYPE, ATTRIBUTE, DOMAIN = 1, 2, 3, 4, 5, 7


class AttrF:
    NAME, T, G, TENSORS, GRAPHS, SPARSE_TENSOR, SPARSE_TENSORS = 1, 5, 6, 10, 11, 22, 23


class SparseF:
    VALUES, INDICES = 1, 2


class FunctionF:
    NODE = 7


class TrainingF:
    INITIALIZATION, ALGORITHM = 1, 2


MAX_SUBGRAPH_DEPTH = 32


@dataclass(frozen=True)
class TensorSpan:
    """A TensorProto found in the model: its bytes' span, where it sits, and the name it is known by."""

    span: tuple[int, int]
    where: str  # "graph", "graph subgraph", "function attribute", ...
    name: str | None = None  # for a Constant node: its output name (the TensorProto's own name is often empty)
    constant: bool = False  # the ``value`` of a Constant node, not a graph initializer
    weight: bool = True  # an initializer or a Constant's value (False: another attribute, a sparse part)


def _node_tensors(buf: Any, span: tuple[int, int], where: str, depth: int, path: str) -> Iterator[TensorSpan]:
    op, domain, outputs = "", "", []
    attrs: list[tuple[int, tuple[int, int]]] = []
    for num, wt, v in fields(buf, *span):
        if wt != 2:
            continue
        if num == NodeF.OP_TYPE:
            op = _str(buf, v)
        elif num == NodeF.DOMAIN:
            domain = _str(buf, v)
        elif num == NodeF.OUTPUT:
            outputs.append(_str(buf, v))
        elif num == NodeF.ATTRIBUTE:
            attrs.append((num, v))
    constant = op == "Constant" and domain in ("", "ai.onnx")
    for _, a in attrs:
        aname = ""
        parts: list[tuple[int, tuple[int, int]]] = []
        for n2, w2, v2 in fields(buf, *a):
            if n2 == AttrF.NAME and w2 == 2:
                aname = _str(buf, v2)
            elif w2 == 2:
                parts.append((n2, v2))
        for n2, v2 in parts:
            if n2 == AttrF.T:
                value = constant and aname == "value"
                name = outputs[0] if value and outputs else None
                yield TensorSpan(v2, f"{where} attribute", name, constant=value, weight=value)
            elif n2 == AttrF.TENSORS:
                yield TensorSpan(v2, f"{where} attribute", weight=False)
            elif n2 in (AttrF.G, AttrF.GRAPHS):
                yield from graph_tensors(buf, v2, f"{where} subgraph", depth + 1, path)
            elif n2 in (AttrF.SPARSE_TENSOR, AttrF.SPARSE_TENSORS):
                for n3, w3, v3 in fields(buf, *v2):
                    if n3 in (SparseF.VALUES, SparseF.INDICES) and w3 == 2:
                        yield TensorSpan(v3, f"{where} attribute", weight=False)


def graph_tensors(buf: Any, span: tuple[int, int], where: str, depth: int, path: str) -> Iterator[TensorSpan]:
    """Every TensorProto of a graph, in file order: initializers, sparse initializers, node attributes (Constant
    values among them), recursing into subgraphs (``If`` / ``Loop`` / ``Scan`` bodies)."""
    if depth > MAX_SUBGRAPH_DEPTH:
        raise CorruptFileError(f"ONNX subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels", path=path)
    for num, wt, v in fields(buf, *span):
        if wt != 2:
            continue
        if num == GraphF.INITIALIZER:
            yield TensorSpan(v, where)
        elif num == GraphF.SPARSE_INITIALIZER:
            for n2, w2, v2 in fields(buf, *v):
                if n2 in (SparseF.VALUES, SparseF.INDICES) and w2 == 2:
                    yield TensorSpan(v2, where, weight=False)
        elif num == GraphF.NODE:
            yield from _node_tensors(buf, v, where, depth, path)


def model_tensors(buf: Any, size: int, path: str) -> Iterator[TensorSpan]:
    """Every TensorProto of the model: the main graph's, its functions' and its training graphs'."""
    for num, wt, v in fields(buf, 0, size):
        if wt != 2:
            continue
        if num == ModelF.GRAPH:
            yield from graph_tensors(buf, v, "graph", 0, path)
        elif num == ModelF.FUNCTIONS:
            for n2, w2, v2 in fields(buf, *v):
                if n2 == FunctionF.NODE and w2 == 2:
                    for t in _node_tensors(buf, v2, "function", 0, path):
                        yield TensorSpan(t.span, t.where, weight=False)
        elif num == ModelF.TRAINING_INFO:
            for n2, w2, v2 in fields(buf, *v):
                if n2 in (TrainingF.INITIALIZATION, TrainingF.ALGORITHM) and w2 == 2:
                    for t in graph_tensors(buf, v2, "training_info", 0, path):
                        yield TensorSpan(t.span, t.where, weight=False)


def external_location(buf: Any, span: tuple[int, int]) -> tuple[str, dict[str, str] | None]:
    """(the tensor's name, its external_data entries, or None when its data is in the file)."""
    name, external, location = "", {}, 0
    for num, wt, v in fields(buf, *span):
        if num == TensorF.NAME and wt == 2:
            name = _str(buf, v)
        elif num == TensorF.EXTERNAL_DATA and wt == 2:
            k, val = _entry(buf, v)
            external[k] = val
        elif num == TensorF.DATA_LOCATION and wt == 0:
            location = v
    return name, (external if location == 1 else None)


def findings(buf: Any, size: int, path: str) -> Iterator[tuple[str, str, str | None]]:
    """The model's safety findings, (kind, message, where): external data that points outside its folder.
    The reader raises the first (as :class:`UnsafeFileError`); ``scan`` collects them all."""
    try:
        for t in model_tensors(buf, size, path):
            name, external = external_location(buf, t.span)
            if external is None:
                continue
            try:
                safe_external_path(path, external.get("location", ""))
            except UnsafeFileError as e:
                yield "onnx-external-data", f"initializer {name!r}: {e.message}", t.where
    except _Wire as e:
        raise CorruptFileError(f"not a valid ONNX protobuf ({e}); the file may be truncated", path=path) from None


def read(src: Source, *, key: str | None = None) -> Checkpoint:
    path, mm = src.name, src.buffer()
    size = len(mm)
    meta: dict[str, Any] = {"opset_import": {}, "inputs": [], "outputs": []}
    tensors: list[TensorInfo] = []
    notes: list[str] = []
    graph_span = None
    try:
        for num, wt, v in fields(mm, 0, size):
            if num == ModelF.IR_VERSION and wt == 0:
                meta["ir_version"] = v
            elif num == ModelF.PRODUCER_NAME and wt == 2:
                meta["producer_name"] = _str(mm, v)
            elif num == ModelF.PRODUCER_VERSION and wt == 2:
                meta["producer_version"] = _str(mm, v)
            elif num == ModelF.GRAPH and wt == 2:
                graph_span = v
            elif num == ModelF.OPSET_IMPORT and wt == 2:
                domain, version = "", 0
                for n2, w2, v2 in fields(mm, *v):
                    if n2 == OpsetF.DOMAIN and w2 == 2:
                        domain = _str(mm, v2)
                    elif n2 == OpsetF.VERSION and w2 == 0:
                        version = v2
                meta["opset_import"][domain or "ai.onnx"] = version
        if graph_span is None:
            raise CorruptFileError("ONNX model has no graph", path=path)
        seen: set[str] = set()
        dropped: list[str] = []
        for ts in graph_tensors(mm, graph_span, "graph", 0, path):
            if not ts.weight:
                continue
            t = _initializer(mm, ts.span, path, name=ts.name, constant=ts.constant)
            if t.name in seen:
                dropped.append(t.name)
                continue
            seen.add(t.name)
            tensors.append(t)
        if dropped:
            notes.append(f"{len(dropped)} tensors repeat an earlier name and are not listed: {', '.join(dropped[:5])}")
        n_const = sum(t.constant for t in tensors)
        if n_const:
            notes.append(f"{n_const} tensors are the values of Constant nodes (listed under the node's output name)")
        nodes = 0
        inputs, outputs = [], []
        for num, wt, v in fields(mm, *graph_span):
            if num == GraphF.NODE and wt == 2:
                nodes += 1
            elif num == GraphF.NAME and wt == 2:
                meta["graph_name"] = _str(mm, v)
            elif num == GraphF.INPUT and wt == 2:
                inputs.append(_value_info(mm, v))
            elif num == GraphF.OUTPUT and wt == 2:
                outputs.append(_value_info(mm, v))
        meta["inputs"] = [i for i in inputs if i["name"] not in seen]
        meta["outputs"] = outputs
        meta["nodes"] = nodes
    except _Wire as e:
        raise CorruptFileError(f"not a valid ONNX protobuf ({e}); the file may be truncated", path=path) from None
    if key:
        from ..errors import UsageError

        raise UsageError(
            "--key applies to torch checkpoints; an ONNX model's initializers are one flat list", path=path
        )
    return Checkpoint(path=path, format=NAME, tensors=tensors, metadata=meta, notes=notes)


@dataclass(frozen=True)
class TypedField:
    """The decoder of an initializer stored in a typed repeated field (``float_data``, ``int64_data``, ...)."""

    encoding: str  # fixed32 | fixed64 | varint32 | varint64
    dtype: str

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        data = decode_typed_field(source.read(where.offset, where.nbytes), self.encoding, self.dtype, source.name)
        yield data[start:stop]


def decode_typed_field(raw: bytes, encoding: str, dtype: str, path: str) -> bytes:
    """Little-endian bytes of an initializer stored in a typed repeated field instead of raw_data."""
    dt = dtypes.lookup(dtype)
    if encoding in ("fixed32", "fixed64"):
        return bytes(raw)
    vals = _packed_varints(raw, (0, len(raw)))
    if encoding == "varint32":
        fmt = {1: "b", 2: "H" if dtype in ("float16", "bfloat16", "uint16") else "h", 4: "i"}.get(dt.itemsize)
        if dtype in ("uint8", "bool"):
            fmt = "B"
        if fmt is None:
            raise CorruptFileError(f"cannot decode int32_data as {dtype}", path=path)
        vals = [v - (1 << 64) if v >= 1 << 63 else v for v in vals]
        if fmt in ("H", "B"):
            vals = [v & (0xFFFF if fmt == "H" else 0xFF) for v in vals]
        return struct.pack(f"<{len(vals)}{fmt}", *vals)
    signed = dtype == "int64"
    vals = [v - (1 << 64) if signed and v >= 1 << 63 else v for v in vals]
    # uint64_data also carries uint32 (ONNX stores it there): pack each value at the tensor's own width
    fmt = "q" if signed else {4: "I", 8: "Q"}.get(dt.itemsize)
    if fmt is None:
        raise CorruptFileError(f"cannot decode uint64_data as {dtype}", path=path)
    try:
        return struct.pack(f"<{len(vals)}{fmt}", *vals)
    except struct.error:
        raise CorruptFileError(f"an int64/uint64 value does not fit {dtype}", path=path) from None


def scan(ctx: ScanContext) -> None:
    """The protobuf's rules (external data locations, ...) as findings, then the values."""
    ctx.set_format(NAME)
    for kind, message, where in findings(ctx.mm, ctx.size, ctx.path):
        ctx.find(kind, message, where)
    ctx.values_pass()
