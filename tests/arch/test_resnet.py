"""The ResNet family: torchvision's exact layout, paper names in layers, identification, parts."""

from __future__ import annotations

import json

import pytest
import torch

from ckptool.arch.registry import describe, resolve, resolve_part
from ckptool.compat import check
from ckptool.layers import layer_table
from ckptool.runtime import build_module

# torchvision.models' published parameter counts (1000 classes): an independent check of the torch-free data
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
}
DEPTH = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def depth(name: str) -> int:
    return DEPTH.get(name) or (50 if "50" in name else 101)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_layout_matches_torchvision(name):
    spec = resolve(name)
    assert spec.family == "resnet" and spec.n_params == TORCHVISION_PARAMS[name]
    model = build_module(spec, device="meta")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(spec.state_dict_shapes().items())  # same keys, shapes and order
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    assert {str(v.dtype) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")} == {"torch.int64"}
    assert all(spec.expected_dtype(k) == str(v.dtype).removeprefix("torch.") for k, v in model.state_dict().items())
    # every module the table lists (Add rows aside) is a real leaf module of torchvision's layout
    leaves = {(n, type(m).__name__) for n, m in model.named_modules() if not list(m.children())}
    assert {(m.path, m.type) for m in spec.modules if m.type != "Add"} == leaves
    assert spec.weight_layers == depth(name)


def test_torchvision_keys_by_hand():
    """Keys and shapes as torchvision writes them, spelled out (resnet18, resnet50, ResNeXt, Wide)."""
    r18 = resolve("resnet18").state_dict_shapes()
    assert len(r18) == 122 and "layer1.0.downsample.0.weight" not in r18
    assert (
        r18["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
        and r18["layer2.0.downsample.1.num_batches_tracked"] == ()
    )
    assert r18["conv1.weight"] == (64, 3, 7, 7) and "conv1.bias" not in r18 and r18["fc.weight"] == (1000, 512)
    assert "layer1.0.conv3.weight" not in r18
    r50 = resolve("resnet50").state_dict_shapes()
    assert len(r50) == 320
    assert r50["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert r50["layer1.0.conv2.weight"] == (64, 64, 3, 3) and r50["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert r50["fc.weight"] == (1000, 2048)
    x50 = resolve("resnext50_32x4d").state_dict_shapes()
    assert list(x50) == list(r50)  # the same names ...
    assert x50["layer1.0.conv2.weight"] == (128, 4, 3, 3)  # ... grouped: 32 groups of width 4
    assert resolve("resnext101_64x4d").state_dict_shapes()["layer1.0.conv2.weight"] == (256, 4, 3, 3)
    w50 = resolve("wide_resnet50_2").state_dict_shapes()
    assert list(w50) == list(r50) and w50["layer1.0.conv1.weight"] == (128, 64, 1, 1)
    assert resolve("resnet152").state_dict_shapes()["layer3.35.bn3.running_var"] == (1024,)


def test_forward_stride_on_the_3x3_conv():
    torch.manual_seed(0)
    model = build_module(resolve("resnet50", num_classes=10)).eval()
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)


def test_paper_names_and_depth():
    spec = resolve("resnet50")
    rows = [(m.path, m.type, m.name, m.weight_layer) for m in spec.modules]
    assert rows[:4] == [("conv1", "Conv2d", "conv1", 1), ("bn1", "BatchNorm2d", "bn1", None),
                        ("relu", "ReLU", "relu1", None), ("maxpool", "MaxPool2d", "pool1", None)]  # fmt: skip
    by_name = {m.name: m for m in spec.modules}
    assert by_name["conv3_2b"].path == "layer2.1.conv2" and by_name["conv3_2b"].weight_layer == 2 + 3 * 3 + 3 * 1 + 1
    assert by_name["proj3_1"].path == "layer2.0.downsample.0" and by_name["proj3_1"].weight_layer is None
    assert by_name["add5_3"].type == "Add" and by_name["add5_3"].path == "layer4.2"
    assert by_name["fc"].weight_layer == 50 and by_name["avgpool"].type == "AdaptiveAvgPool2d"
    # a Bottleneck's one ReLU runs three times: three rows, one module
    assert [m.name for m in spec.modules if m.path == "layer1.0.relu"] == ["relu2_1a", "relu2_1b", "relu2_1"]
    assert "49 convolutions + 1 fc = 50 weight layers" in spec.notes[0] and "4 projection" in spec.notes[0]
    r18 = resolve("resnet18")
    assert [m.name for m in r18.modules if m.path.startswith("layer1.0")] == [
        "conv2_1a", "bn2_1a", "relu2_1a", "conv2_1b", "bn2_1b", "add2_1", "relu2_1",
    ]  # fmt: skip
    assert "17 convolutions + 1 fc = 18" in r18.notes[0] and "3 projection" in r18.notes[0]


def test_layers_table(mem_ck):
    shapes = resolve("resnet50").state_dict_shapes()
    t = layer_table(mem_ck(shapes))
    assert t.arch == "resnet50" and t.compatible is True
    assert t.weight_layers == 50 and t.find("fc").weight_layer == 50 and t.find("conv5_3c").shape == (2048, 512, 1, 1)
    assert t.find("add2_1").type == "Add" and t.find("pool1").params == 0
    assert any("49 convolutions + 1 fc" in n for n in t.notes)
    assert t.params == TORCHVISION_PARAMS["resnet50"]
    d = t.to_dict()
    assert d["layers"][0] == {"module": "conv1", "type": "Conv2d", "name": "conv1", "weight_layer": 1,
                              "shape": [64, 3, 7, 7], "params": 9408}  # fmt: skip


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_auto_tells_same_keys_apart(mem_ck, name):
    rep = check(mem_ck(resolve(name).state_dict_shapes()))
    assert rep.arch == name and rep.compatible and rep.score == 1.0
    others = {c["arch"]: c["score"] for c in rep.candidates[1:]}
    assert all(s < 1.0 for s in others.values())
    if name != "resnet50":  # resnext50_32x4d and wide_resnet50_2 differ only in the grouped 3x3 convs
        sibling = "wide_resnet50_2" if name == "resnext50_32x4d" else "resnext50_32x4d"
        told = [f for f in rep.findings if f.startswith(f"told apart from {sibling}")]
        assert told and "layer1.0.conv2.weight" in told[0], rep.findings


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet101", "resnet152", "resnext101_32x8d",
                                  "resnext101_64x4d", "wide_resnet101_2"])  # fmt: skip
