"""`ckptool predict`: the article's preprocessing without torchvision, onnxruntime (torch-free) and torch
backends, labels, and bad input. Every image is generated here with Pillow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ckptool.errors import CorruptFileError, UnreadableError, UnsupportedFormatError, UsageError
from ckptool.predict import (
    ImagePrediction,
    load_batch,
    open_image,
    predict,
    preprocess,
    run_onnx,
    run_torch,
    softmax,
    top_k,
)

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------- a small model
class TinyNet(nn.Module):
    """A small image classifier (conv, BN, pool, linear) used as ``test_predict:TinyNet``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def tiny_features() -> nn.Module:
    """``test_predict:tiny_features``: TinyNet's backbone alone (output [N, 8, H/2, W/2], no classes)."""
    return TinyNet().features


def _tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    m = TinyNet()
    with torch.no_grad():  # calibrated-looking BN and a head with a real spread of logits
        m.features[1].running_mean.uniform_(-0.2, 0.2)
        m.features[1].running_var.uniform_(0.5, 1.5)
        m.classifier.weight.mul_(8)
    return m.eval()


def _export(model: nn.Module, out: Path, shape: tuple[int, ...], dynamic: bool) -> Path:
    kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it is quick for a tiny model
        warnings.simplefilter("ignore", DeprecationWarning)
        _onnx_export(model, out, shape, kw)
    return out


def _onnx_export(model: nn.Module, out: Path, shape: tuple[int, ...], kw: dict) -> None:
    torch.onnx.export(
        model,
        (torch.randn(*shape),),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamo=False,
        opset_version=17,
        **kw,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("predict_models")
    m = _tiny_model()
    torch.save(m.state_dict(), d / "tiny.pth")
    torch.save(OrderedDict((f"module.{k}", v) for k, v in m.state_dict().items()), d / "tiny_dp.pth")
    (d / "labels10.txt").write_text("".join(f"class {i}\n" for i in range(10)), encoding="utf-8")
    return {
        "dir": d,
        "pth": d / "tiny.pth",
        "dp": d / "tiny_dp.pth",
        "onnx": _export(m, d / "tiny.onnx", (1, 3, 64, 64), dynamic=True),
        "onnx_b1": _export(m, d / "tiny_b1.onnx", (1, 3, 48, 40), dynamic=False),
        "labels": d / "labels10.txt",
    }


# ------------------------------------------------------------------------------------------- images
def _rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    noise = rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("predict_images")
    out: dict[str, Path] = {}
    rgb = _rgb(300, 400)
    rgb.save(d / "rgb.png")
    out["rgb"] = d / "rgb.png"
    rgb.save(d / "rgb.jpg", quality=90)
    out["jpeg"] = d / "rgb.jpg"
    rgb.convert("L").save(d / "gray.png")
    out["gray"] = d / "gray.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(d / "palette.png")
    out["palette"] = d / "palette.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(d / "palette_t.png", transparency=3)
    out["palette_t"] = d / "palette_t.png"
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(d / "rgba.png")
    out["rgba"] = d / "rgba.png"
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    out["cmyk"] = d / "cmyk.jpg"
    rgb.convert("LA").save(d / "la.png")
    out["la"] = d / "la.png"
    Image.fromarray((np.arange(50 * 70).reshape(50, 70) * 13).astype(np.uint16)).save(d / "gray16.png")
    out["gray16"] = d / "gray16.png"
    rgb.convert("1").save(d / "bilevel.png")
    out["bilevel"] = d / "bilevel.png"
    _rgb(1, 1, 3).save(d / "one_pixel.png")
    out["one_pixel"] = d / "one_pixel.png"
    _rgb(3, 517, 4).save(d / "thin.bmp")
    out["thin"] = d / "thin.bmp"
    _rgb(601, 223, 5).save(d / "tall.webp")
    out["tall"] = d / "tall.webp"
    (d / "not_an_image.png").write_bytes(b"this is not an image at all\n" * 10)
    out["not_image"] = d / "not_an_image.png"
    full = (d / "rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    out["truncated"] = d / "truncated.png"
    return out


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def reference(path: Path, h: int = 224, w: int = 224) -> torch.Tensor:
    """The article's pipeline written out with torch ops: Resize((h, w)) on the PIL image (torchvision uses
    PIL's bilinear resize for PIL input), ToTensor, Normalize."""
    img = Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR)
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    t = t.to(torch.float32).div(255)
    return (t - MEAN) / STD


# ------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize(
    "kind",
    [
        "rgb",
        "jpeg",
        "gray",
        "palette",
        "palette_t",
        "rgba",
        "cmyk",
        "la",
        "gray16",
        "bilevel",
        "one_pixel",
        "thin",
        "tall",
    ],
)
def test_preprocess_equals_reference(images: dict[str, Path], kind: str) -> None:
    got = preprocess(images[kind])
    assert got.shape == (3, 224, 224)
    assert got.dtype == np.float32
    want = reference(images[kind]).numpy()
    assert np.abs(got - want).max() <= 1e-6


