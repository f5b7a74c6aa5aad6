"""Shared by the bench/ scripts: time whole commands in fresh processes, report medians and peak RSS.

Each run is a fresh child process; its wall time is measured around the child only, and its peak RSS is
that child's own ru_maxrss (read through a tiny wrapper process, so runs do not contaminate each other).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

_WRAPPER = r"""
import json, resource, subprocess, sys, time
limit = float(sys.argv[1]) or None
t = time.perf_counter()
try:
    r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=limit)
    rc, err = r.returncode, r.stderr.decode()[-400:]
except subprocess.TimeoutExpired:
    rc, err = "timeout", f"killed after {limit} s"
dt = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss in KiB on Linux
cpu = ru.ru_utime + ru.ru_stime
print(json.dumps({"seconds": dt, "cpu": cpu, "rss_kib": ru.ru_maxrss, "rc": rc, "err": err}))
"""


def child_env() -> dict[str, str]:
    """The benchmarked commands' environment: this one, with Python's bytecode cache on.

    A machine that sets ``PYTHONDONTWRITEBYTECODE=1`` (this project's CI machines do) makes every ckptool
    command compile its own sources again (0.2 s a command), while torch, installed by pip, runs from the
    bytecode pip compiled at install time. Users' installs have both compiled, so the children run with the
    cache on, and :func:`compile_ckptool` fills it before the first timed run."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


_COMPILED: list[bool] = []


def compile_ckptool() -> None:
    """Byte-compile the ckptool package the benchmarks run (what ``pip install`` does for a regular install)."""
    import ckptool

    compileall.compile_dir(str(Path(ckptool.__file__).parent), quiet=1)


@dataclass
class Measure:
    label: str
    seconds: list[float]
    cpu: list[float]
    rss_mib: float
    exit_codes: tuple[int | str, ...] = ()  # each run's exit code ("timeout" when killed at the limit)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def run_with_code(
    cmd: Sequence[str], ok: Collection[int] = (0,), timeout: float | None = None
) -> tuple[float, float, float, int | str]:
    """One fresh run: (wall s, CPU s, peak RSS MiB, exit code). An exit code outside ``ok`` is a crash of the
    benchmarked command and stops the bench; codes in ``ok`` are results (a scanner's "found something" exit 1).
    With ``timeout``, a run killed at the limit reports the exit code "timeout" (a result, not a crash)."""
    wrapped = [sys.executable, "-c", _WRAPPER, str(timeout or 0), *cmd]
    out = subprocess.run(wrapped, capture_output=True, text=True, check=True, env=child_env())
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if rec["rc"] != "timeout" and rec["rc"] not in ok:
        raise SystemExit(f"benchmark command failed ({rec['rc']}): {' '.join(cmd)}\n{rec['err']}")
    return rec["seconds"], rec["cpu"], rec["rss_kib"] / 1024, rec["rc"]


def run_once(cmd: Sequence[str]) -> tuple[float, float, float]:
    s, cpu, rss, _ = run_with_code(cmd)
    return s, cpu, rss


def measure(
    label: str,
    cmd: Sequence[str],
    runs: int = 5,
    warmup: int = 1,
    ok: Collection[int] = (0,),
    timeout: float | None = None,
) -> Measure:
    """Median-ready timings of ``cmd`` in fresh processes; ``ok`` are the exit codes that count as a result."""
    if not _COMPILED:
        compile_ckptool()
        _COMPILED.append(True)
    for _ in range(warmup):
        run_with_code(cmd, ok, timeout)
    times, cpus, peak, codes = [], [], 0.0, []
    for _ in range(runs):
        s, cpu, rss, rc = run_with_code(cmd, ok, timeout)
        times.append(s)
        cpus.append(cpu)
        peak = max(peak, rss)
        codes.append(rc)
    return Measure(label, times, cpus, peak, tuple(codes))


def report(title: str, rows: list[Measure], baseline: Measure, codes: bool = False) -> str:
    """A Markdown table: median wall and CPU time, ratios to the baseline, peak RSS (and, with ``codes``, each
    route's exit codes: a scanner's exit 1 is its verdict, recorded beside its time)."""
    extra = " exit codes |" if codes else ""
    lines = [
        f"### {title}",
        "",
        "| route | median wall s | wall ratio | median CPU s | CPU ratio | peak RSS MiB |" + extra,
        "|---|---:|---:|---:|---:|---:|" + ("---|" if codes else ""),
    ]
    for m in rows:
        ratio = m.median / baseline.median if baseline.median else float("nan")
        cratio = m.cpu_median / baseline.cpu_median if baseline.cpu_median else float("nan")
        rc = f" {', '.join(sorted({str(c) for c in m.exit_codes}))} |" if codes else ""
        lines.append(
            f"| {m.label} | {m.median:.3f} | {ratio:.2f}x | {m.cpu_median:.3f} | {cratio:.2f}x | {m.rss_mib:.0f} |" + rc
        )
    return "\n".join(lines)


def bench_args(extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every bench script takes: --runs (fresh-process runs per route) and --dir (built files)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/ckptool-bench")
    if extra is not None:
        extra(ap)
    return ap.parse_args()


def vgg16_bn_files(d: Path) -> dict[str, Path]:
    """A full-size vgg16_bn (553 MB) in torch zip format and in legacy format without num_batches_tracked
    (like torchvision's 2017 file), built once in ``d`` and shared by the bench scripts."""
    files = {"zip": d / "vgg16_bn.pth", "legacy": d / "vgg16_bn_legacy.pth"}
    if not all(p.exists() for p in files.values()):
        from factory import save, vgg_state_dict

        d.mkdir(parents=True, exist_ok=True)
        sd = vgg_state_dict("vgg16_bn")
        save(sd, files["zip"], "zip")
        save(
            OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")),
            files["legacy"],
            "legacy",
        )
    return files
