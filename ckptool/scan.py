"""Static safety and integrity analysis of weight files: what ``ckptool scan`` reports (torch-free).

Nothing is ever unpickled. Every pickle in the file is walked opcode by opcode with
:func:`pickletools.genops`, tracking only what is needed to name the globals it references: string
constants on a symbolic stack and in the memo, so that ``STACK_GLOBAL`` resolves through ``BINGET`` /
``MEMOIZE`` and through ``STRING``-family opcodes. Each global is judged against the reader's own
allowlist (:data:`ckptool.formats.unpickler.ALLOWED`, after mapping Python 2 spellings with
:func:`~ckptool.formats.unpickler.resolve_name`): **safe** (on the allowlist), **dangerous** (code
execution, file, process or network access, nested loaders), or **unknown** (anything else). Dangerous
and unknown globals are findings.

Where the pickles are:
  * torch zip: every member named ``*.pkl`` and every member whose bytes start with a pickle protocol
    header (``\\x80\\x02``..``\\x80\\x05``), whatever its name; bytes after a pickle's STOP are walked as
    further pickles;
  * torch legacy: the five stacked pickles, then anything that parses as a pickle where the storage data
    should start, and after the last storage;
  * any other pickle stream (``pickle.dump`` output): every pickle until the end of the file;
  * bytes constants inside a pickle that are themselves pickles (``pickle.loads(b"...")``).

Integrity findings: the torch.hub filename hash suffix (``name-<sha256 prefix>.ext``), NaN/Inf in
floating tensors and negative batch-norm ``running_var`` (streamed in chunks), zip CRC errors /
duplicate names / overlapping records / local-header mismatches, the safetensors header rules, ONNX
external-data locations outside the model's folder, and whatever the restricted reader refuses.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import dtypes
from ._gc import paused_gc
from .checkpoint import Checkpoint, TensorInfo
from .errors import CkptError, CorruptFileError, UnsafeFileError, UnsupportedFormatError
from .formats import open_checkpoint
from .formats.denylist import danger
from .formats.sniff import FORMATS, detect
from .formats.unpickler import (
    DANGEROUS_MODULES,
    DANGEROUS_NAMES,
    PICKLE_MAGIC,
    Walk,
    collect_globals,
    is_allowed,
    is_dangerous,
    is_torchscript_name,
    resolve_name,
)
from .sources import CHUNK, Source

SAFE, DANGEROUS, UNKNOWN = "safe", "dangerous", "unknown"

# torch.hub: HASH_REGEX = re.compile(r'-([a-f0-9]*)\.'), searched in the file name; check_hash then
# compares that prefix with the sha256 hex digest. Six hex digits at least, to avoid judging dates.
HASH_SUFFIX = re.compile(r"-([a-f0-9]{6,64})\.")
MAX_NESTED_DEPTH = 3
MAX_FINDINGS_PER_KIND = 50


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlobalRef:
    """One reference to a global in a pickle."""

    name: str  # module.name as Python would import it (Python 2 spellings mapped)
    verdict: str  # safe | dangerous | unknown
    where: str  # which pickle: zip member, legacy pickle, ...
    offset: int  # file offset of the opcode (-1 inside compressed members or nested bytes)
    opcode: str  # GLOBAL | STACK_GLOBAL | INST | EXT1/2/4
    spelled: str | None = None  # the name as written, when Python maps it (``__builtin__.eval``)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "verdict": self.verdict, "where": self.where, "offset": self.offset}
        d["opcode"] = self.opcode
        if self.spelled:
            d["spelled"] = self.spelled
        return d


# Finding kinds reported as warnings unless the user asks (--strict, or the policy's warn-on / strict):
# a hash-like suffix in a file name may be a date or a short git SHA (torch.hub's rule cannot tell).
DEFAULT_WARN = frozenset({"hash-mismatch", "no-weight-files"})
# Kinds that always fail: a policy can never turn them into warnings.
NEVER_WARN = frozenset({"dangerous-global", "unresolved-global", "unsafe-build", "unknown-opcode"})
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    kind: str  # dangerous-global, unknown-global, hash-mismatch, nan, ... (see README)
    message: str
    where: str | None = None
    severity: str = ERROR  # error (fails the run: exit 1) | warning (reported, exit 0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "where": self.where, "severity": self.severity}


@dataclass(frozen=True)
class PickleInfo:
    where: str
    offset: int  # file offset of the first opcode (-1 inside compressed members or nested bytes)
    length: int  # bytes walked
    protocol: int | None
    opcodes: int
    complete: bool  # reached STOP
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where, "offset": self.offset, "length": self.length, "protocol": self.protocol,
            "opcodes": self.opcodes, "complete": self.complete, "error": self.error,
        }  # fmt: skip


@dataclass
class ScanReport:
    """The answer of :func:`scan`: ``safe`` when there is no finding; the pickles, the globals they reference, and the findings. ``to_dict()`` is the ``--json`` output."""

    path: str
    format: str  # torch-zip | torchscript | torch-legacy | torch-tar | pickle | safetensors | onnx
    pickles: list[PickleInfo] = field(default_factory=list)
    globals: list[GlobalRef] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values_checked: bool = False
    tensors_checked: int = 0
    sha256: str | None = None

    @property
    def safe(self) -> bool:
        """No failing finding: no dangerous or unknown global and no integrity problem (warnings aside)."""
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def warnings(self) -> list[Finding]:
        """The findings reported as warnings (a hash-like suffix that may be a date, ...): they do not fail."""
        return [f for f in self.findings if f.severity == WARNING]

    def __repr__(self) -> str:
        kinds = sorted({f.kind for f in self.findings if f.severity == ERROR})
        n = len(self.findings) - len(self.warnings)
        verdict = "ok" if self.safe else f"{n} findings ({', '.join(kinds)})"
        return f"<ScanReport {os.path.basename(self.path)} ({self.format}): {verdict}>"

    def global_summary(self) -> list[dict[str, Any]]:
        """One entry per distinct global: name, verdict, how often and where it is referenced."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for g in self.globals:
            e = out.setdefault((g.name, g.verdict), {"name": g.name, "verdict": g.verdict, "count": 0, "where": []})
            e["count"] += 1
            if g.where not in e["where"]:
                e["where"].append(g.where)
            if g.spelled and "spelled" not in e:
                e["spelled"] = g.spelled
        order = {DANGEROUS: 0, UNKNOWN: 1, SAFE: 2}
        return sorted(out.values(), key=lambda e: (order.get(e["verdict"], 3), e["name"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "safe": self.safe,
            "globals": self.global_summary(),
            "findings": [f.to_dict() for f in self.findings],
            "pickles": [p.to_dict() for p in self.pickles],
            "notes": self.notes,
            "values_checked": self.values_checked,
            "tensors_checked": self.tensors_checked,
            "sha256": self.sha256,
        }


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------
def classify(qualname: str, *, torchscript: bool = False) -> str:
    """safe / dangerous / unknown for a resolved ``module.name`` (same allowlist as the reader)."""
    if is_allowed(qualname) or (torchscript and is_torchscript_name(qualname)):
        return SAFE
    return DANGEROUS if is_dangerous(qualname) else UNKNOWN


# --------------------------------------------------------------------------------------------
# The opcode walk: the unpickler's interpreter with its collect-globals policy (never executes anything)
# --------------------------------------------------------------------------------------------
_Walk = Walk


def walk_pickle(buf: Any, pos: int = 0, end: int | None = None) -> Walk:
    """Walk one pickle from ``buf[pos:]`` (never past ``end``); collect the globals it references.

    Never raises for a malformed pickle: the walk stops and ``error`` says why, keeping every global
    seen before that point (``pickle.load`` would already have run them).
    """
    return collect_globals(buf, pos, end)


# --------------------------------------------------------------------------------------------
# The scanner
# --------------------------------------------------------------------------------------------
class _Scanner:
    def __init__(self, src: Source, values: bool, warn: frozenset[str] = DEFAULT_WARN) -> None:
        self.src = src
        self.warn = warn - NEVER_WARN
        self.path = path = src.name
        self.mm = src.buffer()
        self.size = len(self.mm)
        self.values = values
        self.report = ScanReport(path=path, format="unknown")
        self.torchscript = False
        self._counts: dict[str, int] = {}

    # -- bookkeeping --------------------------------------------------------------------------
    def find(self, kind: str, message: str, where: str | None = None) -> None:
        n = self._counts.get(kind, 0) + 1
        self._counts[kind] = n
        if n <= MAX_FINDINGS_PER_KIND:
            self.report.findings.append(Finding(kind, message, where, WARNING if kind in self.warn else ERROR))
        elif n == MAX_FINDINGS_PER_KIND + 1:
            self.report.notes.append(f"more than {MAX_FINDINGS_PER_KIND} {kind} findings; the rest are not listed")

    def record_walk(self, w: _Walk, where: str, base: int | None, pos: int, depth: int = 0) -> None:
        """Turn a walk of buf[pos:] into a PickleInfo, globals and findings. ``base``: file offset of buf[0]
        (None when buf is not the file itself: a decompressed member, a bytes constant)."""

        def at(off: int) -> int:
            return -1 if base is None or off < 0 else base + off

        self.report.pickles.append(PickleInfo(where, at(pos), w.end - pos, w.protocol, w.opcodes, w.complete, w.error))
        seen: set[str] = set()
        for module, gname, off, opcode in w.globals:
            rmod, rname = resolve_name(module, gname)
            qual = f"{rmod}.{rname}"
            spelled = f"{module}.{gname}" if (rmod, rname) != (module, gname) else None
            verdict = classify(qual, torchscript=self.torchscript)
            self.report.globals.append(GlobalRef(qual, verdict, where, at(off), opcode, spelled))
            if verdict == SAFE or qual in seen:
                continue
            seen.add(qual)
            also = f" (written as {spelled})" if spelled else ""
            if verdict == DANGEROUS:
                self.find(
                    "dangerous-global",
                    f"references {qual}{also}, which {danger(qual)}: pickle.load or torch.load(weights_only=False) "
                    "would import and can call it",
                    where,
                )
            else:
                self.find(
                    "unknown-global",
                    f"references {qual}{also}, which is not on the tensor allowlist: torch.load(weights_only=True) "
                    "refuses it and pickle.load would import it",
                    where,
                )
        for off, why in w.unresolved:
            self.report.globals.append(GlobalRef("<unresolved>", DANGEROUS, where, at(off), "STACK_GLOBAL"))
            self.find(
                "unresolved-global",
                f"STACK_GLOBAL at byte {at(off)} imports a name built at load time ({why}): it cannot be checked",
                where,
            )
        for off, opcode, code in w.extensions:
            self.report.globals.append(GlobalRef(f"<copyreg extension {code}>", DANGEROUS, where, at(off), opcode))
            self.find(
                "dangerous-global", f"{opcode} imports copyreg extension {code}, which can name any global", where
            )
        for off, qual in w.builds:
            rmod, _, rname = qual.rpartition(".")
            rmod, rname = resolve_name(rmod, rname)
            self.find(
                "unsafe-build",
                f"BUILD at byte {at(off)} sets attributes on {rmod}.{rname} itself (monkey-patching on load)",
                where,
            )
        for off, opcode in w.buffers:
            self.find(
                "unknown-opcode", f"{opcode} at byte {at(off)}: out-of-band buffers have no place in a file", where
            )
        for i, (off, data) in enumerate(w.nested):
            if depth >= MAX_NESTED_DEPTH:
                self.report.notes.append(f"{where}: pickles nested deeper than {MAX_NESTED_DEPTH} were not walked")
                break
            label = f"{where} > bytes constant {i + 1} at byte {at(off)}"
            self.walk_stream(data, 0, len(data), label, None, depth=depth + 1, probe=True)

    def walk_stream(
        self, buf: Any, pos: int, end: int, where: str, base: int | None, *, depth: int = 0, probe: bool = False
    ) -> int:
        """Walk pickles back to back in buf[pos:end]. Returns where walking stopped.

        ``probe``: buf may not be a pickle at all (a renamed zip member, a bytes constant): ignore it silently
        unless the first walk reaches STOP or names a global.
        """
        k = 0
        while pos < end:
            k += 1
            w = walk_pickle(buf, pos, end)
            if (k > 1 or probe) and not (w.complete or w.globals or w.extensions or w.unresolved or w.builds):
                if k > 1:
                    self.find("trailing-data", f"{end - pos} bytes follow the pickle's STOP (at byte {pos})", where)
                return pos
            label = where if k == 1 else f"{where}, pickle {k} (at byte {pos})"
            self.record_walk(w, label, base, pos, depth)
            if not w.complete:
                self.find(
                    "invalid-pickle",
                    f"not a valid pickle at byte {w.end}: {w.error}; pickle.load stops there, after running every "
                    "opcode before it",
                    label,
                )
                return pos
            if k > 1:
                self.find(
                    "hidden-pickle",
                    "another pickle follows the first one's STOP: torch.load ignores it, other loaders may not",
                    label,
                )
            pos = w.end
        return pos

    # -- formats --------------------------------------------------------------------------------
    def scan(self) -> ScanReport:
        head = bytes(self.mm[:4096])
        fmt = detect(head, self.size)  # the readers' own detectors
        hook = getattr(FORMATS.get(fmt or ""), "scan", None)  # the format knows where its pickles are
        if hook is None:
            self.scan_bare(head)
        else:
            hook(self)
        self.check_hash_suffix()
        return self.report

    # -- the ScanContext side (ckptool.formats.scanning) -----------------------------------------
    def set_format(self, name: str) -> None:
        self.report.format = name

    def note(self, text: str) -> None:
        self.report.notes.append(text)

    def count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    def walked_at(self, offset: int) -> bool:
        return any(p.offset == offset for p in self.report.pickles)

    def values_pass(self) -> None:
        """The reader's view of the file, and the value checks on it (or the finding/note of its refusal)."""
        ck = self.open_reader()
        if ck is not None:
            with ck:
                self.check_values(ck)

    def scan_bare(self, head: bytes) -> None:
        w = walk_pickle(self.mm, 0, self.size)
        if not (w.complete or w.globals) or (w.opcodes < 2 and not head.startswith(PICKLE_MAGIC)):
            try:
                from .formats.sniff import sniff_bytes

                sniff_bytes(head, self.size)
            except UnsupportedFormatError as e:
                raise UnsupportedFormatError(e.message, path=self.path, hint=e.hint) from None
            raise UnsupportedFormatError(  # pragma: no cover - sniff_bytes raises for anything left
                "not a checkpoint ckptool recognises", path=self.path
            )
        self.report.format = "pickle"
        self.report.notes.append("a bare pickle stream (not torch.save output): globals listed, values not checked")
        self.walk_stream(self.mm, 0, self.size, "pickle", 0)

    # -- the reader, values, hashes ---------------------------------------------------------------
    def open_reader(self) -> Checkpoint | None:
        """The restricted reader's view, for the value checks; its refusal is a finding (or a note when the
        globals already explain it)."""
        if any(
            self._counts.get(k) for k in ("dangerous-global", "unknown-global", "unresolved-global", "unsafe-build")
        ):
            self.report.notes.append("values not checked: the file references globals the reader refuses")
            return None
        if any(f.kind == "invalid-pickle" and (f.where or "").endswith("data.pkl") for f in self.report.findings):
            self.report.notes.append("values not checked: data.pkl is not a valid pickle")
            return None
        try:
            return open_checkpoint(self.path)
        except UnsupportedFormatError as e:
            self.report.notes.append(f"values not checked: ckptool's reader does not read this file ({e.message})")
            return None
        except CkptError as e:
            kind = "unsafe" if isinstance(e, UnsafeFileError) else "corrupt"
            if kind == "unsafe" and self._counts.get("onnx-external-data"):
                self.report.notes.append("values not checked: external data outside the model's folder")
                return None
            self.find(kind, f"the reader refuses it: {e.message}" + (f" ({e.hint})" if e.hint else ""))
            return None

    def check_values(self, ck: Checkpoint) -> None:
        if not self.values:
            self.report.notes.append("values not checked (--no-values)")
            return
        self.report.values_checked = True
        buf = bytearray(CHUNK)  # one buffer for every read below
        with paused_gc():
            counts, rest, together = _small_float_stats(ck, buf)
        self.report.tensors_checked += together
        tensors = ck.tensors
        for i in sorted([*rest, *counts]):  # the findings in tensor order, as if checked one by one
            t = tensors[i]
            got = counts.get(i)
            if got is not None:
                nan, inf, neg, n = got[0], got[1], 0, t.numel
            else:
                try:
                    nan, inf, neg, n = tensor_stats(ck, t, buf)  # type: ignore[assignment]
                except CkptError as e:
                    self.find("corrupt", f"tensor {t.name!r}: cannot read its values: {e.message}", t.name)
                    continue
                if n is None:
                    continue
                self.report.tensors_checked += 1
            if nan:
                self.find("nan", f"{nan} NaN of {n} values", t.name)
            if inf:
                self.find("inf", f"{inf} Inf of {n} values", t.name)
            if neg and t.name.rsplit(".", 1)[-1] == "running_var":
                self.find(
                    "negative-running-var",
                    f"{neg} negative values: a variance cannot be negative, batch norm would produce NaN",
                    t.name,
                )

    def check_hash_suffix(self) -> None:
        base = os.path.basename(self.path)
        m = HASH_SUFFIX.search(base)
        if not m:
            return
        prefix = m.group(1)
        if not self.values:
            self.report.notes.append(f"file name carries hash prefix {prefix}; not checked (--no-values)")
            return
        digest = sha256_file(self.path)
        self.report.sha256 = digest
        if not digest.startswith(prefix):
            self.find(
                "hash-mismatch",
                f"the name says sha256 starts with {prefix} but it is {digest[: max(len(prefix), 8)]}...: "
                "torch.hub (check_hash=True) would reject it; the file was modified or corrupted, or the suffix "
                "is not a hash (a date, a short git SHA)",
            )


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
def _chunks(ck: Checkpoint, t: TensorInfo, buf: bytearray | None = None) -> Iterator[bytes | memoryview]:
    """The bytes to check for a tensor, streamed through the checkpoint's one byte path: its own elements when
    contiguous, otherwise the span of its storage that it touches (a superset; never materialises a strided
    or broadcast view). Bytes come as stored: :func:`tensor_stats` reads them in the file's byte order."""
    st = t.storage
    if st is None:
        raise CorruptFileError(f"tensor {t.name!r} has no storage", path=ck.path)
    size = t.itemsize
    lo, hi = (t.storage_offset, t.storage_offset + t.numel) if t.is_contiguous else t.span()
    if buf is None or len(buf) % max(size, 1):
        buf = bytearray(CHUNK - CHUNK % max(size, 1))
    yield from ck.storage_chunks(st, lo * size, hi * size, buf)


# Small floating tensors are checked together: at 100k tensors of a few values each, one read and one numpy
# pass per tensor is all the cost (7 s for a 100k-tensor safetensors file). Their bytes are read window by
# window (at most CHUNK bytes, the tensors of one dtype in file order, gaps included), and a window where every
# value is finite clears all its tensors at once; only a window with a NaN or an Inf is counted tensor by tensor.
_TOGETHER = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "bfloat16": "<u2"}
_TOGETHER_MAX = 64 * 1024  # bytes: a larger tensor is streamed on its own (one read is most of its cost)


def _small_float_stats(ck: Checkpoint, buf: bytearray) -> tuple[dict[int, tuple[int, int]], list[int], int]:
    """({tensor index: (NaN count, Inf count)} for the tensors checked together that hold a NaN or an Inf,
    the indices of the tensors left to :func:`tensor_stats`, how many were checked together).

    Together: float16/32/64 and bfloat16 tensors of at most :data:`_TOGETHER_MAX` bytes whose own bytes are one
    raw little-endian run inside their storage and the file, not a batch norm ``running_var`` (its negative
    count is a finding of its own), and with no CRC-32 to verify on the way (the streamed path checks it)."""
    rest: list[int] = []
    if ck.byteorder == "big":
        return {}, list(range(len(ck.tensors))), 0
    sizes: dict[str, int] = {}
    groups: dict[tuple[str, str], list[tuple[int, int, int]]] = {}  # (file, dtype) -> (offset, nbytes, index)
    crc_ok = not ck.verify_crc
    for i, t in enumerate(ck.tensors):
        nb = t.nbytes
        st = t.storage
        src = None if st is None else st.source
        if (
            src is None
            or nb == 0
            or nb > _TOGETHER_MAX
            or t.dtype not in _TOGETHER
            or src.decoder is not None
            or (src.crc32 is not None and not crc_ok)
            or (t.stride is not None and not t.is_contiguous)
            or t.name.endswith("running_var")
        ):
            rest.append(i)
            continue
        start = t.storage_offset * t.itemsize
        path = src.path
        size = sizes.get(path)
        if size is None:
            size = sizes[path] = ck.source(path).size
        if start < 0 or start + nb > src.nbytes or src.offset + start + nb > size:
            rest.append(i)  # tensor_stats names what is wrong
            continue
        key = (path, t.dtype)
        g = groups.get(key)
        if g is None:
            g = groups[key] = []
        g.append((src.offset + start, nb, i))
    if not groups:
        return {}, rest, 0
    import numpy as np

    counts: dict[int, tuple[int, int]] = {}
    mv = memoryview(buf)
    together = 0
    for (path, dtype), g in groups.items():
        item = _TOGETHER[dtype]
        isz = int(item[2])
        cols = np.array(g, dtype=np.int64)
        cols = cols[np.argsort(cols[:, 0], kind="stable")]
        starts, idx = cols[:, 0], cols[:, 2]
        ends = starts + cols[:, 1]
        reach = np.maximum.accumulate(ends)  # the furthest byte of the tensors so far: non-decreasing
        k, m = 0, len(starts)
        while k < m:  # one window: the tensors from k whose bytes end within len(buf) of its start, aligned
            ws = int(starts[k])
            j = max(int(np.searchsorted(reach, ws + len(buf), side="right")), k + 1)
            off = (starts[k:j] - ws) % isz
            if off.any():
                j = k + int(np.argmax(off != 0))
            we = int(reach[j - 1])
            try:
                ck.source(path).read_into(ws, mv[: we - ws])
            except CkptError:  # the file changed under us: each tensor on its own, to name the one that fails
                rest.extend(int(i) for i in idx[k:j])
                k = j
                continue
            a = np.frombuffer(buf, dtype=item, count=(we - ws) // isz)
            if dtype == "bfloat16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            if not np.isfinite(a).all():  # somewhere in the window: count tensor by tensor
                for s0, e0, i in zip(starts[k:j].tolist(), ends[k:j].tolist(), idx[k:j].tolist(), strict=True):
                    seg = a[(s0 - ws) // isz : (e0 - ws) // isz]
                    nan, inf = int(np.count_nonzero(np.isnan(seg))), int(np.count_nonzero(np.isinf(seg)))
                    if nan or inf:
                        counts[i] = (nan, inf)
            together += j - k
            k = j
    return counts, rest, together


def tensor_stats(ck: Checkpoint, t: TensorInfo, buf: bytearray | None = None) -> tuple[int, int, int, int | None]:
    """(NaN count, Inf count, negative count, values checked) of a floating tensor; n=None if not floating.
    ``buf``: the read buffer to reuse (one is made when None)."""
    import numpy as np

    dt = dtypes.lookup(t.dtype)
    if not dt.is_float or t.dtype.startswith("q") or t.numel == 0:
        return 0, 0, 0, None
    order = ">" if ck.byteorder == "big" else "<"
    nan = inf = neg = n = 0
    for chunk in _chunks(ck, t, buf):
        if t.dtype in ("float32", "float64", "float16", "complex64", "complex128"):
            kind = {"float32": "f4", "float64": "f8", "float16": "f2", "complex64": "f4", "complex128": "f8"}[t.dtype]
            a = np.frombuffer(chunk, dtype=order + kind)
        elif t.dtype == "bfloat16":
            a = (np.frombuffer(chunk, dtype=order + "u2").astype(np.uint32) << 16).view(np.float32)
        else:  # float8 variants: bit patterns
            b = np.frombuffer(chunk, dtype=np.uint8)
            n += b.size
            if t.dtype == "float8_e4m3fn":
                nan += int(np.count_nonzero((b & 0x7F) == 0x7F))
                neg += int(np.count_nonzero((b & 0x80) & ((b & 0x7F) != 0)))
            elif t.dtype == "float8_e5m2":
                special = (b & 0x7C) == 0x7C
                nan += int(np.count_nonzero(special & ((b & 0x03) != 0)))
                inf += int(np.count_nonzero(special & ((b & 0x03) == 0)))
                neg += int(np.count_nonzero((b & 0x80) & ((b & 0x7F) != 0) & ~special))
            else:  # fnuz variants: 0x80 is the only NaN, no Inf
                nan += int(np.count_nonzero(b == 0x80))
                neg += int(np.count_nonzero(b > 0x80))
            continue
        n += a.size if not t.dtype.startswith("complex") else a.size // 2
        finite = np.isfinite(a)
        if not finite.all():
            nan += int(np.count_nonzero(np.isnan(a)))
            inf += int(np.count_nonzero(np.isinf(a)))
        if not t.dtype.startswith("complex"):
            neg += int(np.count_nonzero(a < 0))
    return nan, inf, neg, n


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def scan(
    path: str | os.PathLike[str], *, values: bool = True, strict: bool = False, warn: frozenset[str] | None = None
) -> ScanReport:
    """Scan one file statically. Raises a :class:`~ckptool.errors.CkptError` when it cannot be scanned at all
    (missing, unreadable, not a known format, a zip without a readable directory).

    ``values=False`` skips everything that reads tensor bytes (NaN/Inf, running_var, CRCs of storage records,
    the filename hash) for a header-only pass. ``warn``: the finding kinds reported as warnings (they do not
    make the report unsafe; default :data:`DEFAULT_WARN`, the file-name hash suffix); ``strict=True`` makes
    every finding fail. Dangerous globals always fail.
    """
    path = os.fspath(path)
    from .sources import open_source

    src = open_source(path, allow_empty=False)
    try:
        kinds = frozenset() if strict else (DEFAULT_WARN if warn is None else frozenset(warn))
        with paused_gc():  # see ckptool._gc: the walk and the reader build many small objects, no cycles to free
            return _Scanner(src, values, kinds).scan()
    except RecursionError:
        raise CorruptFileError("structure nests too deeply to scan", path=path) from None
    except MemoryError:
        raise CorruptFileError("file asks for more memory than it can hold", path=path) from None
    finally:
        src.close()


__all__ = ["DANGEROUS", "DANGEROUS_MODULES", "DANGEROUS_NAMES", "DEFAULT_WARN", "NEVER_WARN", "SAFE", "UNKNOWN", "Finding", "GlobalRef", "PickleInfo", "ScanReport", "classify", "scan",
           "walk_pickle"]  # fmt: skip