def test_preprocess_other_sizes(images: dict[str, Path]) -> None:
    got = preprocess(images["rgb"], 97)
    assert got.shape == (3, 97, 97)
    assert np.abs(got - reference(images["rgb"], 97, 97).numpy()).max() <= 1e-6
    got = preprocess(images["rgb"], (40, 72))  # (height, width), as torchvision's Resize takes it
    assert got.shape == (3, 40, 72)
    assert np.abs(got - reference(images["rgb"], 40, 72).numpy()).max() <= 1e-6


def test_preprocess_value_range_and_channels(images: dict[str, Path]) -> None:
    x = preprocess(images["gray"])
    # a gray image converts to three equal channels before Normalize; recover [0, 1] per channel
    unnorm = (
        x * np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
        + np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    )
    assert np.allclose(unnorm[0], unnorm[1], atol=1e-6) and np.allclose(unnorm[1], unnorm[2], atol=1e-6)
    assert unnorm.min() >= -1e-6 and unnorm.max() <= 1 + 1e-6


def test_load_batch_stacks(images: dict[str, Path]) -> None:
    b = load_batch([images["rgb"], images["cmyk"], images["thin"]], 32)
    assert b.shape == (3, 3, 32, 32)
    assert np.array_equal(b[1], preprocess(images["cmyk"], 32))


def test_bad_images(images: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="not an image"):
        open_image(images["not_image"])
    with pytest.raises(CorruptFileError, match="cannot be decoded"):
        open_image(images["truncated"])
    with pytest.raises(UnreadableError, match="no such image file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(UnreadableError, match="directory"):
        open_image(tmp_path)
    with pytest.raises(UsageError):
        preprocess(images["rgb"], 0)
    with pytest.raises(UsageError, match="no images"):
        load_batch([])


# ------------------------------------------------------------------------------------------- scores
def test_softmax_and_top_k() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [1000.0, 0.0, -1000.0, 999.0]], dtype=np.float32)
    p = softmax(logits)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.isfinite(p).all()
    preds = top_k(logits, ["a", "b"], 3, ["w", "x", "y", "z"])
    assert isinstance(preds[0], ImagePrediction)
    assert [c.index for c in preds[0].top] == [1, 3, 2]  # ties: lower index first
    assert [c.label for c in preds[0].top] == ["x", "z", "y"]
    assert [c.index for c in preds[1].top] == [0, 3, 1]
    assert preds[1].top[0].prob == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-6)
    assert len(top_k(logits, ["a", "b"], 99)[0].top) == 4  # clamped to the number of classes
    with pytest.raises(UsageError):
        top_k(logits, ["a", "b"], 0)


# ------------------------------------------------------------------------------------------- onnxruntime
def test_onnx_matches_torch_module(models: dict[str, Path], images: dict[str, Path]) -> None:
    batch = load_batch([images["rgb"], images["gray"], images["cmyk"]], 64)
    want = run_torch(_tiny_model(), batch)
    got = run_onnx(models["onnx"], batch)
    assert got.shape == (3, 10)
    assert np.abs(got - want).max() < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


