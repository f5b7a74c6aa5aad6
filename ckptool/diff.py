"""Compare two checkpoints tensor by tensor, streamed and torch-free (numpy only).

Any two supported files can be compared: a ``.pth`` against the ``.safetensors`` or ``.onnx`` made from
it, or a checkpoint against its fine-tuned version. Tensors are matched by name; when no names match as
they are, a prefix that every name of one side carries (``module.``, ``model.``, ...) is dropped if that
makes more names match. The report lists keys only in A and only in B, shape and dtype differences, and
for every common tensor the largest absolute difference.

Rules:

- ``atol == 0`` (the default): a tensor passes only when its bytes are identical (bit for bit; so
  ``-0.0`` against ``0.0`` and different NaN payloads count as different).
- ``atol > 0``: a tensor passes when every element differs by at most ``atol`` and NaNs sit at the same
  positions.
- A dtype difference is always a difference (values are still compared, as float64, and reported); a
  shape difference is one too (values are not compared).

Bytes are read in chunks of about a million elements per side, so memory stays flat whatever the file
size. bfloat16 and the float8 formats have no numpy dtype: they are decoded by hand (bfloat16 as the high
half of a float32, float8 through a 256-entry table).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from . import dtypes
from .checkpoint import Checkpoint, TensorInfo

ELEMENTS = 1 << 18  # elements per comparison step and side (cache-sized float64 temporaries)
Progress = Callable[[int, int], None]

IDENTICAL, CLOSE, DIFFERENT, SHAPE, DTYPE = "identical", "close", "different", "shape", "dtype"


@dataclass
class TensorDiff:
    name: str  # in A
    name_b: str  # in B (differs from ``name`` only when a prefix was dropped to match)
    status: str  # identical | close | different | shape | dtype
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    max_abs_diff: float | None = None  # None: not compared (shapes differ) or not decodable (quantized)
    mismatched: int | None = None  # elements that differ (bitwise when atol == 0, beyond atol otherwise)
    nan_mismatch: int = 0  # positions where exactly one side is NaN (included in ``mismatched``)

    @property
    def numel(self) -> int:
        return math.prod(self.shape_a)

    @property
    def passed(self) -> bool:
        return self.status in (IDENTICAL, CLOSE)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "shape_a": list(self.shape_a),
            "shape_b": list(self.shape_b),
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "numel": self.numel,
            "max_abs_diff": self.max_abs_diff,  # may be inf / nan: the CLI's JSON renderer encodes it
            "mismatched": self.mismatched,
            "nan_mismatch": self.nan_mismatch,
        }
        if self.name_b != self.name:
            d["name_b"] = self.name_b
        return d


@dataclass
class DiffReport:
    """The answer of :func:`diff`: per common tensor a :class:`TensorDiff`, and the names only one side has. ``to_dict()`` is the ``--json`` output."""

    a: str
    b: str
    format_a: str
    format_b: str
    state_dict_key_a: str | None
    state_dict_key_b: str | None
    atol: float
    only_in_a: list[str]
    only_in_b: list[str]
    tensors: list[TensorDiff]  # the tensors in both files, in A's order
    prefix_a: str = ""  # dropped from A's names to match
    prefix_b: str = ""
    bytes_compared: int = 0  # A's bytes whose values were compared
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when the files hold the same names with the same values (within ``atol``)."""
        return not self.only_in_a and not self.only_in_b and bool(self.tensors) and all(t.passed for t in self.tensors)

    @property
    def no_common_names(self) -> bool:
        return not self.tensors

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (IDENTICAL, CLOSE, DIFFERENT, DTYPE, SHAPE)}
        for t in self.tensors:
            out[t.status] += 1
        return out

    @property
    def max_abs_diff(self) -> float | None:
        vals = [t.max_abs_diff for t in self.tensors if t.max_abs_diff is not None]
        return max(vals) if vals else None

    def __repr__(self) -> str:
        c = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v)
        return (
            f"<DiffReport {os.path.basename(self.a)} vs {os.path.basename(self.b)}: {len(self.tensors)} common"
            f" ({c or 'none'}), {len(self.only_in_a)} only in A, {len(self.only_in_b)} only in B>"
        )

    def differences(self) -> list[TensorDiff]:
        return [t for t in self.tensors if not t.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "format_a": self.format_a,
            "format_b": self.format_b,
            "state_dict_key_a": self.state_dict_key_a,
            "state_dict_key_b": self.state_dict_key_b,
            "atol": self.atol,
            "identical": self.identical,
            "common": len(self.tensors),
            "counts": self.counts,
            "max_abs_diff": self.max_abs_diff,  # may be inf / nan: the CLI's JSON renderer encodes it
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "prefix_a": self.prefix_a,
            "prefix_b": self.prefix_b,
            "bytes_compared": self.bytes_compared,
            "tensors": [t.to_dict() for t in self.tensors],
            "notes": self.notes,
        }


