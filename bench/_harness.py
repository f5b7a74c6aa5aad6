"""Shared by the bench/ scripts: time whole commands in fresh processes, report medians and peak RSS.

Each run is a fresh child process; its wall time is measured around the child only, and its peak RSS is
that child's own ru_maxrss (read through a tiny wrapper process, so runs do not contaminate each other).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
