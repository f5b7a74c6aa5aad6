"""``export --onnx``: checkpoint -> strictly loaded torch model -> torch's exporter -> checked, verified ONNX.

Steps (each a clear error when it cannot be done, and no file under the target name unless all of them
pass):

1. load the weights into the architecture, strictly (:func:`ckptool.parity.load_reference`: the same prefix
   and legacy-BatchNorm forms ``check`` accepts), eval mode;
2. check the input shape on the meta device (no compute), so a shape the model cannot take is a one-line
   error, not an exporter traceback;
3. ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter; onnxscript), input ``input``,
   output ``logits`` (``features`` with ``features_only``), a symbolic batch dimension ``batch``;
4. a light clean-up of the graph (constant folding, no-op removal) that keeps every weight under its
   state_dict name and bit for bit: BatchNorm is *not* folded into the convolutions (onnxruntime fuses it
   when it loads the model), so ``ckptool diff model.pth model.onnx`` compares like with like;
5. stream the model to disk: one self-contained file below 2 GB, external data (``OUT.data``) above it or on
   request; written in a temporary folder next to the target;
6. ``onnx.checker.check_model(path, full_check=True)``, then the parity check (:mod:`ckptool.parity`);
7. only then are the files renamed into place (:func:`ckptool.convert.atomic.atomic_outputs`). A failed parity check
   leaves nothing behind either: the result says by how much it failed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._extras import require
from ..checkpoint import Checkpoint
from ..errors import (  # the error classes live in errors.py; importable from here as before
    ExportFailedError,
    OnnxCheckError,
    UsageError,
    first_line,
)
from ..parity import (
    DEFAULT_ATOL,
    DEFAULT_BATCH,
    DEFAULT_RTOL,
    DEFAULT_SEED,
    DEFAULT_STOL,
    InputShapeError,
    ParityReport,
    load_reference,
    run_parity,
)
from .atomic import atomic_outputs, check_output

EXPORT_SAMPLES = 2  # the parity check after an export: one batch of 2 (a batch above the example's 1)
DEFAULT_OPSET = 18  # what torch's exporter emits natively (torchlib is written for opset 18): no conversion
MIN_OPSET = 18  # torch's version converter does not go below 18
MAX_OPSET = 23  # torch 2.13's ONNX_MAX_OPSET; onnxruntime 1.32 runs 18..23 (checked in the tests)
PROTOBUF_LIMIT = 2**31 - 1  # a protobuf message (a self-contained .onnx) cannot be larger
INLINE_BELOW = 1024  # with external data, tensors smaller than this stay in the .onnx (as onnx.save does)
ALIGN = 4096  # external data offsets: page-aligned, so onnxruntime can map them


@dataclass
class OnnxExportResult:
    """What ``export --onnx`` did; ``to_dict()`` is the ``--json`` output."""

    source: str
    path: str
    arch: str
    opset: int
    input_name: str
    input_shape: list[int]
    output_names: list[str]
    output_shapes: list[list[int | str]]
    features_only: bool
    external_data: bool
    data_path: str | None
    nbytes: int  # the .onnx file
    data_nbytes: int  # the external data file (0 without)
    checked: bool  # onnx.checker full check passed
    parity: ParityReport | None  # None with verify=False
    written: bool  # the files are in place (False when parity failed)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.parity is None or self.parity.passed

    def __repr__(self) -> str:
        parity = "skipped" if self.parity is None else ("passed" if self.parity.passed else "FAILED")
        state = "written" if self.written else "NOT written"
        return f"<OnnxExportResult {os.path.basename(self.path)}: {self.arch}, opset {self.opset}, {state}, parity {parity}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": "onnx",
            "source": self.source,
            "path": self.path,
            "written": self.written,
            "passed": self.passed,
            "arch": self.arch,
            "opset": self.opset,
            "input_name": self.input_name,
            "input_shape": self.input_shape,
            "dynamic_batch": True,
            "output_names": self.output_names,
            "output_shapes": self.output_shapes,
            "features_only": self.features_only,
            "external_data": self.external_data,
            "data_path": self.data_path,
            "bytes": self.nbytes,
            "data_bytes": self.data_nbytes,
            "checked": self.checked,
            "verified": self.parity is not None,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------------
# shape probe
# ---------------------------------------------------------------------------------------------------
def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(map(str, shape))


def probe_outputs(model: Any, shape: tuple[int, ...], what: str) -> list[tuple[int, ...]]:
    """The output shapes for one input of ``shape``, found on the meta device (no compute, no memory);
    :class:`InputShapeError` when the model cannot take it. Falls back to a real forward pass for models
    the meta device cannot run."""
    import torch

    from ..parity import _torch_outputs

    def shapes(out: Any) -> list[tuple[int, ...]]:
        outs = _torch_outputs(out)
        if not outs:
            raise ExportFailedError(f"{what} returns no tensor (it returned {type(out).__name__})")
        return [tuple(int(d) for d in o.shape) for o in outs]

    state = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.inference_mode():
            return shapes(torch.func.functional_call(model, state, (torch.empty(shape, device="meta"),)))
    except ExportFailedError:
        raise
    except Exception:
        pass  # a shape error, or a model the meta device cannot run: the real thing decides
    try:
        with torch.inference_mode():
            return shapes(model(torch.zeros(shape)))
    except ExportFailedError:
        raise
    except Exception as e:
        raise InputShapeError(
            f"{what} cannot take an input of shape {_shape_text(shape)}: {first_line(e)}",
            hint="give the shape it takes with --input-shape N,C,H,W",
        ) from None


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(log: io.StringIO) -> Iterator[None]:
    """The exporter prints progress to stdout and warnings to stderr: keep both off the user's streams
    (stdout may be carrying --json)."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _export(model: Any, shape: tuple[int, ...], output_names: list[str], opset: int) -> Any:
    import torch

    log = io.StringIO()
    example = torch.zeros(shape)
    try:
        with _quiet(log):
            prog = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=["input"],
                output_names=output_names,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                optimize=False,  # see _tidy: the exporter's optimizer folds BatchNorm into the weights
                external_data=False,
            )
    except Exception as e:
        raise ExportFailedError(
            f"torch.onnx.export failed: {_explain(e)}",
            hint="rerun with CKPTOOL_DEBUG=1 for the exporter's full report",
        ) from (e if os.environ.get("CKPTOOL_DEBUG") else None)
    if prog is None:  # pragma: no cover - only for the legacy exporter
        raise ExportFailedError("torch.onnx.export returned no program")
    return prog.model


