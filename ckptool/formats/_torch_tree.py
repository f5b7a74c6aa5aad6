"""Shared by the torch readers: turn the recorded object tree into a Checkpoint.

Locates the model state_dict inside training checkpoints, validates every tensor against the bytes its
storage really has, and summarises the other top-level entries. All walks are iterative and budgeted, so
a pickle whose memo makes a huge DAG ("billion laughs") cannot blow up time or memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..checkpoint import ByteSource, Checkpoint, Decoder, StorageInfo, TensorInfo, contiguous_stride
from ..errors import CorruptFileError, KeyNotFoundError
from .unpickler import DTypeOrStorage, Global, Opaque, PickledDict, SparseRecord, StorageRef, TensorRecord

if TYPE_CHECKING:
    from ..sources import Source

# Keys under which training code conventionally keeps the model weights, most specific first.
CONVENTIONAL_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "module",
    "ema",
    "model_ema",
    "state_dict_ema",
    "ema_state_dict",
    "params",
    "weights",
    "generator",
    "student",
    "teacher",
)
WALK_BUDGET = 2_000_000


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k), v
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield str(i), v
    elif isinstance(obj, Opaque):
        yield from ((str(k), v) for k, v in obj.fields.items())
        if isinstance(obj.state, (list, tuple)):  # a __getstate__ list: its __setstate__ decides the names
            yield from ((f"state.{i}", v) for i, v in enumerate(obj.state))


def count_tensors(obj: Any, budget: int = WALK_BUDGET) -> int:
    """Distinct tensor records reachable from obj (a DAG walk with a node budget)."""
    seen: set[int] = set()
    todo = [obj]
    n = 0
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if len(seen) > budget:
            raise CorruptFileError("object graph is larger than ckptool's walk budget")
        if isinstance(cur, TensorRecord):
            n += 1
        else:
            todo.extend(v for _, v in _children(cur))
    return n


def _direct_tensors(obj: Any) -> int:
    return sum(isinstance(v, TensorRecord) for v in obj.values()) if isinstance(obj, dict) else 0


def _tensor_dicts(root: Any, max_depth: int = 4) -> list[tuple[list[str], PickledDict]]:
    """Every dict (path, dict) holding tensors directly, breadth-first, to a bounded depth."""
    out = []
    seen: set[int] = set()
    level: list[tuple[list[str], Any]] = [([], root)]
    for _ in range(max_depth + 1):
        nxt: list[tuple[list[str], Any]] = []
        for path, obj in level:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if len(seen) > WALK_BUDGET:
                raise CorruptFileError("object graph is larger than ckptool's walk budget")
            if _direct_tensors(obj):
                out.append((path, obj))
            nxt.extend(([*path, k], v) for k, v in _children(obj) if isinstance(v, (dict, list, tuple, Opaque)))
        level = nxt
    return out


def follow_key(root: Any, key: str, path: str) -> tuple[list[str], Any]:
    """Follow a user's --key: a key of the root, or a dotted path (``model.ema``). Exact keys win."""
    cur, segs, rest = root, [], key
    while rest:
        if isinstance(cur, dict) and rest in {str(k) for k in cur}:
            segs.append(rest)
            cur = next(v for k, v in cur.items() if str(k) == rest)
            return segs, cur
        head, dot, tail = rest.partition(".")
        children = dict(_children(cur))
        if head not in children:
            avail = ", ".join(list(children)[:12]) or "nothing"
            raise KeyNotFoundError(f"--key {key!r}: no entry {head!r} (available here: {avail})", path=path)
        segs.append(head)
        cur = children[head]
        rest = tail if dot else ""
    return segs, cur


