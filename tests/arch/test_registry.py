"""The architecture registry (VGG family as data), module:callable specs, `ckptool archs`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from ckptool.arch.registry import describe, names, parse_arch_args, resolve, resolve_part
from ckptool.arch.vgg import vgg_spec
from ckptool.errors import UnknownArchError, UsageError
from ckptool.runtime import build_module

# torchvision's published parameter counts (torchvision.models docs, 1000 classes)
TORCHVISION_PARAMS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}
CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class RefVGG(nn.Module):
    """An independent copy of torchvision's vgg.py layout (make_layers + classifier), for comparison."""

    def __init__(self, cfg: list, batch_norm: bool, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv = nn.Conv2d(cin, v, kernel_size=3, padding=1)
                layers += (
                    [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
                )
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Dropout(), nn.Linear(4096, num_classes),
        )  # fmt: skip


def ref(name: str, num_classes: int = 1000) -> nn.Module:
    with torch.device("meta"):
        return RefVGG(CFG[name.removesuffix("_bn")], name.endswith("_bn"), num_classes)


def test_names():
    assert [n for n in names() if n.startswith("vgg")] == list(TORCHVISION_PARAMS)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_registry_matches_torchvision_layout(name):
    spec = resolve(name)
    model = ref(name)
    assert spec.n_params == TORCHVISION_PARAMS[name] == sum(p.numel() for p in model.parameters())
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert spec.state_dict_shapes() == want
    assert list(spec.state_dict_shapes()) == list(want)  # same order, too
    leaves = [(n, type(m).__name__) for n, m in model.named_modules() if not list(m.children())]
    assert [(m.path, m.type) for m in spec.modules] == leaves
    depth = {"vgg11": 11, "vgg13": 13, "vgg16": 16, "vgg19": 19}[name.removesuffix("_bn")]
    assert spec.weight_layers == depth
    assert [m.weight_layer for m in spec.modules if m.weight_layer] == list(range(1, depth + 1))
    # and the module runtime builds from the data loads torchvision-layout weights strictly
    built = build_module(spec, device="meta")
    built.load_state_dict(model.state_dict(), strict=True, assign=True)


def test_paper_names_vgg16_bn():
    spec = vgg_spec("vgg16_bn")
    by_path = {m.path: m for m in spec.modules}
    assert [by_path[f"features.{i}"].name for i in range(7)] == [
        "conv1_1", "bn1_1", "relu1_1", "conv1_2", "bn1_2", "relu1_2", "pool1",
    ]  # fmt: skip
    assert by_path["features.40"].name == "conv5_3" and by_path["features.40"].weight_layer == 13
    assert by_path["features.43"].name == "pool5"
    assert [m.name for m in spec.modules if m.container == "classifier"] == [
        "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8",
    ]  # fmt: skip
    assert by_path["classifier.6"].weight_layer == 16
    assert by_path["features.1"].weight_layer is None
    assert spec.container_counts() == {"features": 44, "classifier": 7}
    assert vgg_spec("vgg16").container_counts() == {"features": 31, "classifier": 7}
    assert vgg_spec("vgg19_bn").modules[-1].weight_layer == 19


def test_num_classes_and_names_are_forgiving():
    spec = resolve("VGG16-BN", num_classes=10)
    assert spec.name == "vgg16_bn" and spec.num_classes == 10 and spec.head == "classifier.6"
    assert spec.state_dict_shapes()["classifier.6.weight"] == (10, 4096)
    assert resolve("vgg11", arch_args={"num_classes": "7"}).num_classes == 7
    with pytest.raises(UsageError, match="disagree"):
        resolve("vgg11", num_classes=3, arch_args={"num_classes": "7"})
    with pytest.raises(UsageError, match="takes only num_classes"):
        resolve("vgg11", arch_args={"depth": "3"})
    with pytest.raises(UsageError):
        resolve("vgg11", num_classes=0)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownArchError) as e:
        resolve("vgg16bn")
    msg = str(e.value)
    assert "did you mean vgg16_bn" in msg and "vgg11, vgg11_bn" in msg and "module.path:callable" in msg
    assert e.value.exit_code == 2
    with pytest.raises(UnknownArchError, match="resnet50"):
        resolve("resnet5")


def test_part():
    sub = resolve_part(resolve("vgg16_bn"), "features")
    assert sub.name == "vgg16_bn[features]" and len(sub.modules) == 44
    assert next(iter(sub.state_dict_shapes())) == "0.weight"
    model = build_module(sub, device="meta")
    assert isinstance(model, nn.Sequential) and len(model) == 44
    with pytest.raises(UsageError, match="features, avgpool, classifier"):
        resolve_part(resolve("vgg16"), "backbone")


def test_parse_arch_args():
    assert parse_arch_args(["a=1", "b = 2"]) == {"a": "1", "b": "2"}
    assert parse_arch_args(["depth=18", "name=x=y"]) == {"depth": "18", "name": "x=y"}
    for bad in ["depth", "=3", "1x=2"]:
        with pytest.raises(UsageError):
            parse_arch_args([bad])


