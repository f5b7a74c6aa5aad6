"""Does an ONNX model compute what the checkpoint computes? Seeded inputs through torch and onnxruntime.

The pass rule (torch is the reference ``b``, onnxruntime gives ``a``; ``S`` is the scale of the output,
``max |b|`` over the finite elements of that output, all samples together):

    an element fails  <=>  |a - b| > atol  AND  |a - b| > rtol * |b|  AND  |a - b| > stol * S

i.e. an element passes when it is within *any* of the three tolerances. The first two are Polygraphy's
element-wise rule; the third, the *scale tolerance*, judges a difference against the magnitude of the whole
output. It is what keeps an honest export of a deep backbone passing: a VGG16-BN ``features`` output has
scale ~48, float32 noise between two convolution implementations reaches ~3e-4 on elements that are near
zero after the last ReLU, i.e. ~6e-6 of the scale, above both ``atol`` 1e-4 and ``rtol * |b|`` (issue 9: 12 of
50,176 elements failed on some CPUs). With ``stol`` 1e-4 such an element needs 17x more noise to fail, while a
changed weight moves outputs by 1e-3 to 1e-1 of the scale (``tests/test_parity.py`` measures both), so it
still fails. ``stol`` 0 gives back the two-tolerance rule.

NaN matches only NaN at the same position; an infinity matches only the same infinity. A model passes when
no element of any output fails.

Per output we report what Polygraphy reports — max / mean absolute difference, max relative difference
``|a - b| / |b|``, and the *minimum tolerances that would have passed* (``min_atol`` = max abs diff, with no
other tolerance; ``min_rtol`` = max rel diff, with no other) — plus the smallest atol, rtol and stol that pass
with the two others as given (exact under the rule above), the cosine similarity of the flattened outputs, and
for classifier outputs ``[N, C]`` the top-1 agreement (same argmax) and top-5 agreement (the same set of five
classes).

Defaults for float32 on the CPU: ``atol=1e-4``, ``rtol=1e-3``, ``stol=1e-4``.

JSON: :meth:`ParityReport.to_dict` may hold non-finite floats (an infinite relative difference where torch
gives an exact 0); the CLI's JSON renderer (``ckptool.cli._output``) encodes them, as every command's output,
as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._extras import require
from .errors import CkptError, CorruptFileError, InputShapeError, UsageError, first_line

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_STOL = 1e-4
DEFAULT_SAMPLES = 4
DEFAULT_BATCH = 2
DEFAULT_SEED = 0
RULE = (
    "an element fails when |onnx - torch| > atol and |onnx - torch| > rtol * |torch| "
    "and |onnx - torch| > stol * max|torch| (max over that output)"
)


@dataclass
class OutputParity:
    """How one output of the ONNX model compares with torch's."""

    name: str
    shape: list[int]  # of all samples together
    elements: int
    failed_elements: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    cosine: float
    min_atol: float  # passes with this atol and rtol=stol=0 (Polygraphy's "abs=")
    min_rtol: float  # passes with this rtol and atol=stol=0 (Polygraphy's "rel=")
    atol_at_rtol: float  # the smallest atol that passes at the requested rtol and stol
    rtol_at_atol: float  # the smallest rtol that passes at the requested atol and stol
    torch_max_abs: float  # the scale S of the reference output (max |torch| over its finite elements)
    stol_needed: float = 0.0  # the smallest stol that passes at the requested atol and rtol
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    worst: dict[str, Any] = field(default_factory=dict)  # index, torch, onnx of the largest abs difference
    passed: bool = True

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else f"FAILED ({self.failed_elements} of {self.elements} elements)"
        return f"<OutputParity {self.name!r} {self.shape}: {verdict}, max abs diff {self.max_abs_diff:.3g}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": self.shape,
            "elements": self.elements,
            "failed_elements": self.failed_elements,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "cosine_similarity": self.cosine,
            "min_atol": self.min_atol,
            "min_rtol": self.min_rtol,
            "atol_at_rtol": self.atol_at_rtol,
            "rtol_at_atol": self.rtol_at_atol,
            "stol_needed": self.stol_needed,
            "torch_max_abs": self.torch_max_abs,
            "top1_agreement": self.top1_agreement,
            "top5_agreement": self.top5_agreement,
            "worst": self.worst,
            "passed": self.passed,
        }


