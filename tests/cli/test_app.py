"""The console entry point (``ckptool.cli.app.run``): what one command's process holds when it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli.clihelp import ROOT

FIXTURE = ROOT / "fixtures" / "tiny_vgg.pth"  # a torch zip: its archive checks import numpy

# run one command through run(), then report from an atexit hook (run() ends in SystemExit)
_PROBE = r"""
import atexit, os, sys
def report():
    tasks = len(os.listdir("/proc/self/task"))
    print("PROBE", tasks, os.environ.get("OPENBLAS_NUM_THREADS"), "numpy" in sys.modules,
          "ckptool.sources.remote" in sys.modules, "http.client" in sys.modules, file=sys.stderr)
atexit.register(report)
sys.argv = ["ckptool", *sys.argv[1:]]
from ckptool.cli.app import run
run()
"""


def _probe(args: list[str], env: dict[str, str]) -> list[str]:
    p = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("PROBE ")]
    assert len(line) == 1, p.stderr
    return line[0].split()[1:]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env.update(extra)
    return env


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_a_local_inspect_runs_one_thread_and_no_network_module(tmp_path: Path) -> None:
    """numpy's OpenBLAS would start a spinning thread per core (0.07-0.1 s of CPU a command); the remote sources
    (http.client, ssl) are imported only for a URL."""
    tasks, blas, numpy, remote, http = _probe(["inspect", "--json", str(FIXTURE)], _env())
    assert numpy == "True"  # (the archive checks ran: the probe would prove nothing without numpy)
    assert blas == "1"
    assert tasks == "1"
    assert remote == "False" and http == "False"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_the_users_blas_setting_is_kept() -> None:
    tasks, blas, numpy, _, _ = _probe(["scan", str(FIXTURE)], _env(OPENBLAS_NUM_THREADS="2"))
    assert numpy == "True" and blas == "2"
    assert int(tasks) >= 2  # numpy's BLAS started its second thread, as the user asked


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_commands_that_may_run_torch_leave_blas_alone() -> None:
    """predict, parity, export (--onnx) and check (a custom module) may import torch, whose OpenBLAS build
    (aarch64) could read the same variable: the CLI does not set it for them."""
    for command in ("predict", "parity", "export", "check"):
        _, blas, _, _, _ = _probe([command, "--help"], _env())
        assert blas == "None", command
