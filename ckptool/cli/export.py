"""`ckptool export`: safetensors / torch zip (streamed, bit-exact, torch-free) or ONNX (checked, parity-verified)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import FindingsError, UsageError, WeightsMismatchError
from ._errors import without_part
from ._options import (
    AllowGlobalOpt,
    ArchArgOpt,
    ArchOpt,
    AtolOpt,
    DownloadOpt,
    ForceOpt,
    InputShapeOpt,
    JsonOpt,
    KeyOpt,
    NumClassesOpt,
    PathArg,
    RtolOpt,
    StolOpt,
    TimeoutOpt,
)
from ._output import Output, dims, human_bytes, start

SafetensorsOpt = Annotated[
    Path | None,
    typer.Option(
        "--safetensors", help="Write a .safetensors file (streamed, torch-free, bit-exact check).", show_default=False
    ),
]
PthOpt = Annotated[
    Path | None,
    typer.Option("--pth", help="Write a torch zip-format .pth file (torch-free, bit-exact check).", show_default=False),
]
OnnxOpt = Annotated[
    Path | None,
    typer.Option(
        "--onnx", help="Write an ONNX model (needs --arch): torch.onnx dynamo export, onnx.checker, parity check.",
        show_default=False,
    ),
]  # fmt: skip
OpsetOpt = Annotated[
    int | None, typer.Option("--opset", help="[onnx] ONNX opset, 18-23 (default 18).", show_default=False)
]
FeaturesOpt = Annotated[
    bool,
    typer.Option(
        "--features-only",
        help="[onnx] Export only the backbone (model.features, or the family's backbone part, e.g. everything but fc).",
    ),
]
ExternalOpt = Annotated[
    bool,
    typer.Option("--external-data", help="[onnx] Weights in OUT.data next to OUT (automatic above 2 GB)."),
]
MaxShardOpt = Annotated[
    str | None,
    typer.Option(
        "--max-shard-size",
        help="[safetensors] Write Hugging Face shards into the folder OUT: model-0000K-of-0000N.safetensors + "
        "model.safetensors.index.json, each shard at most this size (5GB, 500MB, 2GiB; default 5GB for a folder).",
        show_default=False,
    ),
]
NoVerifyOpt = Annotated[
    bool, typer.Option("--no-verify", help="Skip the bit-exact check (safetensors/pth) or the parity check (onnx).")
]

ONNX_ONLY = ("--arch", "--num-classes", "--arch-arg", "--input-shape", "--opset", "--features-only", "--external-data",
             "--atol", "--rtol", "--stol")  # fmt: skip


def export(
    path: PathArg,
    safetensors: SafetensorsOpt = None,
    pth: PthOpt = None,
    onnx: OnnxOpt = None,
    key: KeyOpt = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    arch_arg: ArchArgOpt = None,
    input_shape: InputShapeOpt = None,
    opset: OpsetOpt = None,
    features_only: FeaturesOpt = False,
    external_data: ExternalOpt = False,
    max_shard_size: MaxShardOpt = None,
    no_verify: NoVerifyOpt = False,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    stol: StolOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Convert a checkpoint: --safetensors OUT or --pth OUT (streamed, bit-exact, torch-free), or --onnx OUT
    --arch NAME (exported, checked with onnx.checker, verified against torch). Exit 0 done, 1 parity failed,
    2 error; no partial output file, ever."""
    o = start(json_)
    targets = [(n, p) for n, p in (("safetensors", safetensors), ("pth", pth), ("onnx", onnx)) if p is not None]
    if len(targets) != 1:
        raise UsageError(
            "choose one output: --safetensors OUT, --pth OUT or --onnx OUT"
            + (f" (got {', '.join('--' + n for n, _ in targets)})" if targets else "")
        )
    kind, target = targets[0]
    if kind != "onnx":
        given = [name for name, v in zip(ONNX_ONLY, (arch, num_classes, arch_arg, input_shape, opset,
                 features_only or None, external_data or None, atol, rtol, stol), strict=True) if v]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --onnx")
        if max_shard_size is not None and kind != "safetensors":
            raise UsageError("--max-shard-size applies to --safetensors (Hugging Face shards)")
        if kind == "safetensors" and (max_shard_size is not None or target.is_dir()):
            _export_sharded(o, path, target, max_shard_size, key=key, force=force, verify=not no_verify)
            return
        _export_tensors(o, path, kind, target, key=key, force=force, verify=not no_verify)
        return
    _export_onnx(
        o, path, target, key=key, arch=arch or "auto", num_classes=num_classes, arch_arg=arch_arg, input_shape=input_shape,
        opset=opset, features_only=features_only, external_data=external_data, verify=not no_verify, atol=atol,
        rtol=rtol, stol=stol, force=force, json_=json_,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# safetensors / pth
# ---------------------------------------------------------------------------------------------------
FLAGS = {"safetensors": "safetensors", "pth": "torch-zip"}  # --flag -> its writer (suffixes: convert.WRITERS)


def _export_tensors(
    o: Output, path: str, kind: str, target: Path, *, key: str | None, force: bool, verify: bool
) -> None:
    from ..formats import open_checkpoint

    suffix = target.suffix.lower()
    from ..convert import WRITERS

    others = [k for k, fmt in FLAGS.items() if k != kind and suffix in WRITERS[fmt][1]]
    if others:
        o.warn(
            f"{target}: --{kind} writes {'safetensors' if kind == 'safetensors' else 'a torch zip'}, but the suffix "
            f"{target.suffix} says {others[0]}; tools that go by the name will misread it (use --{others[0]} or "
            f"rename it)"
        )
    ck = open_checkpoint(path, key=key)
    bar = o.progress(f"{kind} {target.name}")
    try:
        from ..convert import writer
        from ..convert.driver import export as run_writer

        r = run_writer(writer(kind), ck, target, force=force, verify=verify, progress=bar)
    finally:
        bar.close()
        ck.close()
    if o.mode == "json":
        o.json(r.to_dict())
        return
    o.line(f"wrote {r.out} ({r.format}): {r.tensors} tensors, {human_bytes(r.bytes)} of tensor data")
    pairs = [
        (
            "source",
            f"{r.source} ({r.source_format})" + (f", state_dict at {r.state_dict_key!r}" if r.state_dict_key else ""),
        )
    ]
    pairs.append(("check", f"bit-exact: {r.verify_method}" if r.verified else "skipped (--no-verify)"))
    if r.skipped:
        pairs.append(("skipped", f"{r.skipped} tensors"))
    for group in r.shared:
        pairs.append(("shared storage", ", ".join(group)))
    pairs.append(("time", f"{r.seconds:.2f} s"))
    for n in r.notes:
        pairs.append(("note", n))
    o.kv(pairs)


def _export_sharded(
    o: Output, path: str, target: Path, size: str | None, *, key: str | None, force: bool, verify: bool
) -> None:
    from ..convert.sharded import DEFAULT_MAX_SHARD_SIZE, export_sharded, parse_size
    from ..formats import open_checkpoint

    limit = parse_size(size or DEFAULT_MAX_SHARD_SIZE)  # a bad size fails before the checkpoint is read
    ck = open_checkpoint(path, key=key)
    bar = o.progress(f"safetensors shards {target.name}")
    try:
        r = export_sharded(ck, target, max_shard_size=limit, force=force, verify=verify, progress=bar)
    finally:
        bar.close()
        ck.close()
    render_export(o, r)


def render_export(o: Output, r: Any) -> None:
    """An ExportResult of a sharded set (``r.files``): what was written where, and the checks."""
    if o.mode == "json":
        o.json(r.to_dict())
        return
    shards = [f for f in r.files if not f.endswith(".index.json")]
    index = [f for f in r.files if f.endswith(".index.json")]
    o.line(
        f"wrote {r.out} ({r.format}): {len(shards)} shard{'s' if len(shards) != 1 else ''}"
        + (f" + {index[0]}" if index else f" ({shards[0]})")
        + f", {r.tensors} tensors, {human_bytes(r.bytes)} of tensor data"
    )
    pairs = [
        (
            "source",
            f"{r.source} ({r.source_format})" + (f", state_dict at {r.state_dict_key!r}" if r.state_dict_key else ""),
        ),
        ("files", f"{shards[0]} ... {shards[-1]}" if len(shards) > 1 else shards[0]),
        ("check", f"bit-exact: {r.verify_method}" if r.verified else "skipped (--no-verify)"),
    ]
    if r.skipped:
        pairs.append(("skipped", f"{r.skipped} tensors"))
    pairs.append(("time", f"{r.seconds:.2f} s"))
    for n in r.notes:
        pairs.append(("note", n))
    o.kv(pairs)


# ---------------------------------------------------------------------------------------------------
# onnx
# ---------------------------------------------------------------------------------------------------
def _export_onnx(
    o: Output,
    path: str,
    target: Path,
    *,
    key: str | None,
    arch: str,
    num_classes: int | None,
    arch_arg: list[str] | None,
    input_shape: str | None,
    opset: int | None,
    features_only: bool,
    external_data: bool,
    verify: bool,
    atol: float | None,
    rtol: float | None,
    stol: float | None,
    force: bool,
    json_: bool,
) -> None:
    from .._extras import require
    from ..arch.registry import parse_arch_args
    from ..convert.onnx_export import DEFAULT_OPSET, export_onnx
    from ..formats import open_checkpoint
    from ..parity import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_STOL, parse_shape

    shape = parse_shape(input_shape)
    args = parse_arch_args(arch_arg)
    with o.status("reading the checkpoint") as status:
        ck = open_checkpoint(path, key=key)
        try:
            status("loading torch")
            require("torch", "onnx", "onnxscript", extra="torch", what="export --onnx")
            import torch  # noqa: F401 - the slowest step before the weights load; shown as its own phase

            r = export_onnx(
            ck, target, arch=arch, num_classes=num_classes, arch_args=args or None, input_shape=shape,
            opset=DEFAULT_OPSET if opset is None else opset, features_only=features_only,
            external_data=external_data, verify=verify, atol=DEFAULT_ATOL if atol is None else atol,
            rtol=DEFAULT_RTOL if rtol is None else rtol, stol=DEFAULT_STOL if stol is None else stol,
            force=force, status=status,
            )  # fmt: skip
        except WeightsMismatchError as e:
            raise without_part(e) from None
        finally:
            ck.close()
    if json_:
        o.json(r.to_dict())
    else:
        _render_onnx(o, r)
    if not r.passed:
        raise FindingsError("parity failed: the ONNX model was not written", path=target)


def _render_onnx(o: Output, r: Any) -> None:
    from .parity import render_outputs

    if r.written:
        size = human_bytes(r.nbytes) + (
            f" + {human_bytes(r.data_nbytes)} in {Path(r.data_path).name}" if r.external_data else ""
        )
        o.line(f"wrote {r.path} (ONNX opset {r.opset}, {size}{', self-contained' if not r.external_data else ''})")
    else:
        o.line(("NOT written:", "bold red"), f" {r.path} (parity failed; nothing was left behind)")
    ins = dims(["batch", *r.input_shape[1:]])
    outs = ", ".join(f"{n!r} {dims(s)}" for n, s in zip(r.output_names, r.output_shapes, strict=False))
    pairs = [
        ("model", f"{r.arch}{' (features only)' if r.features_only else ''}: {r.input_name!r} {ins} -> {outs}"),
        ("onnx.checker", "passed (full check)" if r.checked else "not run"),
    ]
    if r.parity is None:
        pairs.append(("parity", "skipped (--no-verify)"))
    o.kv(pairs)
    if r.parity is not None:
        render_outputs(o, r.parity)
        o.line((r.parity.summary(), "green" if r.parity.passed else "bold red"))
        if not r.parity.passed:
            o.line(
                "the ONNX model does not compute what the checkpoint computes; rerun with --no-verify to keep it anyway"
            )
    for n in r.notes:
        o.line(f"note: {n}")
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items())
    o.line(f"time: {steps}")