def _explain(e: BaseException) -> str:
    """The exporter's own summary plus the root cause (e.g. torch.export's data-dependent guard), one line."""

    def first(x: BaseException) -> str:
        line = first_line(x, 10**6).split(" Next steps:")[0] if str(x).strip() else ""
        return f"{type(x).__name__}: {line}" if line else type(x).__name__

    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in chain and len(chain) < 20:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = first(chain[0])[:200]
    if len(chain) > 1:
        text += f" -- caused by {first(chain[-1])[:300]}"
    return text


def _tidy(model: Any) -> str | None:
    """Fold constants and remove no-ops, keeping every initializer (name and bytes) as it is. Returns a note
    when the clean-up could not run (the unoptimized graph is still correct, and parity checks it)."""
    try:
        from onnx_ir.passes import common as passes
        from onnxscript import optimizer, rewriter

        optimizer.fold_constants(model)
        rules = [r for r in getattr(rewriter, "_DEFAULT_REWRITE_RULES", ()) if "BatchNorm" not in (r.name or "")]
        if rules:
            rewriter.rewrite(model, pattern_rewrite_rules=rules)
        optimizer.remove_unused_nodes(model)
        for p in (passes.RemoveUnusedOpsetsPass(), passes.OutputFixPass(), passes.NameFixPass()):
            p(model)
    except Exception as e:  # an optional nicety: never fail the export over it
        return f"graph clean-up skipped ({type(e).__name__}: {str(e)[:120]})"
    return None


