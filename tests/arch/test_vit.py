"""The ViT family: torchvision's vit_* layout (non-module parameters, fused qkv), names, identification, and
every command on a tiny config registered by the test (the real ones are 330 MB+ to export)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import ClassVar

import pytest
import torch

from ckptool.arch.family import register_family, unregister_family
from ckptool.arch.registry import resolve
from ckptool.arch.vit import ViTConfig, ViTFamily
from ckptool.compat import check
from ckptool.formats import open_checkpoint
from ckptool.layers import layer_table
from ckptool.runtime import build_module, load_model

TORCHVISION_PARAMS = {
    "vit_b_16": 86_567_656,
    "vit_b_32": 88_224_232,
    "vit_l_16": 304_326_632,
    "vit_l_32": 306_535_400,
    "vit_h_14": 632_045_800,
}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_layout_matches_torchvision(name):
    spec = resolve(name)
    assert spec.family == "vit" and spec.n_params == TORCHVISION_PARAMS[name]
    model = build_module(spec, device="meta")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(spec.state_dict_shapes().items())  # keys, shapes and torch's order


def test_vit_b_16_keys_by_hand():
    sd = resolve("vit_b_16").state_dict_shapes()
    assert list(sd)[:4] == ["class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"]
    assert sd["class_token"] == (1, 1, 768) and sd["encoder.pos_embedding"] == (1, 197, 768)
    assert sd["conv_proj.weight"] == (768, 3, 16, 16)
    e0 = "encoder.layers.encoder_layer_0."
    assert [k[len(e0) :] for k in sd if k.startswith(e0)] == [
        "ln_1.weight", "ln_1.bias", "self_attention.in_proj_weight", "self_attention.in_proj_bias",
        "self_attention.out_proj.weight", "self_attention.out_proj.bias", "ln_2.weight", "ln_2.bias",
        "mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias",
    ]  # fmt: skip
    assert sd[e0 + "self_attention.in_proj_weight"] == (2304, 768) and sd[e0 + "mlp.0.weight"] == (3072, 768)
    assert (
        "encoder.layers.encoder_layer_11.mlp.3.bias" in sd and "encoder.layers.encoder_layer_12.ln_1.weight" not in sd
    )
    assert list(sd)[-4:] == ["encoder.ln.weight", "encoder.ln.bias", "heads.head.weight", "heads.head.bias"]
    assert len(sd) == 4 + 12 * 12 + 4


def test_layers_names_and_parameters(mem_ck):
    t = layer_table(mem_ck(resolve("vit_b_16").state_dict_shapes()))
    assert t.arch == "vit_b_16" and t.compatible
    assert [r.module for r in t.rows[:4]] == ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"]
    assert t.find("class_token").shape == (1, 1, 768) and t.find("class_token").params == 768
    qkv = t.find("block1.attn.qkv")
    assert qkv.type == "MultiheadAttention" and qkv.shape == (2304, 768) and qkv.weight_layer == 2
    assert t.find("block12.fc2").weight_layer == 49 and t.find("head").weight_layer == 50
    assert t.params == TORCHVISION_PARAMS["vit_b_16"]
    assert any("12 encoder layers" in n for n in t.notes)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_auto_identifies(mem_ck, name):
    rep = check(mem_ck(resolve(name).state_dict_shapes()))
    assert rep.arch == name and rep.compatible
    assert all(not c["arch"].startswith(("vgg", "res")) for c in rep.candidates)


def test_head_and_backbone(mem_ck):
    shapes = resolve("vit_b_32", num_classes=5).state_dict_shapes()
    rep = check(mem_ck(shapes))
    assert rep.arch == "vit_b_32" and rep.num_classes == 5 and rep.compatible
    body = {k: s for k, s in shapes.items() if not k.startswith("heads.")}
    rep = check(mem_ck(body))
    assert rep.compatible and rep.part == "backbone"


# ---------------------------------------------------------------------------------------------------
# every command, on a tiny configuration the test registers (the family contract is open)
# ---------------------------------------------------------------------------------------------------
class TinyViT(ViTFamily):
    name = "vit_test_tiny"
    configs: ClassVar[dict[str, ViTConfig]] = {"vit_tiny_test": ViTConfig(8, 2, 2, 32, 64, image_size=32)}
    variants = ("vit_tiny_test",)


@pytest.fixture
def tiny_vit(tmp_path, real_state_dict, save_ckpt):
    register_family(TinyViT())
    try:
        sd = real_state_dict("vit_tiny_test", 10)
        dp = OrderedDict((f"module.{k}", v) for k, v in sd.items())
        yield {
            "zip": save_ckpt(sd, tmp_path / "vit.pth"),
            "legacy_train": save_ckpt({"epoch": 1, "model": dp}, tmp_path / "vit_train.pth", "legacy"),
            "dir": tmp_path,
        }
    finally:
        unregister_family("vit_test_tiny")
        resolve.__globals__["_registry_spec"].cache_clear()


def test_tiny_every_command(cli, tiny_vit):
    for kind in ("zip", "legacy_train"):
        r = cli("check", tiny_vit[kind], "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["arch"] == "vit_tiny_test", r.stdout
        ck = open_checkpoint(tiny_vit[kind])
        try:
            model = load_model(ck, "auto")
        finally:
            ck.close()
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    out = tiny_vit["dir"] / "vit.onnx"
    r = cli("export", tiny_vit["legacy_train"], "--onnx", out, "--arch", "auto", "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    d = json.loads(r.stdout)
    assert d["arch"] == "vit_tiny_test" and d["parity"]["passed"]
    p = cli("parity", tiny_vit["zip"], out, "--json")
    assert p.exit_code == 0, p.stdout + p.stderr
    f = tiny_vit["dir"] / "vit_features.onnx"
    r = cli(
        "export",
        tiny_vit["zip"],
        "--onnx",
        f,
        "--arch",
        "vit_tiny_test",
        "--num-classes",
        "10",
        "--features-only",
        "--json",
    )
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["output_shapes"][0][-1] == 32
    st = tiny_vit["dir"] / "vit.safetensors"
    assert cli("export", tiny_vit["legacy_train"], "--safetensors", st).exit_code == 0
    assert json.loads(cli("check", st, "--json").stdout)["arch"] == "vit_tiny_test"
    e = tiny_vit["dir"] / "enc.safetensors"
    assert cli("extract", tiny_vit["zip"], "--prefix", "encoder", "-o", e).exit_code == 0
    labels = tiny_vit["dir"] / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(10)))
    from PIL import Image

    img = tiny_vit["dir"] / "x.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(img)
    pr = cli("predict", tiny_vit["zip"], img, "--labels", labels, "--size", "32", "--json")
    assert pr.exit_code == 0, pr.stderr
    assert json.loads(pr.stdout)["arch"] == "vit_tiny_test"
