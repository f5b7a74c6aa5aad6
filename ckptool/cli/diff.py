"""`ckptool diff A B`: keys, shapes, dtypes and values of two checkpoints, streamed and torch-free."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import FindingsError, UsageError
from ._options import AllowGlobalOpt, DownloadOpt, JsonOpt, TimeoutOpt
from ._output import Output, dims, human_bytes, start

if TYPE_CHECKING:
    from ..diff import DiffReport

FileA = Annotated[
    str, typer.Argument(help="First file (.pth/.pt/.bin/.ckpt, .safetensors, .onnx) or URL.", show_default=False)
]
FileB = Annotated[str, typer.Argument(help="Second file or URL, any supported format.", show_default=False)]
AtolOpt = Annotated[
    float,
    typer.Option(
        "--atol",
        help="Pass when every element differs by at most this much (NaN must match NaN). "
        "Default 0: tensors must be bit-identical.",
        min=0.0,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Where the state_dict sits in a training checkpoint (e.g. model.ema); applies to each torch file. "
        "Default: found automatically.",
        show_default=False,
    ),
]
KeyAOpt = Annotated[str | None, typer.Option("--key-a", help="--key for A only.", show_default=False)]
KeyBOpt = Annotated[str | None, typer.Option("--key-b", help="--key for B only.", show_default=False)]
OnlyOpt = Annotated[
    list[str] | None,
    typer.Option("--only", help="Compare only tensors whose name matches this glob (e.g. 'features.*'); repeatable."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Leave out tensors whose name matches this glob (e.g. '*num_batches_tracked')."),
]
AllOpt = Annotated[bool, typer.Option("--all", help="List every tensor, not just the ones that differ.")]

TORCH_FORMATS = ("torch-zip", "torch-legacy", "torch-tar", "torchscript")
SHOW = 20  # names listed per section before "... and N more"


def _key_for(path: str, key: str | None) -> str | None:
    from ..formats import detect_format

    if key is None:
        return None
    return key if detect_format(path) in TORCH_FORMATS else None


def _fmt_diff(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}"


def _names(o: Output, title: str, names: list[str], show_all: bool) -> None:
    o.line(f"{title} ({len(names)}):")
    shown = names if show_all else names[:SHOW]
    for n in shown:
        o.line(f"  {n}")
    if len(names) > len(shown):
        o.line(f"  ... and {len(names) - len(shown)} more (--all lists them)")


def _render(o: Output, r: DiffReport, show_all: bool) -> None:
    c = r.counts
    o.kv(
        [
            (
                "A",
                f"{r.a} ({r.format_a}" + (f", state_dict at {r.state_dict_key_a}" if r.state_dict_key_a else "") + ")",
            ),
            (
                "B",
                f"{r.b} ({r.format_b}" + (f", state_dict at {r.state_dict_key_b}" if r.state_dict_key_b else "") + ")",
            ),
            ("common tensors", f"{len(r.tensors)} ({human_bytes(r.bytes_compared)} of values compared)"),
        ]
    )
    for n in r.notes:
        o.line(f"note: {n}")
    if r.only_in_a:
        o.blank()
        _names(o, "only in A", r.only_in_a, show_all)
    if r.only_in_b:
        o.blank()
        _names(o, "only in B", r.only_in_b, show_all)
    rows_src = r.tensors if show_all else r.differences()
    if rows_src:
        o.blank()
        rows = []
        for t in rows_src[: None if show_all else 200]:
            shape = dims(t.shape_a)
            if t.shape_b != t.shape_a:
                shape += " vs " + dims(t.shape_b)
            dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a} vs {t.dtype_b}"
            mis = "-" if t.mismatched is None else f"{t.mismatched:,} of {t.numel:,}"
            name = t.name if t.name_b == t.name else f"{t.name} ~ {t.name_b}"
            rows.append((name, t.status, shape, dtype, _fmt_diff(t.max_abs_diff), mis))
        o.table(["tensor", "status", "shape", "dtype", "max abs diff", "elements differing"], rows, right=(4, 5))
        if not show_all and len(rows_src) > 200:
            o.line(f"... and {len(rows_src) - 200} more differing tensors (--json has them all)")
    o.blank()
    tol = "bit-identical" if r.atol == 0 else f"within atol {r.atol:g}"
    counts = ", ".join(f"{v} {k}" for k, v in c.items() if v)
    if r.identical:
        o.line(f"identical: all {len(r.tensors)} tensors {tol}" + (f" ({counts})" if c["close"] else ""))
    elif r.no_common_names:
        o.line("different: no tensor names in common, nothing was compared")
    else:
        parts = [counts] if counts else []
        if r.only_in_a:
            parts.append(f"{len(r.only_in_a)} only in A")
        if r.only_in_b:
            parts.append(f"{len(r.only_in_b)} only in B")
        mx = r.max_abs_diff
        o.line(f"different ({tol} required): " + "; ".join(parts) + (f"; max abs diff {_fmt_diff(mx)}" if mx else ""))


def diff(
    a: FileA,
    b: FileB,
    atol: AtolOpt = 0.0,
    key: KeyOpt = None,
    key_a: KeyAOpt = None,
    key_b: KeyBOpt = None,
    only: OnlyOpt = None,
    exclude: ExcludeOpt = None,
    show_all: AllOpt = False,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Compare two checkpoints: keys only in A / only in B, shape and dtype differences, and the max abs
    difference of every common tensor. Exit 0 identical (bit for bit, or within --atol), 1 different."""
    from ..diff import diff as run_diff
    from ..formats import open_checkpoint

    o = start(json_)
    ca = open_checkpoint(a, key=key_a if key_a is not None else _key_for(a, key))
    with ca:
        cb = open_checkpoint(b, key=key_b if key_b is not None else _key_for(b, key))
        with cb, o.progress("comparing") as bar:
            report = run_diff(ca, cb, atol=atol, only=only, exclude=exclude, progress=bar)
    if (only or exclude) and not report.tensors and not report.only_in_a and not report.only_in_b:
        given = " ".join([*(f"--only {g!r}" for g in only or []), *(f"--exclude {g!r}" for g in exclude or [])])
        raise UsageError(f"{given} selects no tensor of either file", hint="ckptool inspect lists the names")
    if json_:
        o.json(report.to_dict())
    else:
        _render(o, report, show_all)
    if report.no_common_names and not json_:
        o.warn(report.notes[-1])
    if not report.identical:
        raise FindingsError("the files differ", path=a)