# ---------------------------------------------------------------------------------------------------
# streamed writer
# ---------------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(num: int, length: int) -> bytes:
    return _varint(num << 3 | 2) + _varint(length)


def _tensor_bytes(t: Any) -> Any:
    """A tensor's little-endian bytes as a buffer, without a copy where numpy can view them."""
    import numpy as np

    if sys.byteorder == "little":
        try:
            arr = t.numpy()
            if isinstance(arr, np.ndarray) and arr.dtype.kind in "fiub" and arr.nbytes == t.nbytes:
                return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        except Exception:
            pass
    return t.tobytes()


@dataclass
class _Init:
    name: str
    header: bytes  # TensorProto fields other than the data
    data: Any  # a buffer (raw data) or None when ``whole`` holds the full TensorProto
    nbytes: int
    whole: bytes | None = None


def _plan_initializers(model: Any) -> list[_Init]:
    import onnx
    from onnx_ir import serde

    out = []
    for name, value in model.graph.initializers.items():
        t = value.const_value
        if t is None:
            raise ExportFailedError(f"the exported graph's initializer {name!r} has no value")
        data = _tensor_bytes(t)
        n = memoryview(data).nbytes
        expect = t.nbytes
        if n != expect or int(t.dtype) == onnx.TensorProto.STRING:  # packed / odd types: the serializer's way
            proto = serde.serialize_tensor(t)
            proto.name = name
            out.append(_Init(name, b"", None, 0, whole=proto.SerializeToString()))
            continue
        tp = onnx.TensorProto()
        tp.name = name
        tp.data_type = int(t.dtype)
        tp.dims.extend(int(d) for d in t.shape)
        out.append(_Init(name, tp.SerializeToString(), data, n))
    return out


def _graph_and_head(model: Any) -> tuple[bytes, bytes, bytes]:
    """The serialized model without its initializers, in three parts: the model's fields numbered below the
    graph (ir_version, producer, ...), the graph's fields, and the model's fields after the graph (opsets,
    metadata, functions). Written in that order, as every protobuf serializer orders them."""
    import onnx
    from onnx_ir import serde

    saved = dict(model.graph.initializers)
    model.graph.initializers.clear()
    try:
        proto = serde.serialize_model(model)
    finally:
        model.graph.initializers.update(saved)
    graph = proto.graph.SerializeToString()
    proto.ClearField("graph")
    before, after = onnx.ModelProto(), onnx.ModelProto()
    before.CopyFrom(proto)
    after.CopyFrom(proto)
    for fd, _ in proto.ListFields():
        (after if fd.number < 7 else before).ClearField(fd.name)
    return before.SerializeToString(), graph, after.SerializeToString()


