"""ckptool scan beside picklescan, modelscan, fickling and modelaudit, side by side in one run.

    pip install picklescan fickling modelscan modelaudit     # for the bench only (not a ckptool dependency)
    python bench/bench_scanners.py [--runs 3] [--tensors 100000] [--scale-dir DIR] [--timeout S] [--timings-only]

Detection and false positives, on ckptool's own corpus built here in a temp folder: the payload files of the
hostile corpus (tests/hostile.py: every case that names a dangerous global) and the gadget pickles of the scan
label tests (tests/formats/test_denylist.py: resolvers, process runners, dotted re-exports, file and network
access), against benign files (the committed fixtures, a training checkpoint, date- and SHA-named copies).
A file counts as flagged when the scanner's CLI exits non-zero on it (what fails a CI step). Scanners that are
not installed are left out of the table.

Speed: each scanner's CLI on a torch.save file of ``--tensors`` small tensors (100,000 by default; the scale
bench's ``n100000.pth`` in ``--scale-dir``, built by bench_scale.build_counts when absent), in fresh processes
(median wall and CPU time, ratios against ``ckptool scan``, peak RSS, and each route's exit codes: a
scanner's exit 1 means "found something" and is a result, not a failure of the run; a run past ``--timeout``
is recorded as "timeout"); also ``ckptool scan -j 2`` on the whole corpus folder against ``-j 1``.
``--timings-only`` runs the speed part alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "formats"))

from _harness import bench_args, measure, report  # noqa: E402

BIN = Path(sys.executable).parent


def _exe(name: str) -> str | None:
    p = BIN / name
    return str(p) if p.exists() else shutil.which(name)


def scanners() -> dict[str, list[str]]:
    """name -> the command line before the file (each exits non-zero when it flags a file)."""
    out = {"ckptool scan": [sys.executable, "-m", "ckptool", "scan", "--no-policy"]}
    for name, exe, args in (
        ("picklescan", "picklescan", ["-p"]),
        ("modelscan", "modelscan", ["-p"]),
        ("fickling", "fickling", ["--check-safety"]),
        ("modelaudit", "modelaudit", ["scan"]),
    ):
        path = _exe(exe)
        if path:
            out[name] = [path, *args]
    return out


def corpus(root: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(malicious, benign) files: (name, path)."""
    import torch
    from hostile import build_corpus
    from test_denylist import GADGETS, _gadget_pickle

    bad: list[tuple[str, Path]] = []
    for c in build_corpus(root / "hostile", root / "canary", payloads_only=True):
        if c.dangerous:
            bad.append((c.name, c.path))
    (root / "gadgets").mkdir()
    for module, name in GADGETS:
        p = root / "gadgets" / f"{module}.{name}.pkl"
        p.write_bytes(_gadget_pickle(module, name))
        bad.append((f"gadget {module}.{name}", p))
    good: list[tuple[str, Path]] = []
    (root / "benign").mkdir()
    for f in sorted((ROOT / "fixtures").iterdir()):
        if f.suffix in (".pth", ".ckpt", ".safetensors", ".onnx"):
            shutil.copy(f, root / "benign" / f.name)
            good.append((f.name, root / "benign" / f.name))
    for name in ("ckpt-20240101.pth", "model-1a2b3c4d.pth"):  # a date and a short SHA in the name
        shutil.copy(ROOT / "fixtures" / "tiny_vgg.pth", root / "benign" / name)
        good.append((name, root / "benign" / name))
    sd = {"w": torch.randn(8, 8), "b": torch.zeros(8)}
    torch.save({"model": sd, "epoch": 3, "lr": 0.1, "opt": {"state": {}, "param_groups": [{"lr": 0.1}]}},
               root / "benign" / "train_state.pt")  # fmt: skip
    good.append(("train_state.pt", root / "benign" / "train_state.pt"))
    return bad, good


