"""`ckptool scan`: static safety and integrity checks for CI (parse + render only; the work is in ckptool.scan)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import CkptError
from ._errors import error_line
from ._options import AllowGlobalOpt, JsonOpt
from ._output import is_tty, out, print_json

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


def _style(text: str, style: str) -> str:
    return f"[{style}]{text}[/{style}]" if is_tty() else text


def _render(r: ScanReport) -> list[str]:
    from ..scan import DANGEROUS, SAFE

    status = "ok" if r.safe else f"FINDINGS ({len(r.findings)})"
    head = f"{r.path}: {_style(status, 'green' if r.safe else 'bold red')}"
    globs = r.global_summary()
    parts = [r.format, f"{len(r.pickles)} pickle{'s' if len(r.pickles) != 1 else ''}"] if r.pickles else [r.format]
    if globs:
        n_safe = sum(g["verdict"] == SAFE for g in globs)
        parts.append(f"{len(globs)} globals, {n_safe} on the allowlist")
    if r.values_checked:
        parts.append(f"{r.tensors_checked} tensors' values checked")
    lines = [f"{head}  ({'; '.join(parts)})"]
    for g in globs:
        if g["verdict"] == SAFE:
            continue
        style = "bold red" if g["verdict"] == DANGEROUS else "yellow"
        spelled = f" (written {g['spelled']})" if g.get("spelled") else ""
        lines.append(
            f"  {_style(g['verdict'], style):<9}  {g['name']}{spelled}  x{g['count']} in {', '.join(g['where'])}"
        )
    for f in r.findings:
        where = f"{f.where}: " if f.where else ""
        lines.append(f"  [{f.kind}] {where}{f.message}")
    for n in r.notes:
        lines.append(f"  note: {n}")
    return lines


def _print(lines: list[str]) -> None:
    if is_tty():
        from rich.console import Console

        con = Console(highlight=False, soft_wrap=True)
        for line in lines:
            con.print(line)
        return
    for line in lines:
        out(line)


def scan(
    paths: PathsArg, no_values: NoValuesOpt = False, json_: JsonOpt = False, allow_global: AllowGlobalOpt = None
) -> None:
    """Static safety and integrity scan for CI: every pickle and every global it references (safe / dangerous /
    unknown), hidden pickles, NaN/Inf and negative running_var, zip and safetensors structure, ONNX external data,
    and the file-name hash. Never unpickles. Exit 0 clean, 1 findings, 2 could not scan."""
    from ..scan import scan as scan_file

    files: list[dict[str, Any]] = []
    code = 0
    clean = dirty = failed = 0
    for p in paths:
        try:
            report = scan_file(p, values=not no_values)
        except CkptError as e:
            failed += 1
            code = 2
            error_line(e.render())
            files.append({"path": str(p), "safe": False, "error": e.render(), "globals": [], "findings": []})
            continue
        if report.safe:
            clean += 1
        else:
            dirty += 1
            code = max(code, 1)
        if json_:
            files.append(report.to_dict())
        else:
            _print(_render(report))
    if json_:
        print_json({"files": files})
    elif len(paths) > 1:
        out(f"scanned {len(paths)} files: {clean} clean, {dirty} with findings, {failed} could not be scanned")
    if code:
        raise typer.Exit(code)
