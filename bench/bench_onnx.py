"""ckptool export --onnx (+ onnx.checker + parity) vs a bare torch.onnx.export plus one onnxruntime run.

    python bench/bench_onnx.py [--runs 5] [--dir /tmp/ckptool-bench]

Builds a full-size vgg16_bn checkpoint (553 MB, torch zip; calibrated BatchNorm so outputs are realistic) and
times, each in fresh processes (median wall time, CPU time, the child's peak RSS):

- ``ckptool export PATH --onnx OUT --arch vgg16_bn --force`` (load strictly, export, full onnx.checker,
  parity on 2 samples through torch and onnxruntime);
- the same with ``--no-verify`` (export + check only);
- what users write today: ``torch.load`` + ``load_state_dict`` + ``torch.onnx.export(dynamo=True)`` (its
  defaults: external data) + one onnxruntime session and run on one image — no check, no comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import Measure, bench_args, report, run_once

BARE = r"""
import sys, warnings, logging
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
import numpy as np, onnxruntime as ort, torch
from ckptool.arch.vgg import vgg_spec
from ckptool.runtime import build_module  # torchvision's VGG layout (torchvision is not installed here)
path, out = sys.argv[1], sys.argv[2]
model = build_module(vgg_spec("vgg16_bn"))
model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
model.eval()
x = torch.randn(1, 3, 224, 224)
torch.onnx.export(model, (x,), out, dynamo=True, verbose=False)
sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
"""


def build(d: Path) -> Path:
    from onnx_fixtures import calibrated, save, state_dict

    d.mkdir(parents=True, exist_ok=True)
    path = d / "vgg16_bn_calibrated.pth"
    if not path.exists():
        save(state_dict(calibrated("vgg16_bn")), path, "zip")
    return path


def main() -> None:
    a = bench_args()
    d = Path(a.dir)
    src = build(d)
    ck = [sys.executable, "-m", "ckptool"]
    routes = {
        "ckptool export --onnx (check + parity)": [
            *ck, "export", str(src), "--onnx", str(d / "ck.onnx"), "--arch", "vgg16_bn", "--force",
        ],
        "ckptool export --onnx --no-verify (check only)": [
            *ck, "export", str(src), "--onnx", str(d / "ck_nv.onnx"), "--arch", "vgg16_bn", "--force", "--no-verify",
        ],
        "torch.onnx.export + 1 onnxruntime run": [sys.executable, "-c", BARE, str(src), str(d / "bare.onnx")],
        # the same verified export, with the weights in OUT.data as the bare route writes them: onnxruntime and
        # the checker then map the data instead of parsing a 553 MB protobuf message
        "ckptool export --onnx --external-data (check + parity)": [
            *ck, "export", str(src), "--onnx", str(d / "ck_ext.onnx"), "--arch", "vgg16_bn", "--force",
            "--external-data",
        ],
    }  # fmt: skip
    # round-robin (A B C A B C ...) after one warm-up each: a busy machine's load drifts over minutes, and
    # interleaving spreads that drift over every route instead of penalising whichever ran during a spike
    for cmd in routes.values():
        run_once(cmd)
    got: dict[str, Measure] = {k: Measure(k, [], [], 0.0) for k in routes}
    for _ in range(a.runs):
        for k, cmd in routes.items():
            s, cpu, rss = run_once(cmd)
            got[k].seconds.append(s)
            got[k].cpu.append(cpu)
            got[k].rss_mib = max(got[k].rss_mib, rss)
    rows = list(got.values())
    bare, mine = rows[2], rows[0]
    print(report(f"vgg16_bn ({src.stat().st_size / 1e6:.0f} MB), export to ONNX", rows, bare))
    ext = rows[3]
    print(
        f"\nckptool export --onnx + verify vs bare export + 1 run: {mine.median / bare.median:.2f}x wall, "
        f"{mine.cpu_median / bare.cpu_median:.2f}x CPU; with --external-data {ext.median / bare.median:.2f}x wall, "
        f"{ext.cpu_median / bare.cpu_median:.2f}x CPU"
    )


if __name__ == "__main__":
    main()