def locate_state_dict(root: Any, key: str | None, path: str) -> tuple[list[str], Any]:
    """(path segments, the mapping) of the model weights in ``root``."""
    if key:
        segs, obj = follow_key(root, key, path)
        if not _direct_tensors(obj) and not isinstance(obj, TensorRecord):
            nested = count_tensors(obj)
            inner = [k for k, v in _children(obj) if count_tensors(v)][:3]
            if nested and inner:
                raise KeyNotFoundError(
                    f"--key {key!r} holds no tensors directly: its {nested} tensors are nested deeper "
                    f"(under {', '.join(repr(k) for k in inner)}{', ...' if len(inner) == 3 else ''})",
                    path=path,
                    hint=f"name one mapping of tensors, e.g. --key {key}.{inner[0]}",
                )
            raise KeyNotFoundError(f"--key {key!r} holds no tensors", path=path)
        return segs, obj
    if isinstance(root, dict) and _direct_tensors(root):
        nested = any(isinstance(v, dict) and _direct_tensors(v) for v in root.values())
        if not nested:
            return [], root
    found = _tensor_dicts(root)
    if not found:
        return [], root
    conventional = [f for f in found if f[0] and f[0][-1] in CONVENTIONAL_KEYS]
    pool = conventional or found

    # most tensors wins; at equal counts the shallower / more conventional path wins
    def rank(item: tuple[list[str], PickledDict]) -> tuple[int, int, int]:
        segs, d = item
        conv = CONVENTIONAL_KEYS.index(segs[-1]) if segs and segs[-1] in CONVENTIONAL_KEYS else len(CONVENTIONAL_KEYS)
        return (_direct_tensors(d), -len(segs), -conv)

    return max(pool, key=rank)


def summarize(value: Any) -> str:
    if isinstance(value, TensorRecord):
        return f"tensor {list(value.shape)} {value.dtype}"
    if isinstance(value, SparseRecord):
        return f"sparse COO tensor {list(value.shape)} {value.dtype}, {value.nnz} stored values"
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, complex)):
        return repr(value)
    if isinstance(value, str):
        return value if len(value) <= 60 else value[:57] + "..."
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        text = plural(len(value), "entry", "entries")
        n = count_tensors(value) if isinstance(value, (dict, list, tuple)) else 0
        return text + (f", {plural(n, 'tensor')}" if n else "")
    if isinstance(value, Opaque):
        return value.kind if value.value is None else repr(value.value)
    if isinstance(value, Global):
        return value.qualname
    return type(value).__name__


def inert_notes(names: set[str]) -> list[str]:
    """The note a reader adds when it recorded inert or user-allowed globals as opaque values."""
    if not names:
        return []
    return [
        f"recorded {', '.join(sorted(names))} as opaque {'value' if len(names) == 1 else 'values'} "
        "(data only: nothing was imported or run)"
    ]