def test_auto_identifies_every_variant(mem_ck, name):
    rep = check(mem_ck(resolve(name).state_dict_shapes()))
    assert rep.arch == name and rep.compatible


def test_named_sibling_says_which(mem_ck):
    rep = check(mem_ck(resolve("resnext50_32x4d").state_dict_shapes()), "resnet50")
    assert not rep.compatible and rep.mismatched
    assert any("a resnext50_32x4d file checked against resnet50: use --arch resnext50_32x4d" in f for f in rep.findings)


def test_not_vgg_and_not_neither(mem_ck):
    vgg = check(mem_ck(resolve("vgg16_bn").state_dict_shapes()))
    assert vgg.arch == "vgg16_bn" and all(not c["arch"].startswith("res") or c["score"] < 0.1 for c in vgg.candidates)
    r = check(mem_ck(resolve("resnet18").state_dict_shapes()))
    assert r.arch == "resnet18" and all(not c["arch"].startswith("vgg") for c in r.candidates)
    neither = check(mem_ck({"conv1.weight": (16, 3, 3, 3), "fc.weight": (10, 16), "fc.bias": (10,)}))
    assert neither.arch is None and neither.candidates == []
    assert neither.findings == [
        "no known architecture matches these weights; name the model with --arch module.path:callable"
    ]


def test_fine_tuned_head(mem_ck):
    rep = check(mem_ck(resolve("resnet34", num_classes=7).state_dict_shapes()))
    assert rep.arch == "resnet34" and rep.num_classes == 7 and rep.compatible
    assert any("7-class head: use --num-classes 7" in f for f in rep.findings)
    named = check(mem_ck(resolve("resnet34", num_classes=7).state_dict_shapes()), "resnet34")
    assert not named.compatible and any("fc was replaced with a 7-class head" in f for f in named.findings)


def test_backbone_part(mem_ck):
    shapes = {k: s for k, s in resolve("resnet50").state_dict_shapes().items() if not k.startswith("fc.")}
    rep = check(mem_ck(shapes), "resnet50", part="backbone")
    assert rep.compatible and rep.part == "backbone" and rep.arch == "resnet50"
    auto = check(mem_ck(shapes))
    assert auto.compatible and auto.arch == "resnet50" and auto.part == "backbone"
    assert any("holds only 'backbone'" in f for f in auto.findings)
    whole = check(mem_ck(shapes), "resnet50")
    assert not whole.compatible and any("--part backbone" in f for f in whole.findings)
    # a detection backbone: torchvision's IntermediateLayerGetter keys under backbone.body.
    det = check(mem_ck({f"backbone.body.{k}": s for k, s in shapes.items()}), "resnet50", part="backbone")
    assert det.compatible and det.prefix == "backbone.body."
    sub = resolve_part(resolve("resnet50"), "backbone")
    model = build_module(sub, device="meta")
    assert [n for n, _ in model.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                      "layer3", "layer4"]  # fmt: skip
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == sub.state_dict_shapes() == shapes
    with pytest.raises(Exception, match="backbone"):
        resolve_part(resolve("resnet50"), "head")


def test_archs_lists_the_family(cli):
    infos = {i.name: i for i in describe()}
    assert infos["resnext50_32x4d"].details == {"block": "Bottleneck", "layers": [3, 4, 6, 3], "groups": 32,
                                                 "width_per_group": 4}  # fmt: skip
    assert infos["resnet50"].weight_layers == 50 and infos["resnet50"].parts == ["backbone"]
    r = cli("archs", "--json")
    d = {a["name"]: a for a in json.loads(r.stdout)["archs"]}
    assert d["wide_resnet101_2"]["params"] == 126_886_696 and d["wide_resnet101_2"]["family"] == "resnet"
    plain = cli("archs")
    assert any(
        line.split()[0] == "resnet152" and "60,192,808" in line for line in plain.stdout.splitlines() if line.strip()
    )


def test_names_are_forgiving():
    assert resolve("ResNet-50").name == "resnet50" and resolve("ResNeXt50-32x4d").name == "resnext50_32x4d"
