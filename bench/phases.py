"""Where one `ckptool inspect --json` spends its CPU time, phase by phase, in one process.

    python bench/phases.py FILE [--runs 3]

Wraps the torch zip reader's phases (the archive directory, the archive checks, the unpickle, building the
Checkpoint) with CPU-time counters, runs the command with its output discarded, and prints one line a run:
start-up, each phase, the whole command. What is not in a phase is the storage loop, rendering and JSON.
Python's bytecode cache should be on (`env -u PYTHONDONTWRITEBYTECODE`), as in bench/_harness.py.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

_CHILD = r"""
import contextlib, io, sys, time
T = {}
def timed(mod, name):
    orig = getattr(mod, name)
    def w(*a, **k):
        t = time.process_time()
        try:
            return orig(*a, **k)
        finally:
            T[name] = T.get(name, 0.0) + time.process_time() - t
    setattr(mod, name, w)
t0 = time.process_time()
import ckptool.cli.app
from ckptool.formats import _zipread, torch_zip
T["start-up"] = time.process_time() - t0
timed(_zipread, "open_archive"); timed(torch_zip, "_refuse_fatal"); timed(torch_zip.unpickler, "load")
timed(torch_zip, "build_checkpoint")
sys.argv = ["ckptool", "inspect", "--json", sys.argv[1]]
t = time.process_time()
with contextlib.redirect_stdout(io.StringIO()):
    try:
        ckptool.cli.app.run()
    except SystemExit:
        pass
T["command"] = time.process_time() - t
names = {"open_archive": "directory", "_refuse_fatal": "archive checks", "load": "unpickle",
         "build_checkpoint": "TensorInfo records"}
print("  ".join(f"{names.get(k, k)} {v:.2f} s" for k, v in T.items()))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import child_env, compile_ckptool

    compile_ckptool()
    for _ in range(args.runs):
        out: Any = subprocess.run(
            [sys.executable, "-c", _CHILD, args.file], capture_output=True, text=True, check=True, env=child_env()
        )
        print(out.stdout.strip())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
