"""ckptool scan beside picklescan, modelscan, fickling and modelaudit, side by side in one run.

    pip install picklescan fickling modelscan modelaudit     # for the bench only (not a ckptool dependency)
    python bench/bench_scanners.py [--runs 3] [--dir /tmp/ckptool-bench] [--tensors 100000]

Detection and false positives, on ckptool's own corpus built here in a temp folder: the payload files of the
hostile corpus (tests/hostile.py: every case that names a dangerous global) and the gadget pickles of the scan
label tests (tests/formats/test_denylist.py: resolvers, process runners, dotted re-exports, file and network
access), against benign files (the committed fixtures, a training checkpoint, date- and SHA-named copies).
A file counts as flagged when the scanner's CLI exits non-zero on it (what fails a CI step). Scanners that are
not installed are left out of the table.

Speed: each scanner's CLI on a torch.save file of ``--tensors`` small tensors (100,000 by default), in fresh
processes (median wall and CPU time, ratios against ``ckptool scan``, peak RSS); also ``ckptool scan -j 2``
on the whole corpus folder against ``-j 1``.
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

    def flagged(cmd: list[str], path: Path) -> bool:
        try:
            r = subprocess.run([*cmd, str(path)], capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return True
        return r.returncode != 0

    lines = [
        f"### Detection: {len(bad)} malicious files, {len(good)} benign files",
        "",
        "| scanner | malicious flagged | missed | benign flagged (false positives) |",
        "|---|---:|---|---:|",
    ]
    for name, cmd in tools.items():
        with ThreadPoolExecutor(2) as pool:
            hits = list(pool.map(lambda f, c=cmd: flagged(c, f[1]), bad))
            fps = list(pool.map(lambda f, c=cmd: flagged(c, f[1]), good))
        missed = [n for (n, _), h in zip(bad, hits, strict=True) if not h]
        fp_names = [n for (n, _), h in zip(good, fps, strict=True) if h]
        shown = ", ".join(missed[:8]) + (f", ... ({len(missed) - 8} more)" if len(missed) > 8 else "")
        fp = f"{sum(fps)}/{len(good)}" + (f" ({', '.join(fp_names)})" if fp_names else "")
        lines.append(f"| {name} | {sum(hits)}/{len(bad)} | {shown or '-'} | {fp} |")
        print(lines[-1], flush=True)
    assert not os.listdir(root / "canary")  # nothing ran
    return "\n".join(lines)


def many_tensors(path: Path, n: int) -> Path:
    if not path.exists():
        import torch

        torch.save({f"layers.{i}.weight": torch.full((4,), float(i)) for i in range(n)}, path)
    return path


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tensors", type=int, default=100_000)

    a = bench_args(options)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    with tempfile.TemporaryDirectory() as t:
        out.append(detection(Path(t)))
        print(out[-1], flush=True)
        folder = Path(t)
        j1 = measure("ckptool scan -j 1 (corpus folder)", [*scanners()["ckptool scan"], str(folder)], a.runs)
        j2 = measure("ckptool scan -j 2 (corpus folder)", [*scanners()["ckptool scan"], "-j", "2", str(folder)], a.runs)
        out.append(report("ckptool scan on the corpus folder, --jobs", [j1, j2], j1))
        print(out[-1], flush=True)
    big = many_tensors(d / f"tensors_{a.tensors}.pth", a.tensors)
    size = os.path.getsize(big) / 1e6
    rows = []
    for name, cmd in scanners().items():
        rows.append(measure(f"{name}", [*cmd, str(big)], a.runs, warmup=0))
        print(rows[-1], flush=True)
    out.append(report(f"{a.tensors:,} tensors in one torch.save file ({size:.0f} MB)", rows, rows[0]))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
