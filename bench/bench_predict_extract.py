"""ckptool predict / extract vs what users do today, side by side in one run.

    python bench/bench_predict_extract.py [--runs 5] [--dir /tmp/ckptool-bench]

Builds (once, in --dir) a full-size vgg16_bn (553 MB, torch zip), its ONNX export and two 640x480 images, then
times each route in fresh processes: median wall and CPU time, ratio, and the child's peak RSS.

predict (the article's last step, 2 images):
  - the article's script: torch.load + build the model + load_state_dict + PIL/torch preprocessing + forward
    (torchvision's VGG builder is replaced by ckptool.runtime.build_module, which builds the same modules);
  - ckptool predict CKPT --arch vgg16_bn (torch);
  - a bare onnxruntime script (InferenceSession + numpy preprocessing);
  - ckptool predict MODEL.onnx (onnxruntime, no torch import).
extract (the article's partial model: `features` to its own file):
  - torch.load(mmap=True) + dict comprehension + safetensors.torch.save_file;
  - torch.load() + torch.save of the sub-dict;
  - ckptool extract --prefix features -o OUT.safetensors (streamed, torch-free, bit-exact check included);
  - ckptool extract --prefix features -o OUT.pth.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import bench_args, measure, report

ARTICLE = r"""
import sys, torch
from PIL import Image
from ckptool.arch.vgg import vgg_spec
from ckptool.runtime import build_module
model = build_module(vgg_spec("vgg16_bn"))              # torchvision.models.vgg16_bn() in the article
model.load_state_dict(torch.load(sys.argv[1], weights_only=True), strict=False)
model.eval()
mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
def tf(p):                                               # Resize((224, 224)), ToTensor, Normalize
    img = Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(224, 224, 3).permute(2, 0, 1)
    return (t.float() / 255 - mean) / std
with torch.no_grad():
    probs = torch.softmax(model(torch.stack([tf(p) for p in sys.argv[2:]])), 1)
for p, (v, i) in zip(sys.argv[2:], zip(*probs.topk(5, 1))):
    print(p, i.tolist(), v.tolist())
"""

ORT = r"""
import sys, numpy as np, onnxruntime as ort
from PIL import Image
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
def tf(p):
    a = np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32) / 255
    return (a.transpose(2, 0, 1) - mean) / std
x = np.stack([tf(p) for p in sys.argv[2:]]).astype(np.float32)
logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
e = np.exp(logits - logits.max(1, keepdims=True)); probs = e / e.sum(1, keepdims=True)
for p, row in zip(sys.argv[2:], probs):
    i = np.argsort(-row)[:5]; print(p, i.tolist(), row[i].tolist())
"""

EXTRACT_MMAP = r"""
import sys, torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
save_file({k[len("features."):]: v.contiguous() for k, v in sd.items() if k.startswith("features.")}, sys.argv[2])
"""

EXTRACT_TORCH = r"""
import sys, torch
sd = torch.load(sys.argv[1], weights_only=True)
torch.save({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}, sys.argv[2])
"""


def build(d: Path) -> dict[str, Path]:
    import numpy as np
    import torch
    from factory import save, vgg_state_dict
    from PIL import Image

    from ckptool.arch.vgg import vgg_spec
    from ckptool.runtime import build_module

    d.mkdir(parents=True, exist_ok=True)
    files = {
        "pth": d / "vgg16_bn.pth",
        "onnx": d / "vgg16_bn.onnx",
        "img1": d / "photo1.jpg",
        "img2": d / "photo2.png",
    }
    if not files["pth"].exists():
        save(vgg_state_dict("vgg16_bn"), files["pth"], "zip")
    if not files["onnx"].exists():
        model = build_module(vgg_spec("vgg16_bn"))
        model.load_state_dict(torch.load(files["pth"], weights_only=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                (torch.randn(1, 3, 224, 224),),
                str(files["onnx"]),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
                opset_version=17,
            )
    rng = np.random.default_rng(0)
    for key in ("img1", "img2"):
        if not files[key].exists():
            Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(files[key])
    return files


def main() -> None:
    a = bench_args()
    f = build(Path(a.dir))
    py, ck = sys.executable, [sys.executable, "-m", "ckptool"]
    imgs = [str(f["img1"]), str(f["img2"])]
    out = []

    article = measure("article script (torch)", [py, "-c", ARTICLE, str(f["pth"]), *imgs], a.runs)
    mine_t = measure(
        "ckptool predict CKPT --arch vgg16_bn", [*ck, "predict", str(f["pth"]), *imgs, "--arch", "vgg16_bn"], a.runs
    )
    ort = measure("bare onnxruntime script", [py, "-c", ORT, str(f["onnx"]), *imgs], a.runs)
    mine_o = measure("ckptool predict MODEL.onnx", [*ck, "predict", str(f["onnx"]), *imgs], a.runs)
    out.append(
        report(
            "predict: vgg16_bn, 2 images of 640x480 (ratios vs the article's torch script)",
            [article, mine_t, ort, mine_o],
            article,
        )
    )

    tmp = Path(a.dir)
    e1 = measure(
        "torch.load(mmap=True) + save_file",
        [py, "-c", EXTRACT_MMAP, str(f["pth"]), str(tmp / "f_mmap.safetensors")],
        a.runs,
    )
    e2 = measure("torch.load + torch.save", [py, "-c", EXTRACT_TORCH, str(f["pth"]), str(tmp / "f_torch.pth")], a.runs)
    e3 = measure(
        "ckptool extract -o .safetensors",
        [*ck, "extract", str(f["pth"]), "--prefix", "features", "-o", str(tmp / "f_ck.safetensors"), "--force"],
        a.runs,
    )
    rows = [e1, e2, e3]
    try:
        rows.append(
            measure(
                "ckptool extract -o .pth",
                [*ck, "extract", str(f["pth"]), "--prefix", "features", "-o", str(tmp / "f_ck.pth"), "--force"],
                a.runs,
            )
        )
    except SystemExit as e:  # the .pth writer is not there yet
        print(f"(skipped ckptool extract -o .pth: {e})", file=sys.stderr)
    out.append(
        report(
            "extract: `features` of the 553 MB vgg16_bn (59 MB out; ratios vs torch.load(mmap) + save_file)", rows, e1
        )
    )
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