# -- name matching ----------------------------------------------------------------------------------------


def _common_prefix(names: list[str]) -> str:
    """The longest dotted prefix (ending in '.') that every name carries, leaving each name non-empty."""
    if not names:
        return ""
    parts = [n.split(".")[:-1] for n in names]  # the last segment is never part of a prefix
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if all(s == segs[0] for s in segs):
            common.append(segs[0])
        else:
            break
    return ".".join(common) + "." if common else ""


def _match(a: list[str], b: list[str]) -> tuple[str, str, dict[str, str]]:
    """(prefix dropped from A, from B, {A name: B name}), choosing the option that matches most names.

    Candidates are every leading part of the prefix that all names of a side share (``module.features.``
    gives ``""``, ``module.``, ``module.features.``), so ``module.features.0.weight`` meets
    ``features.0.weight``. Ties go to dropping less; names are never changed when they already match.
    """
    options = sorted(
        ((sa, sb) for sa in _prefixes(_common_prefix(a)) for sb in _prefixes(_common_prefix(b))),
        key=lambda o: len(o[0]) + len(o[1]),
    )
    best: tuple[str, str, dict[str, str]] = ("", "", {})
    for sa, sb in options:
        bare_b = {n[len(sb) :]: n for n in b}
        pairs = {n: bare_b[n[len(sa) :]] for n in a if n[len(sa) :] in bare_b}
        if len(pairs) > len(best[2]):
            best = (sa, sb, pairs)
    return best


def _prefixes(p: str) -> list[str]:
    segs = p.split(".")[:-1] if p else []
    return ["", *(".".join(segs[:i]) + "." for i in range(1, len(segs) + 1))]


# -- decoding -----------------------------------------------------------------------------------------------


def _float8_table(name: str) -> Any:
    import numpy as np

    exp_bits, man_bits = (4, 3) if "e4m3" in name else (5, 2)
    fnuz = name.endswith("fnuz")
    bias = (1 << (exp_bits - 1)) - 1 + (1 if fnuz else 0)
    out = np.empty(256, dtype=np.float64)
    for b in range(256):
        s = -1.0 if b & 0x80 else 1.0
        e = (b >> man_bits) & ((1 << exp_bits) - 1)
        m = b & ((1 << man_bits) - 1)
        if (fnuz and b == 0x80) or (name == "float8_e4m3fn" and e == 15 and m == 7):
            v = math.nan
        elif name == "float8_e5m2" and e == 31:
            v = s * math.inf if m == 0 else math.nan
        elif e == 0:
            v = s * (m / (1 << man_bits)) * 2.0 ** (1 - bias)
        else:
            v = s * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        out[b] = v
    return out


_TABLES: dict[str, Any] = {}