def _flatten(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted name, tensor) for every tensor reachable from obj, first path wins."""
    seen: set[int] = set()
    todo: list[tuple[str, Any]] = [(prefix, obj)]
    while todo:
        name, cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if len(seen) > WALK_BUDGET:
            raise CorruptFileError("object graph is larger than ckptool's walk budget")
        if isinstance(cur, TensorRecord):
            yield name, cur
            continue
        kids = [(f"{name}.{k}" if name else k, v) for k, v in _children(cur)]
        todo.extend(reversed(kids))


def build_checkpoint(
    root: Any,
    storages: dict[str, StorageInfo],
    *,
    path: str,
    fmt: str,
    key: str | None,
    metadata: dict[str, Any] | None = None,
) -> Checkpoint:
    segs, sd = locate_state_dict(root, key, path)
    notes: list[str] = []
    unlisted: dict[str, str] = {}
    if isinstance(sd, dict) and _direct_tensors(sd):
        items = [(str(k), v) for k, v in sd.items()]
        sparse = [(k, v) for k, v in items if isinstance(v, SparseRecord)]
        skipped = [k for k, v in items if not isinstance(v, (TensorRecord, SparseRecord))]
        for k, v in sparse:
            why = f"a {summarize(v)}: ckptool lists and exports dense tensors only"
            unlisted[k] = why
            notes.append(f"not listed: {k!r} is {why}")
        if skipped:
            notes.append(
                f"{plural(len(skipped), 'non-tensor entry', 'non-tensor entries')} in the state_dict: {', '.join(skipped[:5])}"
            )
        pairs = [(k, v) for k, v in items if isinstance(v, TensorRecord)]
    elif isinstance(sd, TensorRecord):
        pairs = [(segs[-1] if segs else "tensor", sd)]
    else:
        pairs = list(_flatten(sd, ""))
        if pairs:
            notes.append("no state_dict mapping found: listing every tensor by its path in the object")
    order = str((metadata or {}).get("byteorder", "little"))
    tensors = [to_tensor_info(name, rec, storages, path, order) for name, rec in pairs]

    extras: dict[str, str] = {}
    if segs and isinstance(root, dict):
        for k, v in root.items():
            if str(k) != segs[0]:
                extras[str(k)] = summarize(v)
    elif not segs and isinstance(root, dict) and tensors:
        for k, v in root.items():
            if not isinstance(v, TensorRecord):
                extras[str(k)] = summarize(v)
    sd_key = ".".join(segs) if segs else None
    ck = Checkpoint(
        path=path, format=fmt, tensors=tensors, state_dict_key=sd_key, extras=extras,
        metadata=metadata or {}, notes=notes, root=root, storages=storages,
    )  # fmt: skip
    ck.unlisted.update(unlisted)
    quantized = [t for t in tensors if t.quantization]
    if quantized:
        notes.append(
            "quantized: "
            + "; ".join(f"{t.name} ({quant_summary(t.quantization or {})})" for t in quantized[:5])
            + (f"; ... ({len(quantized)} in all)" if len(quantized) > 5 else "")
        )
    if isinstance(sd, PickledDict) and isinstance(sd.state, dict) and "_metadata" in sd.state:
        ck.metadata["has_module_metadata"] = True
    return ck


@dataclass(frozen=True)
class SignFlip:
    """torch's lazy neg / conj bits as a decoder: the stored (little-endian) bytes with the sign bit of some
    parts of each element flipped. A float negates exactly by its sign bit (as torch's neg does, NaN too);
    conj flips the imaginary part's; neg on a complex number flips both. ``flips`` are the byte indexes
    (within an element) whose top bit flips."""

    itemsize: int
    flips: tuple[int, ...]
    inner: Decoder | None = None

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        import numpy as np

        pos = start
        for chunk in _stored_chunks(self.inner, source, where, start, stop, buf):
            arr = np.frombuffer(chunk, dtype=np.uint8).copy()
            for b in self.flips:
                arr[(b - pos) % self.itemsize :: self.itemsize] ^= 0x80
            pos += len(arr)
            yield arr.tobytes()


def _stored_chunks(
    inner: Decoder | None, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
) -> Iterator[bytes | memoryview]:
    """What a view decoder (:class:`SignFlip`, :class:`IntNeg`) reads beneath it: its inner decoder's bytes (an
    inflated record), or the stored bytes [start, stop) streamed through ``buf``."""
    if inner is not None:
        yield from inner.chunks(source, where, start, stop, buf)
        return
    mv = memoryview(buf)
    pos = start
    while pos < stop:
        k = min(len(buf), stop - pos)
        source.read_into(where.offset + pos, mv[:k])
        yield mv[:k]
        pos += k


@dataclass(frozen=True)
class IntNeg:
    """torch's neg bit on an integer tensor as a decoder: each element negated in two's complement, wrapping as
    torch's ``resolve_neg`` does (-INT_MIN is INT_MIN; on uint8, -x is 256 - x)."""

    itemsize: int
    inner: Decoder | None = None

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        import numpy as np

        if start % self.itemsize:
            raise CorruptFileError(f"a read of a negated integer tensor starts inside an element (byte {start})")
        for chunk in _stored_chunks(self.inner, source, where, start, stop, buf):
            arr = np.frombuffer(chunk, dtype=f"<u{self.itemsize}")
            yield (np.zeros_like(arr) - arr).astype(f"<u{self.itemsize}").tobytes()


