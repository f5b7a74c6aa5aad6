"""`ckptool check`: does a file fit an architecture, and if not, exactly why (exit 0 / 1 / 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FindingsError
from ._options import AllowGlobalOpt, ArchArgOpt, ArchOpt, JsonOpt, KeyOpt, NumClassesOpt, PartOpt, PathArg, TimeoutOpt
from ._output import Output, start

if TYPE_CHECKING:
    from ..compat import CompatReport

LIST_MAX = 20


def _listing(o: Output, title: str, items: list[str]) -> None:
    o.line(f"{title} ({len(items)}):")
    for k in items[:LIST_MAX]:
        o.line(f"  {k}")
    if len(items) > LIST_MAX:
        o.line(f"  ... and {len(items) - LIST_MAX} more (--json lists them all)")


def _candidate(c: dict) -> str:
    n = c.get("num_classes")
    classes = f" ({n} classes)" if n not in (None, 1000) else ""
    return f"{c['arch']}{classes} {c['score']:.3f}"


def render(o: Output, r: CompatReport) -> None:
    if r.arch is None and r.findings:  # nothing known matches: one line (and the close ones, if any)
        o.line(f"{r.path}: {r.findings[0]}")
        if r.candidates:
            o.line("candidates: " + ", ".join(_candidate(c) for c in r.candidates))
        return
    if r.arch is None:
        verdict = "no known architecture matches"
    else:
        target = r.arch + (f"[{r.part}]" if r.part else "")
        if r.num_classes not in (None, 1000) and r.spec is not None and r.spec.source != "custom":
            target += f" with {r.num_classes} classes"
        verdict = ("compatible with " if r.compatible else "NOT compatible with ") + target
    o.line(f"{r.path}: ", (verdict, "green" if r.compatible else "bold red"))
    pairs: list[tuple[str, str]] = []
    if r.arch is not None:
        how = f"identified from the weights, score {r.score:.3f}" if r.requested == "auto" else "as requested"
        pairs.append(("arch", f"{r.arch} ({how})"))
        pairs.append(("keys", f"{r.matched} of {r.expected_keys} expected keys match; the file has {r.file_keys}"))
    if r.state_dict_key:
        pairs.append(("state_dict", f"{r.state_dict_key} (inside a training checkpoint)"))
    if r.prefix:
        pairs.append(("prefix", f"{r.prefix} (stripped)"))
    if pairs:
        o.kv(pairs)
    if r.missing:
        _listing(o, "missing", r.missing)
    if r.unexpected:
        _listing(o, "unexpected", r.unexpected)
    if r.mismatched:
        o.line(f"mismatched ({len(r.mismatched)}):")
        rows = [(d["key"], str(d["expected"]), str(d["found"])) for d in r.mismatched[:LIST_MAX]]
        o.table(["key", "expected", "found"], rows)
        if len(r.mismatched) > LIST_MAX:
            o.line(f"... and {len(r.mismatched) - LIST_MAX} more (--json lists them all)")
    for f in r.findings:
        o.line(f"finding: {f}")
    for n in r.dtype_notes:
        o.line(f"note: {n}")
    if r.candidates and (r.requested == "auto" or r.candidates[0]["score"] >= 0.5):
        o.line("candidates: " + ", ".join(_candidate(c) for c in r.candidates))


def check(
    path: PathArg,
    arch: ArchOpt = "auto",
    num_classes: NumClassesOpt = None,
    part: PartOpt = None,
    arch_arg: ArchArgOpt = None,
    key: KeyOpt = None,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Does the file fit the architecture? Missing, unexpected and mis-shaped keys, in words.

    Exit 0 compatible, 1 incompatible (or nothing matches), 2 error. Header-only and torch-free for
    registry architectures.
    """
    from ..arch.registry import parse_arch_args
    from ..compat import check as check_compat
    from ..formats import open_checkpoint

    o = start(json_)
    args = parse_arch_args(arch_arg)
    ck = open_checkpoint(path, key=key)
    report = check_compat(ck, arch or "auto", num_classes=num_classes, part=part, arch_args=args or None)
    if json_:
        o.json(report.to_dict())
    else:
        render(o, report)
    if not report.compatible:
        raise FindingsError("not compatible" if report.arch else "no known architecture matches", path=path)
