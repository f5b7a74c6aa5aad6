"""`ckptool scan`: static safety and integrity checks for CI (parse + render only; the work is in ckptool.scan)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import FindingsError
from ._errors import error_object
from ._options import AllowGlobalOpt, DownloadOpt, JsonOpt, TimeoutOpt
from ._output import Output, Part, plural, start

if TYPE_CHECKING:
    from ..scan import ScanReport
    from ..scanset import Skipped

PathsArg = Annotated[
    list[str],  # not Path: a URL keeps its "//"
    typer.Argument(
        help="Weight files (.pth/.pt/.bin/.ckpt torch zip or legacy, pickles, .safetensors, .onnx), folders (walked "
        "recursively: every file recognised by its content) and globs ('weights/**/*.bin').",
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


JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=0,
        help="Scan this many files at once, in separate processes (0: one per CPU). The output order does not "
        "depend on it.",
    ),
]


class ScanFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


FormatOpt = Annotated[
    ScanFormat,
    typer.Option(
        "--format",
        "-f",
        help="text (default), json (= --json), or sarif: SARIF 2.1.0 for GitHub code scanning (rule ids per "
        "finding kind, file URIs relative to $GITHUB_WORKSPACE or the current folder).",
        show_default=False,
    ),
]


PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="The policy file: a .ckptool.toml or a pyproject.toml with [tool.ckptool] (default: the nearest one "
        "upward from the current folder, then from the scanned paths).",
        show_default=False,
    ),
]
NoPolicyOpt = Annotated[bool, typer.Option("--no-policy", help="Ignore policy files.")]


def _render_skipped(o: Output, skipped: list[Skipped]) -> None:
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append(s.path)
    for reason, paths in by_reason.items():
        shown = ", ".join(paths[:5]) + (f", ... ({len(paths) - 5} more)" if len(paths) > 5 else "")
        o.line(f"skipped {plural(len(paths), 'path')} ({reason}): {shown}")


def scan(
    paths: PathsArg,
    no_values: NoValuesOpt = False,
    strict: StrictOpt = False,
    jobs: JobsOpt = 1,
    format_: FormatOpt = ScanFormat.text,
    policy: PolicyOpt = None,
    no_policy: NoPolicyOpt = False,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Static safety and integrity scan for CI: every pickle and every global it references (safe / dangerous /
    unknown), hidden pickles, NaN/Inf and negative running_var, zip and safetensors structure, ONNX external data,
    and the file-name hash (a warning unless --strict). Never unpickles. Folders are walked and globs expanded:
    every file recognised by its content is scanned, the rest is listed as skipped. Exit 0 clean (warnings aside),
    1 findings, 2 could not scan."""
    import os

    from ..policy import discover
    from ..scanset import ScanFailure, ScanOptions, scan_paths

    json_ = json_ or format_ == ScanFormat.json
    sarif = format_ == ScanFormat.sarif
    o = start(json_ or sarif)
    pol = discover(paths, explicit=str(policy) if policy else None, use=not no_policy)
    options = ScanOptions(values=not no_values, strict=strict, allow_globals=tuple(allow_global or ()), policy=pol)
    run = scan_paths(paths, options, jobs=jobs or os.cpu_count() or 1)
    files: list[dict[str, Any]] = []
    first_error: dict[str, Any] | None = None
    clean = dirty = failed = 0
    for r in run.results:
        if isinstance(r, ScanFailure):
            failed += 1
            o.error(r.error)
            first_error = first_error or error_object(r.type, r.message, r.path, r.hint)
            files.append({"path": r.path, "safe": False, "error": r.error, "globals": [], "findings": []})
            continue
        if r.safe:
            clean += 1
        else:
            dirty += 1
        if json_:
            files.append(r.to_dict())
        elif not sarif:
            _render(o, r)
    total = clean + dirty + failed
    if sarif:
        from ..sarif import to_sarif

        o.json(to_sarif(run))
    elif json_:
        # one object: the files, the skipped paths (when a folder or glob skipped any), and (exit 2) the first error in the shape every command uses
        skipped = {"skipped": [s.to_dict() for s in run.skipped]} if run.skipped else {}
        used = {"policy": pol.to_dict()} if pol.path else {}
        o.json({"files": files, **skipped, **used, **(first_error or {})})
    else:
        _render_skipped(o, run.skipped)
        if pol.path:
            o.line(f"policy: {pol.path}")
        if total > 1 or run.skipped:
            summary = (
                f"scanned {plural(total, 'file')}: {clean} clean, {dirty} with findings, {failed} could not be scanned"
            )
            o.line(summary + (f", {len(run.skipped)} skipped" if run.skipped else ""))
    if failed:
        raise typer.Exit(2)
    if dirty:
        raise FindingsError(f"{dirty} of {total} files with findings")