def write_model(model: Any, fh: IO[bytes], *, data: IO[bytes] | None, data_name: str | None) -> int:
    """Stream ``model`` (an onnx_ir Model) to ``fh`` as one ModelProto, each weight written straight from
    its tensor's memory. With ``data``, weights of at least :data:`INLINE_BELOW` bytes go to that file
    (page-aligned) and the model refers to them as ``data_name``. Returns the external data size."""
    import onnx

    before, graph, after = _graph_and_head(model)
    inits = _plan_initializers(model)
    records: list[tuple[bytes, Any]] = []  # (TensorProto bytes before the data, data buffer or None)
    offset = 0
    placed: list[tuple[int, Any]] = []
    for it in inits:
        if it.whole is not None:
            records.append((it.whole, None))
        elif data is not None and it.nbytes >= INLINE_BELOW:
            offset = -(-offset // ALIGN) * ALIGN
            tp = onnx.TensorProto()
            tp.ParseFromString(it.header)
            tp.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", data_name or ""), ("offset", str(offset)), ("length", str(it.nbytes))):
                e = tp.external_data.add()
                e.key, e.value = k, v
            records.append((tp.SerializeToString(), None))
            placed.append((offset, it.data))
            offset += it.nbytes
        else:
            records.append((it.header + _len_field(9, it.nbytes), it.data))
    sizes = [len(pre) + (memoryview(buf).nbytes if buf is not None else 0) for pre, buf in records]
    glen = len(graph) + sum(len(_len_field(5, s)) + s for s in sizes)
    total = len(before) + len(_len_field(7, glen)) + glen + len(after)
    if total > PROTOBUF_LIMIT:
        raise ExportFailedError(
            f"the model would be a {total}-byte protobuf, over the 2 GB limit", hint="use --external-data"
        )
    fh.write(before)
    fh.write(_len_field(7, glen))
    fh.write(graph)
    for (pre, buf), s in zip(records, sizes, strict=True):
        fh.write(_len_field(5, s))
        fh.write(pre)
        if buf is not None:
            fh.write(memoryview(buf))
    fh.write(after)
    if data is None:
        return 0
    pos = 0
    for off, buf in placed:
        if off > pos:
            data.write(b"\0" * (off - pos))
        data.write(memoryview(buf))
        pos = off + memoryview(buf).nbytes
    return pos


class _ParityFailed(Exception):
    pass


def _init_bytes(model: Any) -> int:
    total = 0
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is not None:
            total += int(t.nbytes)
    return total


# ---------------------------------------------------------------------------------------------------
# the whole command
# ---------------------------------------------------------------------------------------------------
def export_onnx(
    ck: Checkpoint,
    out: str | os.PathLike[str],
    *,
    arch: str,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
    input_shape: tuple[int, ...] | None = None,
    opset: int = DEFAULT_OPSET,
    features_only: bool = False,
    external_data: bool = False,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    stol: float = DEFAULT_STOL,
    samples: int = EXPORT_SAMPLES,
    batch: int = DEFAULT_BATCH,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    status: Callable[[str], None] | None = None,
) -> OnnxExportResult:
    """Export ``ck`` in ``arch`` to the ONNX file ``out`` (see the module docstring for every step).

    Raises :class:`CkptError` subclasses (exit 2) for an unknown architecture, weights that do not fit
    (check's findings), an input shape the model cannot take, an exporter failure and a model failing the ONNX
    checker; in each case nothing is written. A failed parity check is *not* an exception: the result has
    ``passed`` False and ``written`` False. ``status(phase)`` is called as each step starts.
    """
    require("torch", "onnx", "onnxscript", extra="torch", what="export --onnx")
    say = status or (lambda _phase: None)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset {opset} is not supported: torch's exporter writes opsets {MIN_OPSET} to {MAX_OPSET}",
            hint=f"the default is {DEFAULT_OPSET}",
        )
    target = check_output(out, force=force, protect=[ck.path])
    data_target = target.with_name(target.name + ".data")
    if external_data:
        check_output(data_target, force=force, protect=[ck.path])
    seconds: dict[str, float] = {}
    notes: list[str] = []

    t0 = time.perf_counter()
    say("loading the weights")
    model, report = load_reference(ck, arch, num_classes=num_classes, arch_args=arch_args, features_only=features_only)
    arch_name = report.arch or arch
    if report.part is not None and not features_only:
        features_only = True
        notes.append(f"the file holds only the {report.part} backbone: exported as --features-only")
    what = f"{arch_name}" + (" (features)" if features_only else "")
    spec = report.spec
    shape = tuple(input_shape) if input_shape else tuple(spec.input_shape if spec is not None else (1, 3, 224, 224))
    out_shapes = probe_outputs(model, shape, what)
    if features_only:
        names = ["features"] if len(out_shapes) == 1 else [f"features_{i}" for i in range(len(out_shapes))]
    else:
        names = ["logits"] if len(out_shapes) == 1 else [f"output_{i}" for i in range(len(out_shapes))]
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("exporting with torch.onnx (dynamo)")
    onnx_model = _export(model, shape, names, opset)
    note = _tidy(onnx_model)
    if note:
        notes.append(note)
    onnx_model.metadata_props["ckptool.source"] = os.path.basename(ck.path)
    onnx_model.metadata_props["ckptool.arch"] = arch_name + ("[features]" if features_only else "")
    seconds["export"] = time.perf_counter() - t0
    graph_outs = [[d if isinstance(d, int) else str(d) for d in _dims(v)] for v in onnx_model.graph.outputs]

    if not external_data and _init_bytes(onnx_model) > PROTOBUF_LIMIT - (64 << 20):
        external_data = True
        notes.append("the weights exceed protobuf's 2 GB limit: written as external data")
    paths = [data_target, target] if external_data else [target]
    parity: ParityReport | None = None
    nbytes = data_nbytes = 0
    checked = False
    written = False
    try:
        with atomic_outputs(paths, force=force, protect=[ck.path]) as tmpdir:
            staged = Path(tmpdir) / target.name
            t0 = time.perf_counter()
            say("writing")
            data_nbytes = _write_files(onnx_model, staged, external_data, data_target.name)
            nbytes = staged.stat().st_size
            del onnx_model  # the weights stay in the torch model; drop the exporter's graph before running
            seconds["write"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            say("onnx.checker (full check)")
            _check(staged, target)
            checked = True
            seconds["check"] = time.perf_counter() - t0
            if verify:
                t0 = time.perf_counter()
                say("parity: torch vs onnxruntime")
                parity = run_parity(
                    model,
                    staged,
                    samples=samples,
                    batch=batch,
                    seed=seed,
                    atol=atol,
                    rtol=rtol,
                    stol=stol,
                    input_shape=tuple(shape),
                    default_shape=tuple(shape),
                )
                parity.onnx = os.fspath(target)
                parity.checkpoint = ck.path
                parity.arch = arch_name
                parity.features_only = features_only
                seconds["parity"] = time.perf_counter() - t0
                if not parity.passed:
                    raise _ParityFailed()
            say("moving into place")
        written = True
    except _ParityFailed:
        written = False
    return OnnxExportResult(
        source=ck.path,
        path=os.fspath(target),
        arch=arch_name,
        opset=opset,
        input_name="input",
        input_shape=list(shape),
        output_names=names,
        output_shapes=graph_outs,
        features_only=features_only,
        external_data=external_data,
        data_path=os.fspath(data_target) if external_data else None,
        nbytes=nbytes,
        data_nbytes=data_nbytes,
        checked=checked,
        parity=parity,
        written=written,
        seconds=seconds,
        notes=notes + (parity.notes if parity is not None else []),
    )


def _dims(v: Any) -> list[Any]:
    shape = getattr(v, "shape", None)
    if shape is None:
        return []
    out = []
    for d in shape:
        out.append(d if isinstance(d, int) else str(getattr(d, "value", d)))
    return out


def _write_files(model: Any, staged: Path, external: bool, data_name: str) -> int:
    if not external:
        with open(staged, "wb") as fh:
            return write_model(model, fh, data=None, data_name=None)
    with open(staged, "wb") as fh, open(staged.with_name(data_name), "wb") as dh:
        return write_model(model, fh, data=dh, data_name=data_name)


def _check(staged: Path, target: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(os.fspath(staged), full_check=True)
    except Exception as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:300]
        raise OnnxCheckError(
            f"the exported model fails onnx.checker (full check): {first}",
            path=target,
            hint="nothing was written; this is a bug in the exporter or in ckptool",
        ) from None
