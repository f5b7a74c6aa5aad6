"""Shared by the bench/ scripts: time whole commands in fresh processes, report medians and peak RSS.

Each run is a fresh child process; its wall time is measured around the child only, and its peak RSS is
that child's own ru_maxrss (read through a tiny wrapper process, so runs do not contaminate each other).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
dt = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss in KiB on Linux
cpu = ru.ru_utime + ru.ru_stime
print(json.dumps({"seconds": dt, "cpu": cpu, "rss_kib": ru.ru_maxrss, "rc": r.returncode, "err": r.stderr.decode()[-400:]}))
"""


@dataclass
class Measure:
    label: str
    seconds: list[float]
    cpu: list[float]
    rss_mib: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def run_once(cmd: Sequence[str]) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if rec["rc"] != 0:
        raise SystemExit(f"benchmark command failed ({rec['rc']}): {' '.join(cmd)}\n{rec['err']}")
    return rec["seconds"], rec["cpu"], rec["rss_kib"] / 1024


def measure(label: str, cmd: Sequence[str], runs: int = 5, warmup: int = 1) -> Measure:
    for _ in range(warmup):
        run_once(cmd)
    times, cpus, peak = [], [], 0.0
    for _ in range(runs):
        s, cpu, rss = run_once(cmd)
        times.append(s)
        cpus.append(cpu)
        peak = max(peak, rss)
    return Measure(label, times, cpus, peak)


def report(title: str, rows: list[Measure], baseline: Measure) -> str:
    """A Markdown table: median wall and CPU time, ratios to the baseline, peak RSS."""
    lines = [
        f"### {title}",
        "",
        "| route | median wall s | wall ratio | median CPU s | CPU ratio | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        ratio = m.median / baseline.median if baseline.median else float("nan")
        cratio = m.cpu_median / baseline.cpu_median if baseline.cpu_median else float("nan")
        lines.append(
            f"| {m.label} | {m.median:.3f} | {ratio:.2f}x | {m.cpu_median:.3f} | {cratio:.2f}x | {m.rss_mib:.0f} |"
        )
    return "\n".join(lines)