def _view_bits(name: str, rec: TensorRecord, st: StorageInfo, path: str, byteorder: str) -> StorageInfo:
    """The storage as the tensor's neg / conj bits show it: the same bytes behind a :class:`SignFlip` (or, for
    an integer tensor's neg bit, :class:`IntNeg`)."""
    dt = dtypes.lookup(rec.dtype)
    size = dt.itemsize
    bits = "+".join(b for b, on in (("neg", rec.neg), ("conj", rec.conj)) if on)
    integer = not dt.is_float and rec.dtype != "bool" and not rec.dtype.startswith(("qint", "quint"))
    if rec.neg and not rec.conj and integer and size in (1, 2, 4, 8):
        if byteorder != "little" or st.source is None:
            raise CorruptFileError(f"tensor {name!r} carries torch's neg bit on a big-endian file", path=path)
        src = dataclasses.replace(st.source, decoder=IntNeg(size, st.source.decoder))
        return dataclasses.replace(st, key=f"{st.key}+neg", source=src)
    if not dt.is_float or byteorder != "little" or st.source is None:
        raise CorruptFileError(
            f"tensor {name!r} ({rec.dtype}) carries torch's {bits} bit, which ckptool applies to little-endian "
            "floating-point and complex tensors only: its values would differ from torch.load's",
            path=path,
        )
    if rec.dtype.startswith("complex"):
        half = size // 2
        flips = {(True, False): (half - 1, size - 1), (False, True): (size - 1,), (True, True): (half - 1,)}[
            (rec.neg, rec.conj)
        ]
    else:
        flips = (size - 1,)
    src = dataclasses.replace(st.source, decoder=SignFlip(size, flips, st.source.decoder))
    return dataclasses.replace(st, key=f"{st.key}+{bits}", source=src)


def quant_summary(q: dict[str, Any]) -> str:
    if "scale" in q:
        return f"{q['scheme']}, scale {q['scale']:g}, zero point {q['zero_point']}"
    return f"{q['scheme']}, axis {q['axis']}, {q['channels']} scales and zero points"


def _quantization(rec: TensorRecord) -> dict[str, Any] | None:
    """The JSON-able summary of a quantized tensor's parameters (per-channel scales stay in their tensors)."""
    q = rec.quant
    if q is None:
        return None
    return {k: v for k, v in q.items() if k not in ("scales", "zero_points")}


def to_tensor_info(
    name: str, rec: TensorRecord, storages: dict[str, StorageInfo], path: str, byteorder: str = "little"
) -> TensorInfo:
    ref: StorageRef = rec.storage
    offset = rec.storage_offset
    key = ref.key
    if ref.view_of is not None:
        key = ref.view_of
        offset += ref.view_offset
    st = storages.get(key)
    if st is None:
        raise CorruptFileError(f"tensor {name!r} refers to storage {key!r}, which the file does not contain", path=path)
    if rec.neg or rec.conj:
        st = _view_bits(name, rec, st, path, byteorder)
    shape, stride = rec.shape, rec.stride
    t = TensorInfo(
        name, rec.dtype, shape, st, offset, None if stride == contiguous_stride(shape) else stride,
        rec.is_parameter, rec.requires_grad, False, None if rec.quant is None else _quantization(rec),
    )  # fmt: skip
    lo, hi = t.span()
    if lo < 0 or hi * t.itemsize > st.nbytes:
        raise CorruptFileError(
            f"tensor {name!r} ({list(t.shape)}, {t.dtype}) reaches element {hi} but its storage {key!r} holds "
            f"{st.nbytes // max(dtypes.lookup(t.dtype).itemsize, 1)}: the file lies about its sizes",
            path=path,
        )
    return t


# storage class name -> the dtype its storages hold (what storage_ref accepts; TypedStorage reads as bytes)
_STORAGE_DTYPE = {**{k: d.name for k, d in dtypes.BY_STORAGE.items()}, "TypedStorage": dtypes.BY_NAME["uint8"].name}


def storage_ref(pid: Any, *, legacy: bool) -> StorageRef:
    """Decode a persistent id tuple into a StorageRef (validated, never trusted)."""
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        raise CorruptFileError(f"unexpected persistent id {str(pid)[:80]}")
    want = 6 if legacy else 5
    if len(pid) != want:
        raise CorruptFileError(f"storage persistent id has {len(pid)} fields, expected {want}")
    cls, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    dt = _STORAGE_DTYPE.get(cls.name) if isinstance(cls, DTypeOrStorage) else None
    if dt is None:
        raise CorruptFileError(f"storage class {cls!r} is not a storage type")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CorruptFileError("storage persistent id has a bad key or size")
    loc = location if isinstance(location, str) else str(location)
    if legacy and pid[5] is not None:
        view = pid[5]
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[1], int)):
            raise CorruptFileError("bad legacy storage view metadata")
        return StorageRef(
            key=str(view[0]), dtype=dt, numel=int(view[2]), location=loc, view_of=key, view_offset=view[1]
        )
    return StorageRef(key, dt, numel, loc)
