"""A ResNet file through every command: inspect, layers, check, export (safetensors, ONNX), parity, predict,
extract; zip and legacy, with and without ``module.``, bare and inside a training checkpoint."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ckptool.arch.registry import resolve
from ckptool.formats import open_checkpoint
from ckptool.runtime import build_module, load_model


@pytest.fixture(scope="module")
def r18(tmp_path_factory, real_state_dict, save_ckpt) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("resnet18")
    sd = real_state_dict("resnet18")
    head10 = real_state_dict("resnet18", 10, seed=3)
    dp = OrderedDict((f"module.{k}", v) for k, v in sd.items())
    legacy = OrderedDict((k, v) for k, v in dp.items() if not k.endswith("num_batches_tracked"))
    rng = np.random.default_rng(0)
    img = d / "cat.png"
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(img)
    return {
        "zip": save_ckpt(sd, d / "resnet18.pth"),
        "legacy_dp": save_ckpt(legacy, d / "resnet18_dp_legacy.pth", "legacy"),
        "train": save_ckpt(
            {"epoch": 7, "state_dict": dp, "optimizer": {"state": {}, "param_groups": []}}, d / "train.ckpt"
        ),
        "head10": save_ckpt(head10, d / "resnet18_10.pth"),
        "backbone": save_ckpt(
            OrderedDict((k, v) for k, v in sd.items() if not k.startswith("fc.")), d / "backbone.pth", "legacy"
        ),
        "image": img,
        "dir": d,
    }


def _reference(path: Path, arch: str = "resnet18", num_classes: int = 1000) -> torch.nn.Module:
    sd = torch.load(path, weights_only=True)
    if "state_dict" in sd:
        sd = sd["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    torch.manual_seed(0)
    model = build_module(resolve(arch, num_classes=num_classes))
    model.load_state_dict(sd, strict=False)
    return model.eval()


@pytest.mark.parametrize("kind", ["zip", "legacy_dp", "train"])
def test_every_form_loads_exactly(r18, kind):
    ck = open_checkpoint(r18[kind])
    try:
        model = load_model(ck, "auto")
    finally:
        ck.close()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), _reference(r18[kind])(x))


@pytest.mark.parametrize("kind", ["zip", "legacy_dp", "train"])
def test_cli_check_and_layers(cli, r18, kind):
    r = cli("check", r18[kind], "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["arch"] == "resnet18" and d["compatible"] is True
    t = cli("layers", r18[kind], "--json")
    assert t.exit_code == 0, t.stderr
    rows = json.loads(t.stdout)["layers"]
    assert [r["name"] for r in rows if r["weight_layer"]][-1] == "fc"
    assert next(r for r in rows if r["name"] == "conv5_2b")["shape"] == [512, 512, 3, 3]
    assert cli("inspect", r18[kind]).exit_code == 0


def test_backbone_only_file(cli, r18):
    r = cli("check", r18["backbone"], "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["arch"] == "resnet18" and d["part"] == "backbone"
    r = cli("check", r18["backbone"], "--arch", "resnet18", "--part", "backbone")
    assert r.exit_code == 0, r.stdout
    r = cli("check", r18["backbone"], "--arch", "vgg11", "--part", "backbone")
    assert r.exit_code == 2 and "features" in r.stderr  # VGG's parts are named


def test_export_onnx_parity_predict(cli, r18, tmp_path):
    out = tmp_path / "r18.onnx"
    r = cli("export", r18["legacy_dp"], "--onnx", out, "--arch", "auto", "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    d = json.loads(r.stdout)
    assert d["arch"] == "resnet18" and d["output_shapes"] == [["batch", 1000]] and d["parity"]["passed"]
    p = cli("parity", r18["zip"], out, "--json")
    assert p.exit_code == 0, p.stderr + p.stdout
    assert json.loads(p.stdout)["outputs"][0]["top1_agreement"] == 1.0
    # the ONNX file is a checkpoint too: same weights under the same names
    c = cli("check", out, "--json")
    assert c.exit_code == 0 and json.loads(c.stdout)["arch"] == "resnet18"
    pt = cli("predict", r18["train"], r18["image"], "--json")
    po = cli("predict", out, r18["image"], "--json")
    assert pt.exit_code == 0 and po.exit_code == 0, pt.stderr + po.stderr
    top_t, top_o = json.loads(pt.stdout)["predictions"][0]["top"], json.loads(po.stdout)["predictions"][0]["top"]
    assert json.loads(pt.stdout)["arch"] == "resnet18"
    assert [c["index"] for c in top_t] == [c["index"] for c in top_o]
    assert abs(top_t[0]["prob"] - top_o[0]["prob"]) < 1e-4


def test_fine_tuned_head_export(cli, r18, tmp_path):
    out = tmp_path / "r18_10.onnx"
    r = cli("export", r18["head10"], "--onnx", out, "--arch", "resnet18", "--num-classes", "10", "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["output_shapes"] == [["batch", 10]]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(10)))
    p = cli("predict", r18["head10"], r18["image"], "--labels", labels, "--json")
    assert p.exit_code == 0, p.stderr
    assert json.loads(p.stdout)["num_classes"] == 10


def test_features_only_export_of_a_backbone(cli, r18, tmp_path):
    out = tmp_path / "backbone.onnx"
    r = cli("export", r18["backbone"], "--onnx", out, "--arch", "resnet18", "--features-only", "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    d = json.loads(r.stdout)
    assert d["features_only"] is True and d["output_shapes"] == [["batch", 512, 7, 7]]
    p = cli("parity", r18["zip"], out, "--arch", "resnet18", "--json")  # the whole file, compared as backbone
    assert p.exit_code == 0, p.stderr + p.stdout
    assert json.loads(p.stdout)["features_only"] is True


def test_extract_and_safetensors(cli, r18, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "layer4.safetensors"
    r = cli("extract", r18["legacy_dp"], "--prefix", "layer4", "-o", out)
    assert r.exit_code == 0, r.stderr
    model = _reference(r18["zip"])
    model.layer4.load_state_dict(load_file(out), strict=True)
    st = tmp_path / "r18.safetensors"
    r = cli("export", r18["train"], "--safetensors", st)
    assert r.exit_code == 0, r.stderr
    c = cli("check", st, "--json")
    assert json.loads(c.stdout)["arch"] == "resnet18" and json.loads(c.stdout)["compatible"]


def test_bottleneck_variant_loads(tmp_path, real_state_dict, save_ckpt):
    """resnext50_32x4d (grouped 3x3 convs) through check auto and a strict load, small input."""
    sd = real_state_dict("resnext50_32x4d")
    p = save_ckpt(sd, tmp_path / "x50.pth")
    ck = open_checkpoint(p)
    try:
        model = load_model(ck, "auto")
    finally:
        ck.close()
    assert model.layer1[0].conv2.groups == 32
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), _reference(p, "resnext50_32x4d")(x))