def decode(raw: Any, dtype: str) -> Any:
    """Little-endian bytes of ``dtype`` as a numpy float64 (complex128 for complex) array, or None when
    the dtype cannot be decoded (quantized)."""
    import numpy as np

    dt = dtypes.lookup(dtype)
    if dt.name == "bfloat16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dt.name.startswith("float8"):
        table = _TABLES.get(dt.name)
        if table is None:
            table = _TABLES[dt.name] = _float8_table(dt.name)
        return table[np.frombuffer(raw, dtype=np.uint8)]
    if dt.numpy is None:
        return None
    arr = np.frombuffer(raw, dtype=dt.numpy)
    if arr.dtype.kind == "c":
        return arr.astype(np.complex128)
    return arr.astype(np.float64)


def _rechunk(chunks: Iterator[Any], size: int) -> Iterator[Any]:
    """Re-cut a stream of byte chunks into pieces of exactly ``size`` bytes (the last may be shorter).
    Chunks that already have the right size pass through without a copy."""
    acc = bytearray()
    for c in chunks:
        mv = memoryview(c).cast("B")
        if not acc and len(mv) == size:
            yield mv
            continue
        pos = 0
        while pos < len(mv):
            take = min(size - len(acc), len(mv) - pos)
            acc += mv[pos : pos + take]
            pos += take
            if len(acc) == size:
                yield acc
                acc = bytearray()
    if acc:
        yield acc


# -- comparing ----------------------------------------------------------------------------------------------


class _Comparer:
    def __init__(self, a: Checkpoint, b: Checkpoint, atol: float, progress: Progress | None, total: int):
        self.a, self.b, self.atol = a, b, atol
        self.progress, self.total, self.done = progress, total, 0

    def close(self) -> None:
        """Nothing to release: the checkpoints own their sources."""

    def _stream(self, ck: Checkpoint, t: TensorInfo, buf: bytearray) -> Iterator[Any]:
        return _rechunk(ck.iter_chunks(t, len(buf), buf=buf), len(buf))

    def compare(self, ta: TensorInfo, tb: TensorInfo) -> TensorDiff:
        import numpy as np

        d = TensorDiff(ta.name, tb.name, IDENTICAL, ta.shape, tb.shape, ta.dtype, tb.dtype)
        if ta.shape != tb.shape:
            d.status = SHAPE
            self._tick(ta.nbytes)
            return d
        same_dtype = ta.dtype == tb.dtype
        n = ta.numel
        step = min(ELEMENTS, max(n, 1))
        bufa, bufb = bytearray(step * ta.itemsize), bytearray(step * tb.itemsize)
        bitwise = same_dtype and self.atol == 0
        decodable = True
        bytes_differ = False
        max_diff = 0.0
        mismatched = nan_mis = 0
        for ca, cb in zip(self._stream(self.a, ta, bufa), self._stream(self.b, tb, bufb), strict=True):
            ua, ub = np.frombuffer(ca, dtype=np.uint8), np.frombuffer(cb, dtype=np.uint8)
            self._tick(len(ca))
            if same_dtype and np.array_equal(ua, ub):
                continue
            bytes_differ = True
            if same_dtype:
                bit_mis = _bit_mismatches(ua, ub, ta.itemsize)
            else:
                bit_mis = len(ca) // ta.itemsize
            fa, fb = decode(ca, ta.dtype), decode(cb, tb.dtype)
            if fa is None or fb is None:
                decodable = False
                mismatched += bit_mis
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                diff = fa - fb
            diff = np.abs(diff, out=diff) if diff.dtype.kind == "f" else np.abs(diff)
            if np.isnan(diff).any():  # a NaN or an inf on either side: the careful path
                na, nb = np.isnan(fa), np.isnan(fb)
                diff[(fa == fb) | (na & nb)] = 0.0  # inf == inf, and NaN against NaN, differ by nothing
                one_nan = na != nb
                diff[one_nan] = math.inf
                nan_mis += int(np.count_nonzero(one_nan))
            if diff.size:
                max_diff = max(max_diff, float(diff.max()))
            mismatched += bit_mis if bitwise else int(np.count_nonzero(diff > self.atol))
        d.max_abs_diff = max_diff if decodable else None
        d.mismatched = mismatched
        d.nan_mismatch = nan_mis
        if not same_dtype:
            d.status = DTYPE
        elif mismatched:
            d.status = DIFFERENT
        else:
            d.status = CLOSE if bytes_differ else IDENTICAL
        return d

    def _tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _bit_mismatches(ua: Any, ub: Any, itemsize: int) -> int:
    """Elements whose bytes differ, for two uint8 arrays of the same length."""
    import numpy as np

    if itemsize in (1, 2, 4, 8):
        kind = f"<u{itemsize}"
        return int(np.count_nonzero(ua.view(kind) != ub.view(kind)))
    return int(np.count_nonzero((ua.reshape(-1, itemsize) != ub.reshape(-1, itemsize)).any(axis=1)))


