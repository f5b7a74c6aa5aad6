"""ckptool export --safetensors / --pth vs what users do today, side by side in one run.

    python bench/bench_export.py [--runs 5] [--dir /tmp/ckptool-bench] [--cold]

Builds (once, in --dir) a full-size vgg16_bn (553 MB) in torch zip and legacy format, then for each source
times, in fresh processes (median wall and CPU time, ratios, the child's peak RSS):

  - ckptool export SRC --safetensors OUT            (streamed, bit-exact check on: the default)
  - ckptool export SRC --safetensors OUT --no-verify
  - torch.load(mmap=True) + safetensors.torch.save_file   (mmap=False for legacy files, which cannot be mapped)
  - cp SRC OUT                                        (the floor: a kernel copy, nothing durable)
  - cp SRC OUT && sync OUT                            (the same copy, flushed to disk as ckptool's fsync does)
  - ckptool export SRC --pth OUT, against torch.load + torch.save

Routes run round-robin (run 1 of each, then run 2, ...) so bursts of load on a shared machine hit all of
them alike. Before every run the output is deleted and dirty pages are flushed (``os.sync()``), outside the
timing, so no run pays for the previous run's writeback. The source stays in the page cache after the
warm-up round, for every route alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import Measure, bench_args, report, run_once, vgg16_bn_files

TORCH_ST = (
    "import sys, torch; from safetensors.torch import save_file\n"
    "sd = torch.load(sys.argv[1], mmap={mmap}, weights_only=True)\n"
    "save_file({{k: v.contiguous() for k, v in sd.items()}}, sys.argv[2], metadata={{'format': 'pt'}})"
)
TORCH_PTH = "import sys, torch; torch.save(torch.load(sys.argv[1], mmap={mmap}, weights_only=True), sys.argv[2])"
CP_SYNC = 'cp "$1" "$2" && sync "$2"'
LIB_EXPORT = (
    "import sys; from ckptool import open_checkpoint\n"
    "from ckptool.convert.safetensors_writer import export_safetensors\n"
    "from ckptool.convert.pth_writer import export_pth\n"
    "f = export_safetensors if sys.argv[2].endswith('.safetensors') else export_pth\n"
    "f(open_checkpoint(sys.argv[1]), sys.argv[2], verify=sys.argv[3] == '1')"
)


def build(d: Path) -> dict[str, Path]:
    return vgg16_bn_files(d)


def drop_caches() -> None:
    """Evict the page cache (root only), so the next run reads its source from disk, as a first conversion of
    a freshly copied file does."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def measure_interleaved(
    routes: list[tuple[str, list[str], Path]], runs: int, warmup: int = 1, cold: bool = False
) -> list[Measure]:
    """Like _harness.measure, but round-robin over the routes (run 1 of every route, then run 2, ...), so
    a burst of load on a shared machine hits every route alike; ``out`` is deleted and dirty pages are
    flushed before each run (untimed)."""
    times: list[list[float]] = [[] for _ in routes]
    cpus: list[list[float]] = [[] for _ in routes]
    peaks = [0.0 for _ in routes]
    for i in range(warmup + runs):
        for k, (_label, cmd, out) in enumerate(routes):
            out.unlink(missing_ok=True)
            os.sync()
            if cold:
                drop_caches()
            s, cpu, rss = run_once(cmd)
            if i >= warmup:
                times[k].append(s)
                cpus[k].append(cpu)
                peaks[k] = max(peaks[k], rss)
            out.unlink(missing_ok=True)
    return [Measure(label, times[k], cpus[k], peaks[k]) for k, (label, _c, _o) in enumerate(routes)]


def ckptool_cli() -> list[str] | None:
    """The installed CLI, if its export command is there."""
    cmd = [sys.executable, "-m", "ckptool"]
    r = subprocess.run([*cmd, "export", "--help"], capture_output=True, text=True)
    return cmd if r.returncode == 0 else None


def main() -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cold", action="store_true", help="drop the page cache before every run (needs root)")

    a = bench_args(options)
    d = Path(a.dir)
    files = build(d)
    cli = ckptool_cli()
    cp = shutil.which("cp") or "cp"
    sections = []
    if cli is None:
        sections.append("(ckptool's export command is not installed: timing the library through python -c)\n")

    def ck_export(src: Path, out: Path, kind: str, verify: bool) -> list[str]:
        if cli is not None:
            return [*cli, "export", str(src), f"--{kind}", str(out), *([] if verify else ["--no-verify"])]
        return [sys.executable, "-c", LIB_EXPORT, str(src), str(out), "1" if verify else "0"]

    for label, src in files.items():
        size = src.stat().st_size / 1e6
        mmap = label == "zip"
        st, cp_out, pth = d / "out.safetensors", d / "out.copy", d / "out.pth"
        rows = measure_interleaved(
            [
                ("ckptool export --safetensors", ck_export(src, st, "safetensors", True), st),
                ("  ... --no-verify", ck_export(src, st, "safetensors", False), st),
                (
                    f"torch.load(mmap={mmap}) + save_file",
                    [sys.executable, "-c", TORCH_ST.format(mmap=mmap), str(src), str(st)],
                    st,
                ),
                ("cp", [cp, str(src), str(cp_out)], cp_out),
                ("cp && sync", ["sh", "-c", CP_SYNC, "sh", str(src), str(cp_out)], cp_out),
            ],
            a.runs,
            cold=a.cold,
        )
        base, synced = rows[3], rows[4]
        cache = "cold page cache" if a.cold else "source in the page cache"
        text = report(
            f"--safetensors, {label} source: {src.name} ({size:.0f} MB, {cache}); ratios against cp", rows, base
        )
        vs_sync = ", ".join(f"{m.label.strip()} {m.median / synced.median:.2f}x" for m in rows[:3])
        text += f"\n\nagainst `cp && sync` ({synced.median:.3f} s): {vs_sync}\n"
        sections.append(text)
        prow = measure_interleaved(
            [
                ("ckptool export --pth", ck_export(src, pth, "pth", True), pth),
                ("  ... --no-verify", ck_export(src, pth, "pth", False), pth),
                (
                    f"torch.load(mmap={mmap}) + torch.save",
                    [sys.executable, "-c", TORCH_PTH.format(mmap=mmap), str(src), str(pth)],
                    pth,
                ),
            ],
            a.runs,
            cold=a.cold,
        )
        sections.append(report(f"--pth, {label} source ({size:.0f} MB); ratios against torch", prow, prow[2]))
    print("\n\n".join(sections))


if __name__ == "__main__":
    main()
