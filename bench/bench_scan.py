"""ckptool scan vs what users do today, side by side in one run.

    python bench/bench_scan.py [--runs 5] [--dir /tmp/ckptool-bench] [--no-corpus]

Speed, on a full-size vgg16_bn (553 MB, zip and legacy), each route in fresh processes (median wall and CPU
time, ratios, the child's peak RSS):
  * ``ckptool scan --no-values`` (every pickle, every global, container structure) and ``ckptool scan``
    (plus NaN/Inf, running_var, CRCs of every record);
  * a hand-rolled ``pickletools.genops`` walk of every pickle, listing GLOBAL/STACK_GLOBAL names (the
    smallest static check people write);
  * ``picklescan`` (if installed: ``pip install picklescan``), the usual static scanner;
  * ``torch.load(weights_only=True)`` plus ``torch.isfinite`` over every floating tensor, the check people
    run when they do not have a scanner.

Detection, on the hostile corpus of the test suite (tests/hostile.py, built here in a temp folder): which
payload files each static scanner flags (ckptool scan exit 1; picklescan exit 1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _harness import bench_args, measure, report  # noqa: E402
from bench_inspect import build  # noqa: E402

GENOPS = r"""
import pickletools, sys, zipfile
def walk(f):
    names, strings = [], []
    for op, arg, _ in pickletools.genops(f):
        if op.name in ("GLOBAL", "INST"):
            names.append(arg)
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(strings[-2] + " " + strings[-1])
        elif isinstance(arg, str):
            strings.append(arg)
    return names
path = sys.argv[1]
found = []
if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
        for n in zf.namelist():
            if n.endswith(".pkl"):
                with zf.open(n) as fh:
                    found += walk(fh)
else:
    with open(path, "rb") as fh:
        for _ in range(5):  # the legacy format's stacked pickles
            found += walk(fh)
print(sorted(set(found)))
"""

TORCH_CHECK = r"""
import sys, torch
zip_ = sys.argv[2] == "zip"
sd = torch.load(sys.argv[1], weights_only=True, mmap=zip_)
bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
print(len(sd), bad)
"""


def detection(rows: list[str]) -> str:
    from hostile import build_corpus

    with tempfile.TemporaryDirectory() as d:
        cases = [c for c in build_corpus(Path(d) / "c", Path(d) / "canary", payloads_only=True) if c.dangerous]
        have_ps = _picklescan() is not None
        mine = theirs = 0
        missed_by_them: list[str] = []
        missed_by_me: list[str] = []
        for c in cases:
            ck = subprocess.run(
                [sys.executable, "-m", "ckptool", "scan", "--no-values", str(c.path)], capture_output=True
            )
            mine += ck.returncode == 1
            if ck.returncode != 1:
                missed_by_me.append(c.name)
            if have_ps:
                ps = subprocess.run([_picklescan(), "-p", str(c.path)], capture_output=True)  # type: ignore[list-item]
                theirs += ps.returncode == 1
                if ps.returncode != 1:
                    missed_by_them.append(c.name)
        assert not os.listdir(Path(d) / "canary")
    lines = [
        "### Detection: payload files of the hostile corpus",
        "",
        "| scanner | flagged | missed |",
        "|---|---:|---|",
    ]
    lines.append(f"| ckptool scan | {mine}/{len(cases)} | {', '.join(missed_by_me) or '-'} |")
    if have_ps:
        lines.append(f"| picklescan | {theirs}/{len(cases)} | {', '.join(missed_by_them) or '-'} |")
    rows.append("\n".join(lines))
    return "\n".join(lines)


def _picklescan() -> str | None:
    exe = Path(sys.executable).with_name("picklescan")
    return str(exe) if exe.exists() else None


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-corpus", action="store_true", help="skip the detection table")

    a = bench_args(options)
    files = build(Path(a.dir))
    ck = [sys.executable, "-m", "ckptool"]
    out: list[str] = []
    for label in ("zip", "legacy"):
        path = files[label]
        size = os.path.getsize(path) / 1e6
        rows = [
            measure(f"ckptool scan --no-values ({label})", [*ck, "scan", "--no-values", str(path)], a.runs),
            measure(f"ckptool scan ({label})", [*ck, "scan", str(path)], a.runs),
            measure(f"pickletools.genops walk ({label})", [sys.executable, "-c", GENOPS, str(path)], a.runs),
        ]
        ps = _picklescan()
        if ps:
            rows.append(measure(f"picklescan ({label})", [ps, "-p", str(path)], a.runs))
        rows.append(
            measure(
                f"torch.load(weights_only=True) + isfinite ({label})",
                [sys.executable, "-c", TORCH_CHECK, str(path), label],
                a.runs,
            )
        )
        out.append(report(f"{label}: {path.name} ({size:.0f} MB)", rows, rows[1]))
    if not a.no_corpus:
        detection(out)
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
