"""`ckptool scan`: static safety and integrity checks for CI (parse + render only; the work is in ckptool.scan)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import CkptError, FindingsError
from ._errors import error_object
from ._options import AllowGlobalOpt, JsonOpt
from ._output import Output, Part, plural, start

if TYPE_CHECKING:
    from ..scan import ScanReport

PathsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Weight files: .pth/.pt/.bin/.ckpt (torch zip or legacy), pickles, .safetensors, .onnx.",
        show_default=False,
    ),
]
NoValuesOpt = Annotated[
    bool,
    typer.Option(
        "--no-values",
        help="Header-only fast pass: skip NaN/Inf and running_var checks, CRCs of tensor records and the "
        "file-name hash (everything that reads tensor bytes).",
    ),
]


StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Every finding fails the run, also those reported as warnings by default (a file name's hash-like "
        "suffix that does not match its sha256: it may be a date or a short git SHA).",
    ),
]


def _render(o: Output, r: ScanReport) -> None:
    from ..scan import DANGEROUS, SAFE, WARNING

    warns = len(r.warnings)
    errors = len(r.findings) - warns
    status = "ok" if r.safe else f"FINDINGS ({errors})"
    if warns:
        status += f" ({plural(warns, 'warning')})"
    globs = r.global_summary()
    parts = [r.format, plural(len(r.pickles), "pickle")] if r.pickles else [r.format]
    if globs:
        n_safe = sum(g["verdict"] == SAFE for g in globs)
        parts.append(f"{len(globs)} globals, {n_safe} on the allowlist")
    if r.values_checked:
        parts.append(f"{r.tensors_checked} tensors' values checked")
    o.line(f"{r.path}: ", (status, "green" if r.safe else "bold red"), f"  ({'; '.join(parts)})")
    for g in globs:
        if g["verdict"] == SAFE:
            continue
        style = "bold red" if g["verdict"] == DANGEROUS else "yellow"
        spelled = f" (written {g['spelled']})" if g.get("spelled") else ""
        o.line("  ", (f"{g['verdict']:<9}", style), f"  {g['name']}{spelled}  x{g['count']} in {', '.join(g['where'])}")
    for f in r.findings:
        where = f"{f.where}: " if f.where else ""
        tag: Part = (f"[{f.kind}]", "bold red" if f.kind == "dangerous-global" else "yellow")
        o.line("  ", tag, " warning: " if f.severity == WARNING else " ", f"{where}{f.message}")
    for n in r.notes:
        o.line(f"  note: {n}")


def scan(
    paths: PathsArg,
    no_values: NoValuesOpt = False,
    strict: StrictOpt = False,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
) -> None:
    """Static safety and integrity scan for CI: every pickle and every global it references (safe / dangerous /
    unknown), hidden pickles, NaN/Inf and negative running_var, zip and safetensors structure, ONNX external data,
    and the file-name hash (a warning unless --strict). Never unpickles. Exit 0 clean (warnings aside), 1 findings,
    2 could not scan."""
    from ..scan import scan as scan_file

    o = start(json_)
    files: list[dict[str, Any]] = []
    first_error: dict[str, Any] | None = None
    clean = dirty = failed = 0
    for p in paths:
        try:
            report = scan_file(p, values=not no_values, strict=strict)
        except CkptError as e:
            failed += 1
            o.error(e.render())
            err = error_object(type(e).__name__, e.message, e.path, e.hint)
            first_error = first_error or err
            files.append({"path": str(p), "safe": False, "error": e.render(), "globals": [], "findings": []})
            continue
        if report.safe:
            clean += 1
        else:
            dirty += 1
        if json_:
            files.append(report.to_dict())
        else:
            _render(o, report)
    if json_:
        # one object: the files, and (exit 2) the first error in the shape every command uses
        o.json({"files": files, **(first_error or {})})
    elif len(paths) > 1:
        o.line(f"scanned {len(paths)} files: {clean} clean, {dirty} with findings, {failed} could not be scanned")
    if failed:
        raise typer.Exit(2)
    if dirty:
        raise FindingsError(f"{dirty} of {len(paths)} files with findings")