def test_predict_onnx_json(cli, models: dict[str, Path], images: dict[str, Path]) -> None:
    imgs = [images["rgb"], images["palette"], images["tall"]]
    r = cli("predict", models["onnx"], *imgs, "--labels", models["labels"], "--top", "10", "--size", "64", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["backend"] == "onnxruntime" and d["arch"] is None and d["input_size"] == [64, 64]
    assert [p["image"] for p in d["predictions"]] == [str(p) for p in imgs]
    want = softmax(run_torch(_tiny_model(), load_batch(imgs, 64)))
    for p, row in zip(d["predictions"], want, strict=True):
        probs = [c["prob"] for c in p["top"]]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)  # top 10 of 10 classes
        assert p["top"][0]["index"] == int(row.argmax())
        assert p["top"][0]["label"] == f"class {int(row.argmax())}"
        assert p["top"][0]["prob"] == pytest.approx(float(row.max()), abs=1e-4)
        assert set(p["top"][0]) == {"index", "label", "prob"}


def test_predict_onnx_fixed_batch_and_size_from_graph(models: dict[str, Path], images: dict[str, Path]) -> None:
    imgs = [images["rgb"], images["rgba"]]
    r = predict(models["onnx_b1"], imgs, labels=models["labels"], top=3)
    assert r.input_size == (48, 40)  # taken from the graph
    assert any("fixed batch of 1" in n for n in r.notes)
    want = softmax(run_torch(_tiny_model(), load_batch(imgs, (48, 40))))
    assert [p.top[0].index for p in r.predictions] == [int(i) for i in want.argmax(1)]
    with pytest.raises(UsageError, match="graph takes 48x40"):
        predict(models["onnx_b1"], imgs, labels=models["labels"], size=224)


def test_predict_onnx_does_not_import_torch(models: dict[str, Path], images: dict[str, Path]) -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ckptool", "predict", str(models["onnx"]), str(images["rgb"]),
         "--labels", str(models["labels"]), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported  # the check below sees real imports
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert json.loads(r.stdout)["predictions"][0]["top"][0]["label"].startswith("class ")


def test_predict_script_onnx_plain(script, models: dict[str, Path], images: dict[str, Path]) -> None:
    r = script("predict", models["onnx"], images["rgb"], images["gray"], "--labels", models["labels"], "-k", "2")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout
    assert str(images["rgb"]) in r.stdout and str(images["gray"]) in r.stdout
    assert r.stdout.count("class ") == 4  # 2 images x top 2


# ------------------------------------------------------------------------------------------- torch
@pytest.mark.parametrize("which", ["pth", "dp"])
def test_both_backends_agree(cli, models: dict[str, Path], images: dict[str, Path], which: str) -> None:
    """The same weights as a checkpoint (torch, module:callable; DataParallel prefix too) and as ONNX."""
    imgs = [images[k] for k in ("rgb", "gray", "palette_t", "rgba", "cmyk", "thin", "tall", "jpeg")]
    common = ["--labels", models["labels"], "--size", "64", "--top", "3", "--json"]
    rt = cli("predict", models[which], *imgs, "--arch", "test_predict:TinyNet", *common)
    assert rt.exit_code == 0, rt.stderr
    ro = cli("predict", models["onnx"], *imgs, *common)
    assert ro.exit_code == 0, ro.stderr
    dt, do = json.loads(rt.stdout), json.loads(ro.stdout)
    assert dt["backend"] == "torch" and do["backend"] == "onnxruntime"
    top1_t = [p["top"][0]["index"] for p in dt["predictions"]]
    top1_o = [p["top"][0]["index"] for p in do["predictions"]]
    assert top1_t == top1_o
    assert len(set(top1_t)) > 1  # the images really are told apart: agreement is not a constant
    for pt, po in zip(dt["predictions"], do["predictions"], strict=True):
        assert [c["prob"] for c in pt["top"]] == pytest.approx([c["prob"] for c in po["top"]], abs=1e-4)


