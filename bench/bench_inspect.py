"""ckptool inspect vs what users do today (torch.load + print(k, v.size())), side by side in one run.

    python bench/bench_inspect.py [--runs 5] [--dir /tmp/ckptool-bench]

Builds a full-size vgg16_bn (553 MB, zip and legacy) and a ~10 MB file with the same 100 keys, then times
each route in fresh processes: median wall time, ratio, and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import measure, report

TORCH_LIST = "import sys, torch; sd = torch.load(sys.argv[1], mmap={mmap}, weights_only=True)\nfor k, v in sd.items(): print(k, v.size())"


def build(d: Path) -> dict[str, Path]:
    import torch
    from factory import save, vgg_state_dict

    d.mkdir(parents=True, exist_ok=True)
    files = {"zip": d / "vgg16_bn.pth", "legacy": d / "vgg16_bn_legacy.pth", "small": d / "small_10mb.pth"}
    if not all(p.exists() for p in files.values()):
        sd = vgg_state_dict("vgg16_bn")
        save(sd, files["zip"], "zip")
        save(
            OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")),
            files["legacy"],
            "legacy",
        )
        # same 100 keys, ~10 MB in total
        scale = (10e6 / 4) / sum(v.numel() for v in sd.values())
        small = OrderedDict((k, torch.zeros(max(1, int(v.numel() * scale)))) for k, v in sd.items())
        save(small, files["small"], "zip")
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/ckptool-bench")
    a = ap.parse_args()
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