def test_registry_is_torch_free():
    code = textwrap.dedent(
        """
        import sys
        from ckptool.arch.registry import describe, names, resolve
        import ckptool.compat, ckptool.layers
        for n in names():
            resolve(n, num_classes=10).state_dict_shapes()
        describe()
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------------------
# module:callable
# ------------------------------------------------------------------------------------------------
NETS = """
import torch
from torch import nn


def huge():
    # 10 billion parameters: only the meta device can build this here
    return nn.Sequential(nn.Linear(100_000, 100_000), nn.ReLU(), nn.Linear(100_000, 10))


class NeedsValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.n = int(self.w.sum().item())  # impossible on the meta device
        self.fc = nn.Linear(self.n, 2)


class Declared(nn.Module):
    input_shape = (1, 1, 28, 28)

    def __init__(self, hidden: int = 4, act: str = "relu"):
        super().__init__()
        self.act = act
        self.conv = nn.Conv2d(1, hidden, 3)
        self.fc = nn.Linear(hidden, 10)


def not_a_module():
    return 42
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "archnets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("archnets", None)
    yield "archnets"
    sys.modules.pop("archnets", None)


def test_custom_builds_on_meta(nets):
    spec = resolve(f"{nets}:huge")
    assert spec.source == "custom" and spec.n_params == 100_000 * 100_000 + 100_000 + 100_000 * 10 + 10
    assert [(m.path, m.type, m.weight_layer) for m in spec.modules] == [
        ("0", "Linear", 1), ("1", "ReLU", None), ("2", "Linear", 2),
    ]  # fmt: skip
    assert spec.head == "2" and spec.num_classes == 10 and spec.input_shape == (1, 100_000)
    assert spec.builder is not None


def test_custom_falls_back_to_cpu_when_meta_cannot_build(nets):
    spec = resolve(f"{nets}:NeedsValues")
    assert spec.state_dict_shapes() == {"w": (3,), "fc.weight": (2, 3), "fc.bias": (2,)}
    assert "CPU" in spec.description
    model = build_module(spec)
    assert model.fc.weight.shape == (2, 3) and model.fc.weight.device.type == "cpu"


def test_custom_arch_args_are_literals(nets):
    spec = resolve(f"{nets}:Declared", arch_args={"hidden": "6", "act": "gelu"})
    assert spec.state_dict_shapes()["conv.weight"] == (6, 1, 3, 3)
    assert spec.input_shape == (1, 1, 28, 28)  # declared by the model
    model = build_module(spec)
    assert model.act == "gelu" and model.conv.out_channels == 6
    assert "hidden=6" in spec.description and "act='gelu'" in spec.description
    sub = spec.part("conv")
    assert sub.state_dict_shapes() == {"weight": (6, 1, 3, 3), "bias": (6,)}
    assert isinstance(build_module(sub), nn.Conv2d)


def test_custom_errors(nets):
    with pytest.raises(UnknownArchError, match=r"not an nn\.Module"):
        resolve(f"{nets}:not_a_module")
    with pytest.raises(UnknownArchError, match="cannot import"):
        resolve("definitely_not_installed_pkg:Net")
    with pytest.raises(UsageError, match="takes no num_classes"):
        resolve(f"{nets}:NeedsValues", num_classes=3)


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
def test_torchvision_prefix_without_torchvision():
    with pytest.raises(UnknownArchError, match="torchvision is not installed"):
        resolve("torchvision:vgg16")


def test_torchvision_prefix_with_torchvision():
    pytest.importorskip("torchvision")
    spec = resolve("torchvision:vgg16_bn", num_classes=10)
    assert spec.source == "torchvision"
    assert spec.state_dict_shapes() == resolve("vgg16_bn", num_classes=10).state_dict_shapes()
    assert next(m for m in spec.modules if m.path == "features.40").name == "conv5_3"


# ------------------------------------------------------------------------------------------------
# ckptool archs
# ------------------------------------------------------------------------------------------------
def test_archs_cli(cli, script):
    r = cli("archs")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    for n, p in TORCHVISION_PARAMS.items():
        assert any(line.split()[0] == n and f"{p:,}" in line for line in lines if line.strip()), n
    assert "module.path:callable" in r.stdout
    j = script("archs", "--json")
    assert j.returncode == 0, j.stderr
    d = json.loads(j.stdout)
    assert [a["name"] for a in d["archs"]] == names()
    vgg16_bn = next(a for a in d["archs"] if a["name"] == "vgg16_bn")
    assert vgg16_bn["weight_layers"] == 16 and vgg16_bn["modules"] == {"features": 44, "classifier": 7}
    assert vgg16_bn["params"] == 138_365_992 and vgg16_bn["batch_norm"] is True
    assert d["archs"] == [i.to_dict() for i in describe()]