def detection(root: Path) -> str:
    bad, good = corpus(root)
    tools = scanners()

    def code(cmd: list[str], path: Path) -> int | str:
        try:
            return subprocess.run([*cmd, str(path)], capture_output=True, timeout=60).returncode
        except subprocess.TimeoutExpired:
            return "timeout"

    def codes(rcs: list[int | str]) -> str:
        return ", ".join(f"{c}: {rcs.count(c)}" for c in sorted(set(rcs), key=str))

    lines = [
        f"### Detection: {len(bad)} malicious files, {len(good)} benign files",
        "",
        "| scanner | malicious flagged | missed | benign flagged (false positives) | exit codes (malicious / benign) |",
        "|---|---:|---|---:|---|",
    ]
    for name, cmd in tools.items():
        with ThreadPoolExecutor(2) as pool:
            hits = list(pool.map(lambda f, c=cmd: code(c, f[1]), bad))
            fps = list(pool.map(lambda f, c=cmd: code(c, f[1]), good))
        missed = [n for (n, _), h in zip(bad, hits, strict=True) if h == 0]
        fp_names = [n for (n, _), h in zip(good, fps, strict=True) if h != 0]
        shown = ", ".join(missed[:8]) + (f", ... ({len(missed) - 8} more)" if len(missed) > 8 else "")
        fp = f"{len(fp_names)}/{len(good)}" + (f" ({', '.join(fp_names)})" if fp_names else "")
        flagged = len(bad) - len(missed)
        lines.append(f"| {name} | {flagged}/{len(bad)} | {shown or '-'} | {fp} | {codes(hits)} / {codes(fps)} |")
        print(lines[-1], flush=True)
    assert not os.listdir(root / "canary")  # nothing ran
    return "\n".join(lines)


def many_tensors(d: Path, n: int) -> Path:
    """The scale bench's file (bench_scale.build_counts: N float32 tensors of 4 elements, torch.save)."""
    from bench_scale import build_counts

    d.mkdir(parents=True, exist_ok=True)
    return build_counts(d, n)[0]


# A scanner's verdict is its exit code: 0 clean, 1 findings (ckptool, picklescan, modelscan, fickling and
# modelaudit all exit 1 or another small code when they flag something). Those are results, recorded per
# route; only a crash (a code not listed here) stops the bench.
VERDICTS = (0, 1, 2, 3)


def timings(d: Path, n: int, runs: int, timeout: float) -> str:
    big = many_tensors(d, n)
    size = os.path.getsize(big) / 1e6
    rows = []
    for name, cmd in scanners().items():
        rows.append(measure(name, [*cmd, str(big)], runs, warmup=0, ok=VERDICTS, timeout=timeout))
        print(rows[-1], flush=True)
    title = f"{n:,} tensors in one torch.save file ({size:.0f} MB), per-run limit {timeout:.0f} s"
    return report(title, rows, rows[0], codes=True)


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tensors", type=int, default=100_000)
        p.add_argument("--scale-dir", default="/tmp/ckptool-bench-scale", help="where the N-tensor file is built")
        p.add_argument("--timeout", type=float, default=600.0, help="per-run limit (s) for each scanner")
        p.add_argument("--timings-only", action="store_true", help="skip the detection corpus")

    a = bench_args(options)
    out = []
    if not a.timings_only:
        with tempfile.TemporaryDirectory() as t:
            out.append(detection(Path(t)))
            print(out[-1], flush=True)
            folder = Path(t)
            ck = scanners()["ckptool scan"]
            j1 = measure("ckptool scan -j 1 (corpus folder)", [*ck, str(folder)], a.runs, ok=VERDICTS)
            j2 = measure("ckptool scan -j 2 (corpus folder)", [*ck, "-j", "2", str(folder)], a.runs, ok=VERDICTS)
            out.append(report("ckptool scan on the corpus folder, --jobs", [j1, j2], j1, codes=True))
            print(out[-1], flush=True)
    out.append(timings(Path(a.scale_dir), a.tensors, a.runs, a.timeout))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
