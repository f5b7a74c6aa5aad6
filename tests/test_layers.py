"""`ckptool layers` and ckptool.layers: the article's table, from the registry, a module:callable, or the
state_dict alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pytest
import torch
import vgg_files
from torch import nn

from ckptool.checkpoint import Checkpoint, TensorInfo
from ckptool.formats import open_checkpoint
from ckptool.layers import PARAMETER_FREE, layer_table


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory, request):
    return vgg_files.getter(tmp_path_factory, request)


def rows_by_module(d):
    return {r["module"]: r for r in d["layers"]}


@pytest.mark.slow
def test_vgg16_bn_table_matches_the_article(vgg_file, cli, script):
    path = vgg_file("vgg16_bn")
    r = script("layers", path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["arch"] == "vgg16_bn" and d["source"] == "registry"
    assert d["layers"][0] == {
        "module": "features.0", "type": "Conv2d", "name": "conv1_1", "weight_layer": 1,
        "shape": [64, 3, 3, 3], "params": 1792,
    }  # fmt: skip
    assert d["counts"] == {"features": 44, "classifier": 7}
    assert sum(1 for x in d["layers"] if x["module"].startswith("features.")) == 44
    by = rows_by_module(d)
    assert by["features.40"]["name"] == "conv5_3" and by["features.40"]["weight_layer"] == 13
    assert by["classifier.6"]["name"] == "fc8" and by["classifier.6"]["weight_layer"] == 16
    assert [x["weight_layer"] for x in d["layers"] if x["weight_layer"]] == list(range(1, 17))
    # the indices the state_dict skips are parameter-free modules, and they are rows
    for idx, kind, name in [
        (2, "ReLU", "relu1_1"),
        (6, "MaxPool2d", "pool1"),
        (42, "ReLU", "relu5_3"),
        (43, "MaxPool2d", "pool5"),
    ]:
        row = by[f"features.{idx}"]
        assert (row["type"], row["name"], row["params"], row["shape"], row["weight_layer"]) == (
            kind,
            name,
            0,
            None,
            None,
        )
    assert by["avgpool"]["type"] == "AdaptiveAvgPool2d"
    assert (by["classifier.2"]["type"], by["classifier.2"]["name"]) == ("Dropout", "drop6")
    bn = [x for x in d["layers"] if x["type"] == "BatchNorm2d"]
    assert len(bn) == 13 and all(x["weight_layer"] is None for x in bn)
    assert by["features.1"] == {
        "module": "features.1", "type": "BatchNorm2d", "name": "bn1_1", "weight_layer": None, "shape": [64], "params": 128,
    }  # fmt: skip
    assert d["params"] == 138_365_992 and d["weight_layers"] == 16 and d["modules"] == 52
    # the table on a terminal-less stdout
    t = cli("layers", path)
    assert t.exit_code == 0
    line = next(x for x in t.stdout.splitlines() if x.startswith("features.40 "))
    assert line.split()[:4] == ["features.40", "Conv2d", "conv5_3", "13"]
    assert "features: 44" in t.stdout and "weight layers: 16" in t.stdout


@pytest.mark.slow
def test_vgg16_table(vgg_file, cli):
    d = json.loads(cli("layers", vgg_file("vgg16"), "--json").stdout)
    assert d["arch"] == "vgg16" and d["counts"] == {"features": 31, "classifier": 7}
    by = rows_by_module(d)
    assert by["features.28"]["name"] == "conv5_3" and by["features.28"]["weight_layer"] == 13
    assert by["classifier.6"]["weight_layer"] == 16
    assert not any(x["type"].startswith("BatchNorm") for x in d["layers"])


@pytest.mark.slow
def test_table_follows_the_file(vgg_file, cli):
    """10-class head: the row shows the file's shape; nested + prefixed files give the same table."""
    d = json.loads(cli("layers", vgg_file("vgg16_bn_10"), "--json").stdout)
    fc8 = rows_by_module(d)["classifier.6"]
    assert fc8["shape"] == [10, 4096] and fc8["params"] == 40_970 and d["compatible"] is True
    assert any("--num-classes 10" in n for n in d["notes"])
    plain = json.loads(cli("layers", vgg_file("vgg16_bn"), "--json").stdout)["layers"]
    for kind in ("vgg16_bn_lightning", "vgg16_bn_dp", "vgg16_bn_legacy"):
        d = json.loads(cli("layers", vgg_file(kind), "--json").stdout)
        assert d["layers"] == plain, kind
    part = json.loads(cli("layers", vgg_file("vgg16_bn_features"), "--json").stdout)
    assert part["arch"] == "vgg16_bn" and part["part"] == "features" and part["counts"] == {"features": 44}
    assert rows_by_module(part)["40"]["name"] == "conv5_3"


