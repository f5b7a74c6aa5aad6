"""`ckptool parity`: does an ONNX model compute what the checkpoint computes? (exit 0 pass / 1 fail / 2 error)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._options import (
    AllowGlobalOpt,
    ArchArgOpt,
    ArchOpt,
    AtolOpt,
    InputShapeOpt,
    JsonOpt,
    KeyOpt,
    NumClassesOpt,
    PathArg,
    RtolOpt,
    StolOpt,
)
from ._output import kv_lines, out, print_json, table

OnnxArg = Annotated[Path, typer.Argument(help="The ONNX model to verify.", show_default=False)]
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


def render_outputs(r: Any) -> None:
    """One row per output: the differences, cosine similarity and top-k agreement. (Polygraphy's minimum
    tolerances equal the max abs / max rel columns; --json lists them, and the atol/rtol a failure needs.)"""
    rows = [
        (
            o.name, _g(o.max_abs_diff), _g(o.max_rel_diff), _g(o.mean_abs_diff), f"{o.cosine:.6f}",
            _pct(o.top1_agreement), _pct(o.top5_agreement),
            "pass" if o.passed else f"FAIL {o.failed_elements}/{o.elements}",
        )
        for o in r.outputs
    ]  # fmt: skip
    table(
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
) -> None:
    """Run seeded inputs through the checkpoint (torch) and the ONNX model (onnxruntime, CPU) and compare every
    output. An element fails only when it is off by more than --atol AND by more than --rtol x |torch| AND by
    more than --stol x max|torch| of that output. Exit 0 pass, 1 fail, 2 error."""
    from ..arch.registry import parse_arch_args
    from ..parity import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_STOL, check_parity, parse_shape

    r = check_parity(
        path, model, arch or "auto", key=key, num_classes=num_classes, arch_args=parse_arch_args(arch_arg) or None,
        features_only=features_only, samples=samples, batch=batch, seed=seed,
        atol=DEFAULT_ATOL if atol is None else atol, rtol=DEFAULT_RTOL if rtol is None else rtol,
        stol=DEFAULT_STOL if stol is None else stol, input_shape=parse_shape(input_shape),
    )  # fmt: skip
    if json_:
        print_json(r.to_dict())
    else:
        ins = ", ".join(f"{k!r} {v}" for k, v in r.inputs.items())
        kv_lines(
            [
                ("checkpoint", f"{r.checkpoint} as {r.arch}{' (features only)' if r.features_only else ''}"),
                ("onnx", r.onnx),
                ("inputs", f"{r.samples} samples, seed {r.seed}, batches of {ins}"),
                (
                    "rule",
                    f"fail when |onnx - torch| > {r.atol:g} and > {r.rtol:g} x |torch| and > {r.stol:g} x max|torch|",
                ),
                ("time", f"torch {r.torch_seconds:.2f} s, onnxruntime {r.onnx_seconds:.2f} s"),
            ]
        )
        render_outputs(r)
        for n in r.notes:
            out(f"note: {n}")
        out(r.summary())
    if not r.passed:
        raise typer.Exit(1)
