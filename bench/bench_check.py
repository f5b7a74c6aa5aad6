"""ckptool check vs what users do today (build the model, torch.load, load_state_dict), side by side.

    python bench/bench_check.py [--runs 5] [--dir /tmp/ckptool-bench]

Uses (or builds, shared with bench_inspect.py) a full-size vgg16_bn in --dir (553 MB torch zip, and the
legacy format without num_batches_tracked), then times each route in fresh processes (median wall and CPU
time, ratio to `ckptool check`, the child's peak RSS):

  - ckptool check FILE --arch vgg16_bn            (CLI; torch-free, header-only)
  - ckptool check FILE                             (CLI; --arch auto ranks all 8 registry architectures)
  - the library: open_checkpoint + compat.check    (a fresh python -c, no CLI framework)
  - today: torchvision.models.vgg16_bn() + torch.load + load_state_dict (torchvision's layout and weight
    init, copied inline because torchvision is not installed here)
  - today, fastest: a meta-device model + torch.load(mmap=True) + load_state_dict(assign=True)

It also times open_checkpoint + check in this process (no interpreter start-up, no imports): the cost of
the check itself.

Then, with every registered family (VGG, ResNet, ViT: 23 variants), a resnet50 file (98 MB, torchvision's
layout) and a resnext50_32x4d one: ``ckptool check FILE`` (--arch auto ranks every variant of every
family) against today's route for a ResNet (build the model, torch.load, load_state_dict), and
check(auto) in process on ResNet, VGG, ViT-shaped and unknown files (the 0.2 s budget is for this).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import bench_args, measure, report

# torchvision/models/vgg.py (make_layers, VGG with _initialize_weights), inline
TV_VGG = r"""
import sys, torch
from torch import nn
cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
def make_layers(cfg, batch_norm):
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv = nn.Conv2d(c, v, kernel_size=3, padding=1)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)
class VGG(nn.Module):
    def __init__(self, features, num_classes=1000):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=0.5), nn.Linear(4096, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)
"""
TODAY = (
    TV_VGG
    + r"""
model = VGG(make_layers(cfg, True))
sd = torch.load(sys.argv[1], weights_only=True)
print(model.load_state_dict(sd))  # strict: raises on a mismatch
"""
)
TODAY_FAST = (
    TV_VGG
    + r"""
