"""The installed ``ckptool`` script, run as a user runs it (:func:`run_script`) or measured in a fresh process
(:func:`run_measured`: exit code, CPU, wall time, peak RSS). Torch-free, so conftest stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_script(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        _script() + [str(a) for a in args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def _script() -> list[str]:
    """The installed console script (or ``python -m ckptool`` when it is not on the venv's bin)."""
    exe = Path(sys.executable).with_name("ckptool")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ckptool"]


# A small fresh process forks the command and reports its rusage: measuring a child of the pytest process
# itself would report pytest's own peak RSS (Linux carries the high-water mark across fork and exec).
MEASURE = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_pid, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "cpu": ru.ru_utime + ru.ru_stime,
               "wall": time.perf_counter() - t0, "rss_mb": ru.ru_maxrss / 1024}, fh)
"""


def run_measured(args: list[str], tmp: Path) -> tuple[int, str, str, float, float, float]:
    """(exit code, stdout, stderr, CPU seconds, wall seconds, peak RSS MB) of one fresh process."""
    res = tmp / "rusage.json"
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(res), *_script(), *args], capture_output=True, text=True, timeout=120
    )
    m = json.loads(res.read_text())
    return m["code"], proc.stdout, proc.stderr, m["cpu"], m["wall"], m["rss_mb"]