def diff(
    a: Checkpoint,
    b: Checkpoint,
    *,
    atol: float = 0.0,
    only: list[str] | None = None,
    exclude: list[str] | None = None,
    progress: Progress | None = None,
) -> DiffReport:
    """Compare ``a`` and ``b`` (see the module docstring for the rules).

    ``only`` / ``exclude`` are glob patterns on A's names (and B's, for the keys-only lists) that narrow
    the comparison. ``progress(done, total)`` counts A's bytes compared.
    """
    if atol < 0 or math.isnan(atol):
        from .errors import UsageError

        raise UsageError(f"--atol must be a non-negative number, got {atol}")

    def keep(name: str) -> bool:
        if only and not any(fnmatchcase(name, g) for g in only):
            return False
        return not (exclude and any(fnmatchcase(name, g) for g in exclude))

    names_a = [t.name for t in a.tensors if keep(t.name)]
    names_b = [t.name for t in b.tensors if keep(t.name)]
    pa, pb, pairs = _match(names_a, names_b)
    by_a = {t.name: t for t in a.tensors}
    by_b = {t.name: t for t in b.tensors}
    matched_b = set(pairs.values())
    report = DiffReport(
        a=a.path,
        b=b.path,
        format_a=a.format,
        format_b=b.format,
        state_dict_key_a=a.state_dict_key,
        state_dict_key_b=b.state_dict_key,
        atol=atol,
        only_in_a=[n for n in names_a if n not in pairs],
        only_in_b=[n for n in names_b if n not in matched_b],
        tensors=[],
        prefix_a=pa,
        prefix_b=pb,
    )
    if pa or pb:
        report.notes.append(
            f"matched names after dropping the prefix {pa!r} from A and {pb!r} from B"
            if pa and pb
            else f"matched names after dropping the prefix {(pa or pb)!r} from {'A' if pa else 'B'}"
        )
    for onnx_side, other, names in (("B", a, report.only_in_a), ("A", b, report.only_in_b)):
        if (b if onnx_side == "B" else a).format == "onnx" and other.format != "onnx":
            # torch's ONNX export drops BatchNorm's training-only step counters; they are not weights
            counters = [n for n in names if n.endswith("num_batches_tracked")]
            if counters:
                names[:] = [n for n in names if not n.endswith("num_batches_tracked")]
                report.notes.append(
                    f"ignored {len(counters)} num_batches_tracked counters that the ONNX side ({onnx_side}) "
                    "cannot hold: they are training-only BatchNorm step counts, not weights"
                )
    if not pairs:
        ex_a = ", ".join(names_a[:3]) or "none"
        ex_b = ", ".join(names_b[:3]) or "none"
        report.notes.append(f"no tensor names in common (A has e.g. {ex_a}; B has e.g. {ex_b})")
        return report
    total = sum(by_a[n].nbytes for n in pairs)
    cmp = _Comparer(a, b, atol, progress, total)
    try:
        for na, nb in pairs.items():
            ta, tb = by_a[na], by_b[nb]
            report.tensors.append(cmp.compare(ta, tb))
            if ta.shape == tb.shape:
                report.bytes_compared += ta.nbytes
    finally:
        cmp.close()
    return report