@pytest.mark.slow
def test_explicit_arch_that_does_not_fit(vgg_file, cli):
    r = cli("layers", vgg_file("vgg16_bn"), "--arch", "vgg16", "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["arch"] == "vgg16" and d["compatible"] is False and d["counts"]["features"] == 31
    assert any("does not fit vgg16" in n for n in d["notes"])
    assert any("a vgg16_bn file checked against vgg16 (no BN)" in n for n in d["notes"])


@pytest.mark.slow
def test_layers_is_torch_free(vgg_file):
    code = textwrap.dedent(
        f"""
        import sys
        from ckptool.cli.app import app
        try:
            app(["layers", {str(vgg_file("vgg16_bn"))!r}])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        assert "torch" not in sys.modules, "layers imported torch"
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------------------
# inference from the state_dict alone
# ------------------------------------------------------------------------------------------------
def test_inferred_sequential_with_gaps(tmp_path, cli, script):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2),
    )  # fmt: skip
    p = tmp_path / "seq.pth"
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, p)
    r = script("layers", p, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["arch"] is None and d["source"] == "inferred"
    got = [(x["module"], x["type"], x["weight_layer"], x["params"]) for x in d["layers"]]
    assert got == [
        ("net.0", "Conv2d", 1, 112),
        ("net.1", PARAMETER_FREE, None, 0),
        ("net.2", "Conv2d", 2, 296),
        ("net.3", "BatchNorm2d", None, 16),
        ("net.4", PARAMETER_FREE, None, 0),
        ("net.5", PARAMETER_FREE, None, 0),
        ("net.6", PARAMETER_FREE, None, 0),
        ("net.7", "Linear", 3, 45),
        ("net.8", PARAMETER_FREE, None, 0),
        ("net.9", "Linear", 4, 12),
    ]
    assert d["counts"] == {"net": 10}
    assert sum(x["params"] for x in d["layers"]) == sum(p.numel() for p in net.parameters())
    assert any("inferred from the state_dict alone" in n for n in d["notes"])
    t = cli("layers", p)
    assert t.exit_code == 0 and "inferred from the state_dict" in t.stdout


def test_inferred_nested_containers():
    shapes = OrderedDict(
        [
            ("emb.weight", (100, 16)),
            ("layers.0.fc.weight", (16, 16)),
            ("layers.0.fc.bias", (16,)),
            ("layers.0.norm.weight", (16,)),
            ("layers.0.norm.bias", (16,)),
            ("layers.2.fc.weight", (16, 16)),
            ("layers.2.fc.bias", (16,)),
            ("layers.2.bn.weight", (16,)),
            ("layers.2.bn.bias", (16,)),
            ("layers.2.bn.running_mean", (16,)),
            ("layers.2.bn.running_var", (16,)),
            ("layers.2.bn.num_batches_tracked", ()),
            ("out.weight", (3, 16)),
        ]
    )
    ck = Checkpoint("<mem>", "safetensors", [TensorInfo(k, "float32", s) for k, s in shapes.items()])
    t = layer_table(ck)
    assert t.arch is None
    assert [(r.module, r.type, r.weight_layer) for r in t.rows] == [
        ("emb", "Embedding", None),
        ("layers.0.fc", "Linear", 1),
        ("layers.0.norm", "Norm", None),
        ("layers.1", PARAMETER_FREE, None),
        ("layers.2.fc", "Linear", 2),
        ("layers.2.bn", "BatchNorm1d", None),
        ("out", "Linear", 3),
    ]
    assert t.find("layers.2.bn").params == 32  # running statistics are buffers, not parameters
    assert t.counts == {"layers.0": 2, "layers": 1, "layers.2": 2}


# ------------------------------------------------------------------------------------------------
# a module:callable
# ------------------------------------------------------------------------------------------------
TINY = """
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2, num_classes)
"""


def test_custom_arch_layers(tmp_path, monkeypatch, cli):
    (tmp_path / "tinynet.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinynet", None)
    from tinynet import Tiny

    p = tmp_path / "tiny.pth"
    torch.save(Tiny().state_dict(), p)
    r = cli("layers", p, "--arch", "tinynet:Tiny", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["source"] == "custom" and d["compatible"] is True
    assert [(x["module"], x["type"], x["weight_layer"]) for x in d["layers"]] == [
        ("body.0", "Conv2d", 1),
        ("body.1", "GELU", None),
        ("body.2", "AdaptiveAvgPool2d", None),
        ("body.3", "Flatten", None),
        ("head", "Linear", 2),
    ]
    assert d["counts"] == {"body": 4}
    # auto on the same file: nothing in the registry matches, so it is inferred (and the trailing
    # parameter-free modules of body cannot be seen)
    auto = layer_table(open_checkpoint(p))
    assert auto.source == "inferred" and [r.module for r in auto.rows] == ["body.0", "head"]
    sys.modules.pop("tinynet", None)