@dataclass
class ParityReport:
    """The answer of :func:`run_parity`; ``to_dict()`` is the ``--json`` output."""

    onnx: str
    passed: bool
    atol: float
    rtol: float
    samples: int
    batch: int
    seed: int
    inputs: dict[str, list[int]]  # name -> shape of one batch
    outputs: list[OutputParity]
    torch_seconds: float = 0.0
    onnx_seconds: float = 0.0
    stol: float = DEFAULT_STOL
    checkpoint: str | None = None
    arch: str | None = None
    features_only: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def failed_outputs(self) -> list[OutputParity]:
        return [o for o in self.outputs if not o.passed]

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else f"FAILED ({len(self.failed_outputs)} outputs)"
        return f"<ParityReport {os.path.basename(self.onnx)}: {verdict}, {len(self.outputs)} outputs, {self.samples} samples>"

    def summary(self) -> str:
        """One sentence: passed, or by how much it failed."""
        if self.passed:
            worst = max(self.outputs, key=lambda o: o.max_abs_diff)
            return (
                f"parity passed: {len(self.outputs)} output(s), {self.samples} sample{'s' if self.samples != 1 else ''}, "
                f"max abs diff "
                f"{worst.max_abs_diff:.3g}, max rel diff {worst.max_rel_diff:.3g} ({self.tolerances()})"
            )
        parts = []
        for o in self.failed_outputs:
            parts.append(
                f"{o.name!r}: {o.failed_elements} of {o.elements} elements off, max abs diff {o.max_abs_diff:.3g} "
                f"(output scale {o.torch_max_abs:.3g}), max rel diff {o.max_rel_diff:.3g}; it would pass with "
                f"--atol {_up(o.atol_at_rtol)} or --rtol {_up(o.rtol_at_atol)} or --stol {_up(o.stol_needed)}"
            )
        n = f"{self.samples} sample{'s' if self.samples != 1 else ''}"
        return f"parity FAILED ({self.tolerances()}, {n}): " + "; ".join(parts)

    def tolerances(self) -> str:
        return f"atol {self.atol:g}, rtol {self.rtol:g}, stol {self.stol:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checkpoint": self.checkpoint,
            "onnx": self.onnx,
            "arch": self.arch,
            "features_only": self.features_only,
            "atol": self.atol,
            "rtol": self.rtol,
            "stol": self.stol,
            "rule": RULE,
            "samples": self.samples,
            "batch": self.batch,
            "seed": self.seed,
            "inputs": self.inputs,
            "outputs": [o.to_dict() for o in self.outputs],
            "torch_seconds": round(self.torch_seconds, 4),
            "onnx_seconds": round(self.onnx_seconds, 4),
            "summary": self.summary(),
            "notes": self.notes,
        }


def _up(x: float) -> str:
    """A tolerance a little above ``x``, short enough to type (2 significant digits, rounded up)."""
    if not math.isfinite(x):
        return "inf"
    if x <= 0:
        return "0"
    e = math.floor(math.log10(x)) - 1
    v = math.ceil(x / 10**e * 1.0000001) * 10**e
    return f"{v:.0f}" if v >= 100 else f"{v:.2g}"


