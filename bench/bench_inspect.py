"""ckptool inspect vs what users do today (torch.load + print(k, v.size())), side by side in one run.

    python bench/bench_inspect.py [--runs 5] [--dir /tmp/ckptool-bench]

Builds a full-size vgg16_bn (553 MB, zip and legacy) and a ~10 MB file with the same 100 keys, then times
each route in fresh processes: median wall time, ratio, and the child's peak RSS.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import bench_args, measure, report, vgg16_bn_files

TORCH_LIST = "import sys, torch; sd = torch.load(sys.argv[1], mmap={mmap}, weights_only=True)\nfor k, v in sd.items(): print(k, v.size())"


def build(d: Path) -> dict[str, Path]:
    """The shared full-size vgg16_bn files, plus a ~10 MB file with the same keys."""
    import torch
    from factory import save

    files = {**vgg16_bn_files(d), "small": d / "small_10mb.pth"}
    if not files["small"].exists():
        sd = torch.load(files["zip"], mmap=True, weights_only=True)
        scale = (10e6 / 4) / sum(v.numel() for v in sd.values())
        small = OrderedDict((k, torch.zeros(max(1, int(v.numel() * scale)))) for k, v in sd.items())
        save(small, files["small"], "zip")
    return files


def main() -> None:
    a = bench_args()
    files = build(Path(a.dir))
    ck = [sys.executable, "-m", "ckptool"]
    out = []
    for label, path, mmap in (
        ("zip", files["zip"], True),
        ("legacy", files["legacy"], False),
        ("10 MB zip", files["small"], True),
    ):
        size = os.path.getsize(path) / 1e6
        mine = measure(f"ckptool inspect ({label}, {size:.0f} MB)", [*ck, "inspect", str(path)], a.runs)
        plain = measure(f"ckptool inspect --plain ({label})", [*ck, "inspect", "--plain", str(path)], a.runs)
        theirs = measure(
            f"torch.load(mmap={mmap}) + print ({label})",
            [sys.executable, "-c", TORCH_LIST.format(mmap=mmap), str(path)],
            a.runs,
        )
        out.append(report(f"{label}: {path.name} ({size:.0f} MB)", [mine, plain, theirs], mine))
        out.append(f"\nspeed-up over torch: {theirs.median / mine.median:.1f}x\n")
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
