"""ckptool inspect of a remote file vs what users do today (download it with curl, then inspect it), side by
side in one run, against a local nginx (Debian's), with requests and bytes counted in nginx's access log.

    python bench/bench_remote.py [--runs 5] [--dir /tmp/ckptool-bench] [--values] [--sweep]

Builds a full-size vgg16_bn (553 MB: torch zip, legacy, safetensors) and serves the folder with nginx on
127.0.0.1 (nginx must be installed: apt-get install nginx-light). Routes per file, each a fresh process:
``ckptool inspect URL``, ``ckptool scan --no-values URL`` and ``curl -o FILE URL && ckptool inspect FILE``.
Prints a Markdown table: median wall time, ratio to download-then-inspect, peak RSS, and the requests and bytes
nginx logged for one run, next to issue 13's budgets.

``--values``: the commands that read every tensor's bytes, ``ckptool scan URL`` (NaN/Inf/running_var checks)
and ``ckptool export URL --safetensors OUT``, streamed and with ``--download``, against ``curl -o FILE URL`` and
the same command on the file. ``--sweep``: ``scan URL`` of the zip with other run windows and run memories (the
thresholds in ckptool/sources/remote.py), to choose them by measurement.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import bench_args, measure, run_once, vgg16_bn_files
from sources.remote_servers import NGINX, Nginx

BUDGETS = {"zip": "≤ 4 requests, ≤ 512 KB", "legacy": "≤ 4 requests, ≤ 512 KB", "safetensors": "≤ 2 requests"}


def build(d: Path) -> dict[str, Path]:
    files = dict(vgg16_bn_files(d))
    st = d / "vgg16_bn.safetensors"
    if not st.exists():
        import torch
        from safetensors.torch import save_file

        sd = torch.load(files["zip"], mmap=True, weights_only=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    files["safetensors"] = st
    return files


def kb(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 10 << 20 else f"{n / 1e6:.0f} MB"


def _values(files: dict[str, Path], ng: Nginx, tmp: Path, runs: int, ck: list[str]) -> list[str]:
    rows = [
        "| file | route | median wall s | ratio | peak RSS MiB | requests (nginx) | fetched (nginx) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    out = tmp / "out.safetensors"
    for label, path in files.items():
        url = f"{ng.url}/{path.name}"
        dl = tmp / path.name
        cli = " ".join(ck)
        routes = [
            ("ckptool scan URL", [*ck, "scan", url]),
            ("ckptool scan --download URL", [*ck, "scan", "--download", url]),
            ("curl -o FILE URL && ckptool scan FILE", ["bash", "-c", f"curl -sf -o {dl} {url} && {cli} scan {dl}; rm -f {dl}"]),
            ("ckptool export URL --safetensors OUT", [*ck, "export", url, "--safetensors", str(out), "--force"]),
            ("curl -o FILE URL && ckptool export FILE --safetensors OUT",
             ["bash", "-c", f"curl -sf -o {dl} {url} && {cli} export {dl} --safetensors {out} --force; rm -f {dl}"]),
        ]  # fmt: skip
        measured = []
        for name, cmd in routes:
            mark = ng.mark()
            run_once(cmd)
            hits = ng.hits(mark)
            measured.append((measure(name, cmd, runs), len(hits), sum(h.nbytes for h in hits)))
        base = {m.label.split(" && ")[-1].split()[1]: m for m, _, _ in measured if m.label.startswith("curl")}
        for m, n, nbytes in measured:
            ref = base["scan" if " scan " in f" {m.label} " else "export"]
            rows.append(
                f"| {label} ({os.path.getsize(path) / 1e6:.0f} MB) | `{m.label}` | {m.median:.3f} | "
                f"{m.median / ref.median:.3f}x | {m.rss_mib:.0f} | {n} | {kb(nbytes)} |"
            )
    return rows


SWEEP = """
import sys
import ckptool.sources.remote as r
r.STREAM_FIRST, r.STREAM_WINDOW, r.RUN_MEMORY = (int(x) << 20 for x in sys.argv[1:4])
sys.argv = ["ckptool", *sys.argv[4:]]
from ckptool.cli.app import run
run()
"""


def _sweep(files: dict[str, Path], ng: Nginx, runs: int) -> list[str]:
    rows = [
        "| file | first / max window, run memory (MB) | median wall s | peak RSS MiB | requests | fetched |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label in ("zip", "legacy"):
        url = f"{ng.url}/{files[label].name}"
        for first, window, memory in ((2, 4, 64), (2, 16, 64), (2, 64, 128), (2, 16, 16), (16, 16, 64)):
            cmd = [sys.executable, "-c", SWEEP, str(first), str(window), str(memory), "scan", url]
            mark = ng.mark()
            run_once(cmd)
            hits = ng.hits(mark)
            m = measure("sweep", cmd, runs)
            rows.append(
                f"| {label} | {first} / {window}, {memory} | {m.median:.3f} | {m.rss_mib:.0f} | {len(hits)} | "
                f"{kb(sum(h.nbytes for h in hits))} |"
            )
    return rows


def main() -> None:
    a = bench_args(
        lambda ap: (ap.add_argument("--values", action="store_true"), ap.add_argument("--sweep", action="store_true"))
    )
    if NGINX is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    files = build(Path(a.dir))
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    ng = Nginx(Path(a.dir), tmp / "nginx")
    ck = [sys.executable, "-m", "ckptool"]
    rows = [
        "| file | route | median wall s | ratio | peak RSS MiB | requests (nginx) | fetched (nginx) | budget |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    try:
        if a.values or a.sweep:
            if a.values:
                print("\n".join(_values(files, ng, tmp, a.runs, ck)) + "\n")
            if a.sweep:
                print("\n".join(_sweep(files, ng, a.runs)))
            return
        for label, path in files.items():
            url = f"{ng.url}/{path.name}"
            dl = tmp / path.name
            routes = [
                ("ckptool inspect URL", [*ck, "inspect", url]),
                ("ckptool scan --no-values URL", [*ck, "scan", "--no-values", url]),
                ("curl -o FILE URL && ckptool inspect FILE",
                 ["bash", "-c", f"curl -sf -o {dl} {url} && {' '.join(ck)} inspect {dl} && rm -f {dl}"]),
            ]  # fmt: skip
            base = None
            measured = []
            for name, cmd in routes:
                mark = ng.mark()
                run_once(cmd)  # one run to count at the server
                hits = ng.hits(mark)
                m = measure(name, cmd, a.runs)
                measured.append((m, len(hits), sum(h.nbytes for h in hits)))
                if name.startswith("curl"):
                    base = m
            assert base is not None
            for m, n, nbytes in measured:
                budget = BUDGETS[label] if m.label.startswith("ckptool") else "(the whole file)"
                rows.append(
                    f"| {label} ({os.path.getsize(path) / 1e6:.0f} MB) | `{m.label}` | {m.median:.3f} | "
                    f"{m.median / base.median:.3f}x | {m.rss_mib:.0f} | {n} | {kb(nbytes)} | {budget} |"
                )
    finally:
        ng.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