with torch.device("meta"):
    model = VGG(make_layers(cfg, True))
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
print(model.load_state_dict(sd, assign=True))
"""
)
LIBRARY = r"""
import sys
from ckptool.formats import open_checkpoint
from ckptool.compat import check
r = check(open_checkpoint(sys.argv[1]), "vgg16_bn")
assert r.compatible and "torch" not in sys.modules
"""


def in_process(path: Path, runs: int) -> tuple[float, float]:
    from ckptool.compat import check
    from ckptool.formats import open_checkpoint

    opens, checks = [], []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        ck = open_checkpoint(path)
        t1 = time.perf_counter()
        r = check(ck, "auto")
        t2 = time.perf_counter()
        assert r.compatible and r.arch == "vgg16_bn"
        opens.append(t1 - t0)
        checks.append(t2 - t1)
    return statistics.median(opens[1:]), statistics.median(checks[1:])


def main() -> None:
    a = bench_args()
    from bench_inspect import build  # the same files as the inspect benchmark

    files = build(Path(a.dir))
    zip_path, legacy = str(files["zip"]), str(files["legacy"])
    ck = [sys.executable, "-m", "ckptool"]
    named = measure("ckptool check --arch vgg16_bn", [*ck, "check", zip_path, "--arch", "vgg16_bn"], a.runs)
    auto = measure("ckptool check (--arch auto)", [*ck, "check", zip_path], a.runs)
    leg = measure("ckptool check, legacy file", [*ck, "check", legacy, "--arch", "vgg16_bn"], a.runs)
    lib = measure("library: open_checkpoint + check", [sys.executable, "-c", LIBRARY, zip_path], a.runs)
    today = measure("today: vgg16_bn() + torch.load + load_state_dict", [sys.executable, "-c", TODAY, zip_path], a.runs)
    fast = measure(
        "today, fastest: meta model + torch.load(mmap) + assign",
        [sys.executable, "-c", TODAY_FAST, zip_path],
        a.runs,
    )
    print(report(f"check {Path(zip_path).name} (553 MB) against vgg16_bn", [named, auto, leg, lib, today, fast], named))
    o, c = in_process(Path(zip_path), a.runs)
    print()
    print(f"in-process (no start-up, no imports): open_checkpoint {o * 1000:.1f} ms + check(auto) {c * 1000:.1f} ms")
    print(f"speed-up of `ckptool check` over today's route: {today.median / named.median:.1f}x wall, "
          f"{today.cpu_median / named.cpu_median:.1f}x CPU; over the fastest torch route: "
          f"{fast.median / named.median:.1f}x wall")  # fmt: skip
    families(a, a.runs)


TODAY_RESNET = r"""
import sys, torch
from ckptool.arch.resnet_torch import ResNet  # torchvision's resnet.py layout (torchvision is not installed here)
model = ResNet("Bottleneck", [3, 4, 6, 3])
sd = torch.load(sys.argv[1], weights_only=True)
print(model.load_state_dict(sd))
"""


COLD = r"""
import sys, time
from ckptool.compat import check
from ckptool.formats import open_checkpoint
ck = open_checkpoint(sys.argv[1])
t = time.perf_counter()
r = check(ck)
print((time.perf_counter() - t) * 1000, r.arch)
assert r.arch == "resnet50" and "torch" not in sys.modules
"""


def families(a: argparse.Namespace, runs: int) -> None:
    import torch

    from ckptool.arch.family import list_families
    from ckptool.arch.registry import names, resolve
    from ckptool.checkpoint import Checkpoint, TensorInfo
    from ckptool.compat import check
    from ckptool.formats import open_checkpoint

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arch in ("resnet50", "resnext50_32x4d"):
        p = d / f"{arch}.pth"
        if not p.exists():
            sd = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
                  for k, s in resolve(arch).state_dict_shapes().items()}  # fmt: skip
            torch.save(sd, p)
        paths[arch] = p
    fams = ", ".join(f"{f.name} ({len(f.variants)})" for f in list_families())
    ck = [sys.executable, "-m", "ckptool"]
    auto = measure("ckptool check resnet50.pth (--arch auto)", [*ck, "check", str(paths["resnet50"])], runs)
    x50 = measure("ckptool check resnext50_32x4d.pth (auto)", [*ck, "check", str(paths["resnext50_32x4d"])], runs)
    named = measure("ckptool check --arch resnet50", [*ck, "check", str(paths["resnet50"]), "--arch", "resnet50"], runs)
    today = measure("today: resnet50() + torch.load + load_state_dict", [sys.executable, "-c", TODAY_RESNET,
                    str(paths["resnet50"])], runs)  # fmt: skip
    print()
    print(report(f"check resnet50.pth (98 MB) with {len(names())} registry variants: {fams}",
                 [auto, x50, named, today], auto))  # fmt: skip

    def mem(shapes: dict[str, tuple[int, ...]]) -> Checkpoint:
        return Checkpoint("<mem>", "torch-zip", [TensorInfo(k, "float32", s) for k, s in shapes.items()])

    cases = {
        "resnet50 file": open_checkpoint(paths["resnet50"]),
        "vgg16_bn headers": mem(resolve("vgg16_bn").state_dict_shapes()),
        "vit_b_16 headers": mem(resolve("vit_b_16").state_dict_shapes()),
        "resnet152 headers": mem(resolve("resnet152").state_dict_shapes()),
        "unknown (an MLP)": mem({"enc.weight": (64, 32), "enc.bias": (64,), "dec.weight": (32, 64)}),
    }
    cold = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", COLD, str(paths["resnet50"])], capture_output=True, text=True)
        cold.append(float(out.stdout.split()[0]))
    print()
    print(f"cold check(ck, 'auto') in a fresh process (builds all {len(names())} specs, reads the header): "
          f"median {statistics.median(cold):.1f} ms; budget 200 ms")  # fmt: skip
    print("in-process check(ck, 'auto'), median of", runs, "(after one warm-up: specs and key splits cached):")
    for label, c in cases.items():
        times = []
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            r = check(c, "auto")
            times.append(time.perf_counter() - t0)
        print(f"  {label:20s} {statistics.median(times[1:]) * 1000:7.1f} ms  -> {r.arch}")


if __name__ == "__main__":
    main()
