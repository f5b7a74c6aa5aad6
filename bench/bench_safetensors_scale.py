"""safetensors at 100k tensors: ckptool now, ckptool at an older commit, and safe_open + print, side by side.

    python bench/bench_safetensors_scale.py [--runs 3] [--counts 10000,100000] [--before 4fb5e2a]
                                            [--dir /tmp/ckptool-bench-scale]

The files are bench_scale.py's (N float32 tensors of 4 elements, written by safetensors.torch.save_file; built
here when missing). Routes: `ckptool inspect --json`, `ckptool scan`, `ckptool inspect --plain`, each as the
working tree's ckptool and as ``--before`` (``git archive`` of that commit into a temporary folder, imported
ahead of the editable install), then `safe_open` + print(k, shape) and `ckptool --version` (the start-up every
command pays). Fresh processes, medians, CPU and wall time, peak RSS (see _harness.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import bench_args, measure, report

ROOT = Path(__file__).resolve().parents[1]
ST_LIST = (
    "import sys; from safetensors import safe_open\n"
    "with safe_open(sys.argv[1], 'np') as f:\n"
    "    for k in f.keys(): print(k, f.get_slice(k).get_shape())"
)
# the older tree, ahead of the editable install's finder (which would win over sys.path)
BEFORE = (
    "import sys; tree = sys.argv.pop(1)\n"
    "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
    "sys.path.insert(0, tree); sys.argv[0] = 'ckptool'\n"
    "import ckptool; assert ckptool.__file__.startswith(tree), ckptool.__file__\n"
    "from ckptool.cli.app import run; run()"
)


def build(d: Path, n: int) -> Path:
    path = d / f"n{n}.safetensors"
    if not path.exists():
        import torch
        from safetensors.torch import save_file

        save_file({f"layers.{i}.weight": torch.zeros(4) for i in range(n)}, str(path))
    return path


def main() -> None:
    def extra(ap: object) -> None:
        ap.add_argument("--counts", default="10000,100000")  # type: ignore[attr-defined]
        ap.add_argument("--before", default="4fb5e2a")  # type: ignore[attr-defined]

    a = bench_args(extra)
    d = Path(a.dir if a.dir != "/tmp/ckptool-bench" else "/tmp/ckptool-bench-scale")
    d.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.before], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        out = []
        for n in [int(x) for x in a.counts.split(",")]:
            f = str(build(d, n))
            routes = []
            for args in (["inspect", "--json"], ["scan"], ["inspect", "--plain"]):
                routes.append((f"ckptool {' '.join(args)}", [py, "-m", "ckptool", *args, f]))
                routes.append((f"ckptool {' '.join(args)} at {a.before}", [py, "-c", BEFORE, tree, *args, f]))
            routes += [
                ("safe_open + print", [py, "-c", ST_LIST, f]),
                ("ckptool --version", [py, "-m", "ckptool", "--version"]),
            ]
            ms = [measure(f"{label}, N={n:,}", cmd, runs=a.runs, warmup=0, ok=(0, 1)) for label, cmd in routes]
            out.append(report(f"{n:,} tensors", ms, ms[0]))
            print(out[-1], flush=True)
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
