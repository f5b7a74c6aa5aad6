"""The zip directory, read the way users read it today (Python's ``zipfile``) and the way ckptool reads it
(miniz's rules, ``ckptool.formats._zipread``), on archives of 10k / 100k / 200k stored records.

    python bench/bench_zipread.py [--runs 5] [--sizes 10000,100000,200000]

In-process, page cache warm; medians of CPU seconds (the machine is shared: quote the ratios). Three rows:
``zipfile.ZipFile(...).infolist()``; ckptool's directory parse (``open_archive``); and the parse plus every
structural check a reading command makes (local headers, duplicate and case-variant names, overlaps:
``torch_zip.findings``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from ckptool.formats import _zipread as zr
from ckptool.formats import torch_zip
from ckptool.sources import open_source


def build(path: Path, n: int) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        for i in range(n):
            zf.writestr(f"archive/data/{i}", b"\0" * 8)
        zf.writestr("archive/version", b"3\n")
    return path


def cpu(fn, runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="10000,100000,200000")
    args = ap.parse_args()
    print("| records | `zipfile` infolist | ckptool parse | ckptool parse + checks | parse ratio |")
    print("|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for n in (int(s) for s in args.sizes.split(",")):
            p = build(Path(d) / f"z{n}.zip", n)

            def py(p: Path = p) -> None:
                with zipfile.ZipFile(p) as zf:
                    zf.infolist()

            def ours(p: Path = p) -> None:
                with open_source(p) as src:
                    zr.open_archive(src)

            def checked(p: Path = p) -> None:
                with open_source(p) as src:
                    list(torch_zip.findings(zr.open_archive(src)))

            a, b, c = cpu(py, args.runs), cpu(ours, args.runs), cpu(checked, args.runs)
            print(f"| {n:,} | {a:.3f} s | {b:.3f} s | {c:.3f} s | {a / b:.1f}x |")


if __name__ == "__main__":
    main()