# ---------------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------------
def compare(
    name: str, ref: np.ndarray, got: np.ndarray, *, atol: float, rtol: float, stol: float = DEFAULT_STOL
) -> OutputParity:
    """Compare onnxruntime's ``got`` with torch's ``ref`` (same shape) under :data:`RULE`."""
    if ref.shape != got.shape:
        raise CkptError(
            f"output {name!r}: onnxruntime gives shape {list(got.shape)}, torch gives {list(ref.shape)}",
            hint="the ONNX model is not this checkpoint's architecture (or not the same part of it)",
        )
    b = ref.astype(np.float64, copy=False).reshape(-1)
    a = got.astype(np.float64, copy=False).reshape(-1)
    n = b.size
    same_special = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
    diff[same_special] = 0.0
    diff[np.isnan(diff)] = np.inf  # NaN against a number (or inf against a number): fails any tolerance
    absb = np.abs(b)
    absb[~np.isfinite(absb)] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / absb)
    rel[np.isnan(rel)] = np.inf
    finite_b = b[np.isfinite(b)]
    scale = float(np.abs(finite_b).max()) if finite_b.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        of_scale = np.where(diff == 0, 0.0, diff / scale) if scale > 0 else np.where(diff == 0, 0.0, np.inf)
    # rel > rtol is |a - b| > rtol * |b| (and of_scale > stol |a - b| > stol * S), without a rounding step
    over_a, over_r, over_s = diff > atol, rel > rtol, of_scale > stol
    fail = over_a & over_r & over_s
    out = OutputParity(
        name=name,
        shape=list(ref.shape),
        elements=n,
        failed_elements=int(fail.sum()),
        max_abs_diff=float(diff.max()) if n else 0.0,
        mean_abs_diff=float(diff.mean()) if n else 0.0,
        max_rel_diff=float(rel.max()) if n else 0.0,
        cosine=_cosine(a, b),
        min_atol=float(diff.max()) if n else 0.0,
        min_rtol=float(rel.max()) if n else 0.0,
        atol_at_rtol=float(diff[over_r & over_s].max(initial=0.0)),
        rtol_at_atol=float(rel[over_a & over_s].max(initial=0.0)),
        stol_needed=float(of_scale[over_a & over_r].max(initial=0.0)),
        torch_max_abs=scale,
    )
    out.passed = out.failed_elements == 0
    if n:
        i = int(np.argmax(diff))
        idx = [int(v) for v in np.unravel_index(i, ref.shape)]
        out.worst = {"index": idx, "torch": float(b[i]), "onnx": float(a[i])}
    if ref.ndim == 2 and ref.shape[1] >= 2 and ref.shape[0] > 0 and np.isfinite(ref).all() and np.isfinite(got).all():
        out.top1_agreement = float(np.mean(np.argmax(ref, 1) == np.argmax(got, 1)))
        if ref.shape[1] >= 5:
            tr = np.sort(np.argpartition(-ref, 4, axis=1)[:, :5], axis=1)
            tg = np.sort(np.argpartition(-got, 4, axis=1)[:, :5], axis=1)
            out.top5_agreement = float(np.mean(np.all(tr == tg, axis=1)))
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.all():
        if not ok.any():
            return float("nan")
        a, b = a[ok], b[ok]
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# ---------------------------------------------------------------------------------------------------
# inputs and runs
# ---------------------------------------------------------------------------------------------------
def parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``; a clear error for anything else."""
    if text is None:
        return None
    if not isinstance(text, str):
        dims = [int(d) for d in text]
    else:
        parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise UsageError(f"--input-shape {text!r} is not a list of integers like 1,3,224,224") from None
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return tuple(dims)


def _np_dtype(onnx_type: str) -> np.dtype[Any]:
    t = onnx_type.removeprefix("tensor(").removesuffix(")")
    table = {
        "float": np.float32,
        "double": np.float64,
        "float16": np.float16,
        "int64": np.int64,
        "int32": np.int32,
        "int8": np.int8,
        "uint8": np.uint8,
        "bool": np.bool_,
    }
    if t not in table:
        raise UsageError(f"parity cannot make inputs of type {onnx_type}")
    return np.dtype(table[t])


def input_plan(
    session: Any, *, batch: int, input_shape: tuple[int, ...] | None, default_shape: tuple[int, ...] | None
) -> tuple[list[tuple[str, list[int], np.dtype[Any]]], int | None]:
    """(name, shape of one batch, dtype) per graph input, and the batch size fixed by the graph (or None).

    A symbolic first dimension becomes ``batch``; other symbolic dimensions come from ``input_shape`` (or the
    architecture's default). ``input_shape`` applies to the first (usually only) input, its batch dimension
    replaced by ``batch`` when the graph's batch is dynamic.
    """
    plan = []
    fixed_batch: int | None = None
    for i, inp in enumerate(session.get_inputs()):
        dims = list(inp.shape)
        hint = input_shape if (i == 0 and input_shape) else (default_shape if i == 0 else None)
        if i == 0 and input_shape is not None and len(input_shape) != len(dims):
            raise InputShapeError(
                f"--input-shape {','.join(map(str, input_shape))} has {len(input_shape)} dimensions; the ONNX "
                f"input {inp.name!r} has {len(dims)} ({_fmt_dims(dims)})"
            )
        shape: list[int] = []
        for j, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                if i == 0 and input_shape is not None and j > 0 and input_shape[j] != d:
                    raise InputShapeError(
                        f"--input-shape {','.join(map(str, input_shape))}: the ONNX input {inp.name!r} is fixed to "
                        f"{_fmt_dims(dims)}"
                    )
                shape.append(d)
                if j == 0 and i == 0:
                    fixed_batch = d
            elif j == 0:
                shape.append(batch)
            elif hint is not None and len(hint) == len(dims):
                shape.append(hint[j])
            else:
                raise InputShapeError(
                    f"the ONNX input {inp.name!r} has a symbolic dimension {d!r} at position {j} ({_fmt_dims(dims)})",
                    hint="give the full shape with --input-shape",
                )
        plan.append((inp.name, shape, _np_dtype(inp.type)))
    return plan, fixed_batch


def _fmt_dims(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def make_batch(
    plan: list[tuple[str, list[int], np.dtype[Any]]], n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One batch of ``n`` seeded samples: standard normal floats (like normalized images), small integers."""
    feed = {}
    for name, shape, dt in plan:
        s = [n, *shape[1:]]
        if dt.kind == "f":
            feed[name] = rng.standard_normal(s).astype(dt)
        elif dt.kind == "b":
            feed[name] = rng.integers(0, 2, s).astype(dt)
        else:
            feed[name] = rng.integers(0, 10, s).astype(dt)
    return feed


def open_session(onnx_path: str | os.PathLike[str]) -> Any:
    """An onnxruntime session on the CPU provider (default graph optimizations: what users run)."""
    require("onnxruntime", extra="onnx", what="running an ONNX model")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    model = _ort_model(os.fspath(onnx_path))
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        msg = first_line(e, 300)
        raise CorruptFileError(f"onnxruntime cannot load the model ({msg})", path=os.fspath(onnx_path)) from None


def _ort_model(path: str) -> str | bytes:
    """What onnxruntime opens: a local path as it is. onnxruntime reads files, never ranges, so a URL is read
    whole once: into memory when the model holds its weights (or from the ``--download`` copy); a model with
    external data is downloaded beside its data files into the private temp folder (removed when the command
    ends) and opened there."""
    from .sources import remote

    if not remote.is_url(path):
        return path
    from .formats import open_checkpoint

    ck = open_checkpoint(path)
    try:
        sources = {t.storage.source.path for t in ck.tensors if t.storage is not None and t.storage.source is not None}
        external = sorted(sources - {path})
    finally:
        ck.close()
    if not external and not remote.downloading():
        with remote.open_url(path, allow_empty=False) as src:
            return src.read(0, src.size)
    local, _name = remote.download(path)
    for url in external:
        remote.download(url)
    return local


def _torch_outputs(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (list, tuple)):
        flat: list[Any] = []
        for o in out:
            flat.extend(_torch_outputs(o))
        return flat
    return []


def run_parity(
    model: Any,
    onnx_path: str | os.PathLike[str],
    *,
    samples: int = DEFAULT_SAMPLES,
    batch: int = DEFAULT_BATCH,
    seed: int = DEFAULT_SEED,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    stol: float = DEFAULT_STOL,
    input_shape: tuple[int, ...] | None = None,
    default_shape: tuple[int, ...] | None = None,
    session: Any = None,
) -> ParityReport:
    """Run ``samples`` seeded inputs (in batches of ``batch``) through the torch ``model`` and the ONNX model
    at ``onnx_path`` on onnxruntime's CPU provider, and compare every output under :data:`RULE`.

    Input shapes come from the ONNX graph: a symbolic batch dimension becomes ``batch``, other symbolic
    dimensions come from ``input_shape`` (or ``default_shape``, the architecture's). Returns a
    :class:`ParityReport` (``passed`` False is a finding, not an exception); raises :class:`InputShapeError`
    for inputs the model cannot take and :class:`CkptError` when the two models do not even have the same
    outputs.
    """
    import torch

    if samples < 1:
        raise UsageError(f"--samples must be at least 1, not {samples}")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, not {batch}")
    if not (atol >= 0 and rtol >= 0 and stol >= 0):
        raise UsageError("--atol, --rtol and --stol must be non-negative numbers")
    sess = session if session is not None else open_session(onnx_path)
    plan, fixed = input_plan(sess, batch=batch, input_shape=input_shape, default_shape=default_shape)
    notes: list[str] = []
    if fixed is not None and fixed != batch:
        notes.append(f"the ONNX model's batch dimension is fixed to {fixed}: ran batches of {fixed}")
        batch = fixed
    out_names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    refs: list[list[np.ndarray]] = [[] for _ in out_names]
    gots: list[list[np.ndarray]] = [[] for _ in out_names]
    t_torch = t_onnx = 0.0
    done = 0
    model.eval()
    while done < samples:
        n = batch if fixed is not None else min(batch, samples - done)
        feed = make_batch(plan, n, rng)
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                raw = model(*[torch.from_numpy(feed[name]) for name, _, _ in plan])
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
            raise InputShapeError(f"the torch model cannot take inputs of shape {shapes}: {first_line(e)}") from None
        touts = [o.detach().float().numpy() if o.dtype.is_floating_point else o.numpy() for o in _torch_outputs(raw)]
        t_torch += time.perf_counter() - t
        if len(touts) != len(out_names):
            raise CkptError(
                f"the torch model returns {len(touts)} output(s), the ONNX model {len(out_names)} ({', '.join(out_names)})",
                path=os.fspath(onnx_path),
                hint="is the ONNX model this architecture (and --features-only the same)?",
            )
        t = time.perf_counter()
        try:
            oouts = sess.run(None, feed)
        except Exception as e:
            raise InputShapeError(
                f"onnxruntime cannot run inputs of shape {plan_shapes(feed)}: {first_line(e)}"
            ) from None
        t_onnx += time.perf_counter() - t
        for i in range(len(out_names)):
            refs[i].append(touts[i])
            gots[i].append(np.asarray(oouts[i]))
        done += n
    outputs = []
    for i, name in enumerate(out_names):
        ref = np.concatenate(refs[i]) if refs[i][0].ndim else np.stack(refs[i])
        got = np.concatenate(gots[i]) if gots[i][0].ndim else np.stack(gots[i])
        outputs.append(compare(name, ref, got, atol=atol, rtol=rtol, stol=stol))
    return ParityReport(
        onnx=os.fspath(onnx_path),
        passed=all(o.passed for o in outputs),
        atol=atol,
        rtol=rtol,
        stol=stol,
        samples=done,
        batch=batch,
        seed=seed,
        inputs={name: [batch, *shape[1:]] for name, shape, _ in plan},
        outputs=outputs,
        torch_seconds=t_torch,
        onnx_seconds=t_onnx,
        notes=notes,
    )


def plan_shapes(feed: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())


def load_reference(
    ck: Any,
    arch: str,
    *,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
    features_only: bool = False,
) -> tuple[Any, Any]:
    """The torch model to compare with (and check's report): the whole model, or with ``features_only`` the
    architecture's backbone part (VGG's ``features``, ResNet's everything-but-``fc``; ``spec.backbone``),
    from a whole-model checkpoint or a backbone-only one."""
    from .arch.registry import AUTO, normalize, resolve
    from .runtime import WeightsMismatchError, load_checked

    if not features_only:
        return load_checked(ck, arch, num_classes=num_classes, arch_args=arch_args)
    try:
        model, report = load_checked(ck, arch, num_classes=num_classes, arch_args=arch_args)
    except WeightsMismatchError as whole:
        if normalize(arch) == AUTO:
            raise
        backbone = resolve(arch, num_classes=num_classes, arch_args=arch_args).backbone
        if backbone is None:
            raise
        try:  # a backbone-only file (model.features.state_dict(), or a ResNet without fc)
            return load_checked(ck, arch, num_classes=num_classes, arch_args=arch_args, part=backbone)
        except (WeightsMismatchError, UsageError):
            raise whole from None
    spec = report.spec
    if report.part is not None:  # arch auto found a backbone-only file: the model is the part already
        return model, report
    backbone = spec.backbone if spec is not None else None
    if spec is None or backbone is None:
        raise UsageError(
            f"--features-only: {report.arch or arch} has no backbone part",
            hint="--features-only exports the architecture's backbone (a features sub-module, or a family's backbone)",
        )
    sub = build_part(spec, model, backbone)
    return sub, report


def build_part(spec: Any, model: Any, part: str) -> Any:
    """The ``part`` of a built, loaded ``model`` (its sub-module, or the family's part module)."""
    declared = spec.declared_part(part)
    if declared is not None and spec.part_module is not None:
        return spec.part_module(model, declared)
    return model.get_submodule(part)


def onnx_output_names(onnx_path: str | os.PathLike[str]) -> list[str]:
    """The graph outputs' names, read torch-free from the header."""
    from .formats import open_checkpoint

    ck = open_checkpoint(onnx_path)
    try:
        return [o["name"] for o in ck.metadata.get("outputs", [])]
    finally:
        ck.close()


def check_parity(
    checkpoint: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    arch: str,
    *,
    key: str | None = None,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
    features_only: bool | None = None,
    samples: int = DEFAULT_SAMPLES,
    batch: int = DEFAULT_BATCH,
    seed: int = DEFAULT_SEED,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    stol: float = DEFAULT_STOL,
    input_shape: tuple[int, ...] | None = None,
    status: Callable[[str], None] | None = None,
) -> ParityReport:
    """``ckptool parity``: load ``checkpoint`` into ``arch`` (strictly, as :func:`ckptool.runtime.load_model`)
    and compare it with the ONNX model at ``onnx_path``.

    ``features_only`` compares the model's ``features`` sub-module; ``None`` (the default) turns it on when the
    ONNX model's only output is named ``features`` (what ``export --onnx --features-only`` writes).
    """
    from .formats import open_checkpoint

    require("torch", "onnxruntime", extra="torch", what="parity")
    say = status or (lambda _phase: None)
    onnx_path = os.fspath(onnx_path)
    out_names = onnx_output_names(onnx_path)
    notes = []
    if features_only is None:
        features_only = out_names == ["features"]
        if features_only:
            notes.append("the ONNX model's only output is 'features': compared with the features sub-module")
    say("loading the weights")
    ck = open_checkpoint(checkpoint, key=key)
    try:
        model, report = load_reference(
            ck, arch, num_classes=num_classes, arch_args=arch_args, features_only=features_only
        )
    finally:
        ck.close()
    spec = report.spec
    say(f"running {samples} seeded sample{'s' if samples != 1 else ''} through torch and onnxruntime")
    rep = run_parity(
        model,
        onnx_path,
        samples=samples,
        batch=batch,
        seed=seed,
        atol=atol,
        rtol=rtol,
        stol=stol,
        input_shape=input_shape,
        default_shape=tuple(spec.input_shape) if spec is not None else None,
    )
    rep.checkpoint = os.fspath(checkpoint)
    rep.arch = report.arch or arch
    rep.features_only = bool(features_only)
    rep.notes = notes + rep.notes
    return rep