def test_script_torch_module_callable(script, models: dict[str, Path], images: dict[str, Path]) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = script(
        "predict", models["dp"], images["rgb"], "--arch", "test_predict:TinyNet", "--labels", models["labels"],
        "--size", "64", "--json", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    want = softmax(run_torch(_tiny_model(), load_batch([images["rgb"]], 64)))[0]
    assert d["predictions"][0]["top"][0]["index"] == int(want.argmax())


# ------------------------------------------------------------------------------------------- errors
def test_head_size_must_match_labels(cli, models: dict[str, Path], images: dict[str, Path], tmp_path: Path) -> None:
    r = cli("predict", models["onnx"], images["rgb"])  # 10-class head, ImageNet labels by default
    assert r.exit_code == 2
    assert "10 output classes" in r.stderr and "1000 labels" in r.stderr and "--labels" in r.stderr
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    r = cli("predict", models["onnx"], images["rgb"], "--labels", three)
    assert r.exit_code == 2 and "3 labels" in r.stderr


@pytest.mark.parametrize("kind", ["not_image", "truncated", "missing", "directory"])
def test_bad_image_exits_2(cli, script, models: dict[str, Path], images: dict[str, Path], kind: str) -> None:
    path = {"missing": images["rgb"].parent / "missing.png", "directory": images["rgb"].parent}.get(kind) or images[
        kind
    ]
    r = cli("predict", models["onnx"], images["rgb"], path, "--labels", models["labels"])
    assert r.exit_code == 2
    assert r.stderr.startswith("ckptool: error: ") and r.stderr.count("\n") == 1
    assert str(path) in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    if kind == "not_image":
        s = script("predict", models["onnx"], path, "--labels", models["labels"])
        assert s.returncode == 2 and "not an image" in s.stderr and "Traceback" not in s.stderr


def test_model_errors(cli, models: dict[str, Path], images: dict[str, Path]) -> None:
    r = cli("predict", ROOT / "fixtures" / "tiny_mlp.onnx", images["rgb"])
    assert r.exit_code == 2 and "not an RGB image batch" in r.stderr
    r = cli("predict", models["pth"], images["rgb"])  # --arch auto: no registry architecture fits TinyNet
    assert r.exit_code == 2 and "do not fit any known architecture" in r.stderr
    r = cli("predict", models["pth"], images["rgb"], "--arch", "vgg16_bn")
    assert r.exit_code == 2 and "do not fit vgg16_bn" in r.stderr
    r = cli("predict", models["onnx"], images["rgb"], "--arch", "vgg16_bn")
    assert r.exit_code == 2 and "--arch applies to checkpoints" in r.stderr
    r = cli("predict", models["dir"] / "nothing.pth", images["rgb"], "--arch", "vgg16_bn")
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = cli("predict", models["onnx"])
    assert r.exit_code == 2  # no image: usage error
    feats = models["dir"] / "features.pth"
    torch.save(_tiny_model().features.state_dict(), feats)
    r = cli("predict", feats, images["rgb"], "--arch", "test_predict:tiny_features", "--size", "32")
    assert r.exit_code == 2 and f"{feats}: the model's output has shape [1, 8, 16, 16]" in r.stderr
    assert "not class scores" in r.stderr


# ------------------------------------------------------------------------------------------- torch, full size
@pytest.mark.slow
def test_predict_vgg16_bn_torch_matches_reference(
    cli, vgg16_bn_files: dict[str, Path], images: dict[str, Path]
) -> None:
    """The article's last step on a full-size vgg16_bn (legacy file, like torchvision's), against the article's
    code written out by hand: build the model, load_state_dict, eval, preprocess, softmax."""
    from ckptool.arch.vgg import vgg_spec
    from ckptool.labels import imagenet_labels
    from ckptool.runtime import build_module

    imgs = [images["rgb"], images["cmyk"]]
    r = cli("predict", vgg16_bn_files["legacy"], *imgs, "--arch", "vgg16_bn", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["backend"] == "torch" and d["arch"] == "vgg16_bn" and d["num_classes"] == 1000

    model = build_module(vgg_spec("vgg16_bn"))
    model.load_state_dict(torch.load(vgg16_bn_files["legacy"], weights_only=True), strict=False)
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([reference(p) for p in imgs]))
    probs = torch.softmax(logits.double(), 1)
    top = probs.topk(5, 1)
    labels = imagenet_labels()
    for p, vals, idx in zip(d["predictions"], top.values, top.indices, strict=True):
        assert [c["index"] for c in p["top"]] == idx.tolist()
        assert [c["label"] for c in p["top"]] == [labels[i] for i in idx.tolist()]
        assert [c["prob"] for c in p["top"]] == pytest.approx(vals.tolist(), rel=1e-4)
