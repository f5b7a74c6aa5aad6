"""`ckptool parity`: does an ONNX model compute what the checkpoint computes? (exit 0 pass / 1 fail / 2 error)"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import FindingsError, WeightsMismatchError
from ._errors import without_part
from ._options import (
    AllowGlobalOpt,
    ArchArgOpt,
    ArchOpt,
    AtolOpt,
    DownloadOpt,
    InputShapeOpt,
    JsonOpt,
    KeyOpt,
    NumClassesOpt,
    PathArg,
    RtolOpt,
    StolOpt,
    TimeoutOpt,
)
from ._output import Output, dims, plural, start

OnnxArg = Annotated[
    str,  # not a Path: Path("https://host/f") collapses the "//" of a URL
    typer.Argument(help="The ONNX model to verify (a file or a URL).", show_default=False),
]
SamplesOpt = Annotated[int, typer.Option("--samples", "-n", min=1, help="How many seeded inputs to run.")]
BatchOpt = Annotated[int, typer.Option("--batch", "-b", min=1, help="Batch size (for a dynamic batch dimension).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the inputs (standard normal, like normalized images).")]
FeaturesOpt = Annotated[
    bool | None,
    typer.Option(
        "--features-only/--whole-model",
        help="Compare the model's features sub-module (default: when the ONNX output is named 'features').",
        show_default=False,
    ),
]


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def render_outputs(o: Output, r: Any) -> None:
    """One row per output: the differences, cosine similarity and top-k agreement. (Polygraphy's minimum
    tolerances equal the max abs / max rel columns; --json lists them, and the atol/rtol a failure needs.)"""
    rows = [
        (
            x.name, _g(x.max_abs_diff), _g(x.max_rel_diff), _g(x.mean_abs_diff), f"{x.cosine:.6f}",
            _pct(x.top1_agreement), _pct(x.top5_agreement),
            "pass" if x.passed else f"FAIL {x.failed_elements}/{x.elements}",
        )
        for x in r.outputs
    ]  # fmt: skip
    o.table(
        ["output", "max abs", "max rel", "mean abs", "cosine", "top-1", "top-5", "result"],
        rows,
        right=(1, 2, 3, 4, 5, 6),
    )


def parity(
    path: PathArg,
    model: OnnxArg,
    arch: ArchOpt = "auto",
    key: KeyOpt = None,
    num_classes: NumClassesOpt = None,
    arch_arg: ArchArgOpt = None,
    samples: SamplesOpt = 4,
    batch: BatchOpt = 2,
    seed: SeedOpt = 0,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    stol: StolOpt = None,
    input_shape: InputShapeOpt = None,
    features_only: FeaturesOpt = None,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Run seeded inputs through the checkpoint (torch) and the ONNX model (onnxruntime, CPU) and compare every
    output. An element fails only when it is off by more than --atol AND by more than --rtol x |torch| AND by
    more than --stol x max|torch| of that output. Exit 0 pass, 1 fail, 2 error."""
    from ..arch.registry import parse_arch_args
    from ..parity import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_STOL, check_parity, parse_shape

    o = start(json_)
    with o.status("loading torch") as status:
        try:
            r = check_parity(
                path, model, arch or "auto", key=key, num_classes=num_classes,
                arch_args=parse_arch_args(arch_arg) or None, features_only=features_only, samples=samples,
                batch=batch, seed=seed, atol=DEFAULT_ATOL if atol is None else atol,
                rtol=DEFAULT_RTOL if rtol is None else rtol, stol=DEFAULT_STOL if stol is None else stol,
                input_shape=parse_shape(input_shape), status=status,
            )  # fmt: skip
        except WeightsMismatchError as e:
            raise without_part(e) from None
    if json_:
        o.json(r.to_dict())
    else:
        ins = ", ".join(f"{k!r} {dims(v)}" for k, v in r.inputs.items())
        o.kv(
            [
                ("checkpoint", f"{r.checkpoint} as {r.arch}{' (features only)' if r.features_only else ''}"),
                ("onnx", r.onnx),
                ("inputs", f"{plural(r.samples, 'sample')}, seed {r.seed}, batches of {ins}"),
                (
                    "rule",
                    f"fail when |onnx - torch| > {r.atol:g} and > {r.rtol:g} x |torch| and > {r.stol:g} x max|torch|",
                ),
                ("time", f"torch {r.torch_seconds:.2f} s, onnxruntime {r.onnx_seconds:.2f} s"),
            ]
        )
        render_outputs(o, r)
        for n in r.notes:
            o.line(f"note: {n}")
        o.line((r.summary(), "green" if r.passed else "bold red"))
    if not r.passed:
        raise FindingsError("parity failed", path=model)
