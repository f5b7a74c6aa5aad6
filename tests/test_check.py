"""`ckptool check` and ckptool.compat: compatibility, auto-identification, findings in words, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import vgg_files

from ckptool.arch.vgg import vgg_spec
from ckptool.checkpoint import Checkpoint, TensorInfo
from ckptool.compat import check
from ckptool.errors import UnknownArchError, UsageError
from ckptool.formats import open_checkpoint

REGISTRY = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory, request):
    return vgg_files.getter(tmp_path_factory, request)


def mem_ck(shapes: dict[str, tuple[int, ...]], dtype: str = "float32") -> Checkpoint:
    """A Checkpoint with only headers: what every reader returns, without a file."""
    tensors = [
        TensorInfo(k, "int64" if k.endswith("num_batches_tracked") else dtype, tuple(s)) for k, s in shapes.items()
    ]
    return Checkpoint(path="<mem>", format="torch-zip", tensors=tensors)


def spec_shapes(name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    return vgg_spec(name, num_classes).state_dict_shapes()


# ------------------------------------------------------------------------------------------------
# full-size files: every registry architecture
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTRY)
def test_auto_identifies_every_full_size_vgg(vgg_file, cli, name):
    path = vgg_file(name)
    r = cli("check", path, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["arch"] == name and d["compatible"] is True and d["score"] == 1.0
    assert d["missing"] == [] and d["unexpected"] == [] and d["mismatched"] == []
    assert d["candidates"][0] == {"arch": name, "score": 1.0, "num_classes": 1000}
    assert all(c["score"] < 1.0 for c in d["candidates"][1:])
    # named explicitly, it is compatible too
    assert cli("check", path, "--arch", name).exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg13_bn", "vgg16_bn_legacy"])
def test_legacy_bn_without_num_batches_tracked_is_compatible(vgg_file, cli, name):
    path = vgg_file(name)
    ck = open_checkpoint(path)
    assert ck.format == "torch-legacy"
    assert not any(n.endswith("num_batches_tracked") for n in ck.names())
    arch = name.removesuffix("_legacy")
    rep = check(ck, arch)
    n_bn = sum(1 for m in vgg_spec(arch).modules if m.type == "BatchNorm2d")
    assert rep.compatible and rep.missing == []
    assert len(rep.optional_missing) == n_bn
    assert any("num_batches_tracked" in f and "accepts" in f for f in rep.findings)
    assert cli("check", path).exit_code == 0
    # and torch agrees: the real model loads it strictly
    from ckptool.runtime import build_module

    model = build_module(rep.spec, device="meta")
    sd = torch.load(path, map_location="meta", weights_only=True)
    result = model.load_state_dict(sd, strict=True, assign=True)  # strict: raises on any mismatch
    assert result.missing_keys == [] and result.unexpected_keys == []


@pytest.mark.slow
def test_ten_class_head(vgg_file, cli):
    path = vgg_file("vgg16_bn_10")
    auto = check(open_checkpoint(path))
    assert auto.arch == "vgg16_bn" and auto.num_classes == 10 and auto.compatible
    assert "classifier.6 was replaced with a 10-class head: use --num-classes 10" in auto.findings

    r = cli("check", path, "--arch", "vgg16_bn", "--json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["compatible"] is False and d["missing"] == [] and d["unexpected"] == []
    assert d["mismatched"] == [
        {"key": "classifier.6.weight", "expected": [1000, 4096], "found": [10, 4096]},
        {"key": "classifier.6.bias", "expected": [1000], "found": [10]},
    ]
    assert "classifier.6 was replaced with a 10-class head: use --num-classes 10" in d["findings"]
    text = cli("check", path, "--arch", "vgg16_bn")
    assert text.exit_code == 1 and "use --num-classes 10" in text.stdout and "NOT compatible" in text.stdout

    ok = cli("check", path, "--arch", "vgg16_bn", "--num-classes", "10")
    assert ok.exit_code == 0, ok.stdout


@pytest.mark.slow
def test_dataparallel_prefix_detected_and_stripped(vgg_file, cli, script):
    path = vgg_file("vgg16_bn_dp")
    for r in (
        cli("check", path, "--arch", "vgg16_bn", "--json"),
        script("check", path, "--arch", "vgg16_bn", "--json"),
    ):
        assert getattr(r, "exit_code", getattr(r, "returncode", None)) == 0
        d = json.loads(r.stdout)
        assert d["compatible"] is True and d["prefix"] == "module."
    rep = check(open_checkpoint(path))
    assert rep.arch == "vgg16_bn" and rep.prefix == "module."
    assert rep.key_map["module.features.0.weight"] == "features.0.weight"
    assert set(rep.key_map.values()) == set(spec_shapes("vgg16_bn"))
    assert any("module." in f and "DataParallel" in f for f in rep.findings)


@pytest.mark.slow
def test_lightning_nesting(vgg_file, cli, script):
    path = vgg_file("vgg16_bn_lightning")
    r = script("check", path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["arch"] == "vgg16_bn" and d["compatible"] is True
    assert d["prefix"] == "model." and d["state_dict_key"] == "state_dict"
    # --key passes through to the reader
    r = cli("check", path, "--key", "state_dict", "--arch", "vgg16_bn")
    assert r.exit_code == 0 and "model." in r.stdout
    bad = cli("check", path, "--key", "optimizer_states")
    assert bad.exit_code == 2 and "optimizer_states" in bad.stderr


@pytest.mark.slow
def test_vgg19_bn_checked_against_vgg16_bn(vgg_file, cli, script):
    path = vgg_file("vgg19_bn")
    r = script("check", path, "--arch", "vgg16_bn", "--json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["compatible"] is False and d["arch"] == "vgg16_bn"
    assert d["candidates"][0] == {"arch": "vgg19_bn", "score": 1.0, "num_classes": 1000}
    assert "a vgg19_bn file checked against vgg16_bn: use --arch vgg19_bn" in d["findings"]
    assert not any("num_batches_tracked" in f for f in d["findings"])  # whole layers differ, not counters
    # the exact differences: vgg19_bn has a 4th conv in blocks 3-5, so indices shift from features.23 on:
    # vgg16_bn's conv4_1 (features.24) sits where vgg19_bn has bn3_4
    assert "features.50.weight" in d["unexpected"]
    assert {"key": "features.24.weight", "expected": [512, 256, 3, 3], "found": [256]} in d["mismatched"]
    text = cli("check", path, "--arch", "vgg16_bn")
    assert text.exit_code == 1 and "NOT compatible with vgg16_bn" in text.stdout
    assert "finding: a vgg19_bn file checked against vgg16_bn" in text.stdout


@pytest.mark.slow
def test_no_bn_file_checked_against_bn(vgg_file, cli):
    r = cli("check", vgg_file("vgg16"), "--arch", "vgg16_bn", "--json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert "a vgg16 (no BN) file checked against vgg16_bn: use --arch vgg16" in d["findings"]
    assert "features.1.running_mean" in d["missing"]


@pytest.mark.slow
def test_backbone_only_file_with_part(vgg_file, cli):
    path = vgg_file("vgg16_bn_features")
    r = cli("check", path, "--arch", "vgg16_bn", "--part", "features", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["compatible"] is True and d["part"] == "features" and d["prefix"] is None
    # without --part: incompatible, and it says why
    r = cli("check", path, "--arch", "vgg16_bn", "--json")
    assert r.exit_code == 1
    assert any("--part features" in f for f in json.loads(r.stdout)["findings"])
    # auto finds the part on its own
    auto = check(open_checkpoint(path))
    assert auto.arch == "vgg16_bn" and auto.part == "features" and auto.compatible
    # a part the architecture does not have
    bad = cli("check", path, "--arch", "vgg16_bn", "--part", "backbone")
    assert bad.exit_code == 2 and "features" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_check_is_header_only_and_torch_free(vgg_file, monkeypatch):
    path = vgg_file("vgg16_bn")

    def boom(*a, **k):
        raise AssertionError("check read tensor bytes")

    monkeypatch.setattr(Checkpoint, "storage_bytes", boom)
    monkeypatch.setattr(Checkpoint, "iter_chunks", boom)
    assert check(open_checkpoint(path), "vgg16_bn").compatible
    code = textwrap.dedent(
        f"""
        import sys
        from ckptool.cli.app import app
        try:
            app(["check", {str(path)!r}, "--arch", "auto"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        finally:
            assert "torch" not in sys.modules, "check imported torch"
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------------------
# header-only Checkpoints (no file): the logic in detail
# ------------------------------------------------------------------------------------------------
def test_nothing_matches_says_so(cli, tmp_path):
    ck = mem_ck({"encoder.weight": (8, 4), "encoder.bias": (8,), "decoder.weight": (4, 8)})
    rep = check(ck)
    assert rep.arch is None and rep.compatible is False
    # one line, no 0.00 "closest" and no 0.000 candidates (issue 11)
    assert rep.findings == [
        "no known architecture matches these weights; name the model with --arch module.path:callable"
    ]
    assert rep.to_dict()["candidates"] == []
    p = tmp_path / "mlp.pth"
    torch.save({"encoder.weight": torch.zeros(8, 4), "encoder.bias": torch.zeros(8)}, p)
    r = cli("check", p, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["arch"] is None
    plain = cli("check", p)
    assert "closest" not in plain.stdout and "0.000" not in plain.stdout
    assert sum("no known architecture matches" in line for line in plain.stdout.splitlines()) == 1


def test_torch_compile_and_stacked_prefixes():
    shapes = spec_shapes("vgg11")
    rep = check(mem_ck({f"_orig_mod.{k}": s for k, s in shapes.items()}))
    assert rep.arch == "vgg11" and rep.prefix == "_orig_mod." and rep.compatible
    assert any("torch.compile" in f for f in rep.findings)
    rep = check(mem_ck({f"module._orig_mod.{k}": s for k, s in shapes.items()}), "vgg11")
    assert rep.prefix == "module._orig_mod." and rep.compatible
    rep = check(mem_ck({f"backbone.{k}": s for k, s in shapes.items()}), "vgg11")
    assert rep.prefix == "backbone." and rep.compatible


def test_lightning_extra_keys_are_unexpected():
    shapes = {f"model.{k}": s for k, s in spec_shapes("vgg11").items()}
    shapes["criterion.weight"] = (1000,)
    rep = check(mem_ck(shapes), "vgg11")
    assert rep.prefix == "model." and not rep.compatible
    assert rep.unexpected == ["criterion.weight"] and rep.missing == [] and rep.mismatched == []
    assert any("22 of 23 keys carry the prefix 'model.'" in f for f in rep.findings)


def test_dtype_differences_are_noted_not_fatal():
    rep = check(mem_ck(spec_shapes("vgg11"), dtype="float16"), "vgg11")
    assert rep.compatible
    assert rep.dtype_notes == [
        "22 tensors are float16 where the model holds float32: load_state_dict casts them (not an error)"
    ]


def test_missing_and_mismatched_keys():
    shapes = spec_shapes("vgg13")
    del shapes["classifier.3.bias"]
    shapes["features.0.weight"] = (64, 1, 3, 3)  # a grayscale stem
    rep = check(mem_ck(shapes), "vgg13")
    assert not rep.compatible
    assert rep.missing == ["classifier.3.bias"]
    assert rep.mismatched == [{"key": "features.0.weight", "expected": [64, 3, 3, 3], "found": [64, 1, 3, 3]}]
    assert rep.to_dict()["mismatched"] == rep.mismatched


def test_head_with_other_num_classes_than_asked():
    rep = check(mem_ck(spec_shapes("vgg11")), "vgg11", num_classes=10)
    assert not rep.compatible
    assert "classifier.6 has 1000 classes, not 10: use --num-classes 1000" in rep.findings


def test_removed_num_batches_tracked_from_a_modern_file_is_missing(tmp_path):
    """torch fills in num_batches_tracked only for BatchNorm layers whose _metadata version is < 2."""
    from ckptool.runtime import build_module

    spec = vgg_spec("vgg11_bn").part("features")
    sd = build_module(spec).state_dict()
    for k in [k for k in sd if k.endswith("num_batches_tracked")]:
        del sd[k]  # del keeps sd._metadata: BatchNorm version 2
    p = tmp_path / "feat.pth"
    torch.save(sd, p)
    rep = check(open_checkpoint(p), "vgg11_bn", part="features")
    assert not rep.compatible and len(rep.missing) == 8
    assert any("version 2" in f for f in rep.findings)
    model = build_module(spec)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        model.load_state_dict(torch.load(p, weights_only=True))
    # rebuilt without _metadata (as old files are), the same keys are fine for torch and for check
    torch.save(OrderedDict(sd.items()), p)
    assert check(open_checkpoint(p), "vgg11_bn", part="features").compatible
    build_module(spec).load_state_dict(torch.load(p, weights_only=True))


def test_errors_exit_2(cli, tmp_path):
    p = tmp_path / "x.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, p)
    for args, needle in [
        (["--arch", "vgg17"], "unknown architecture 'vgg17'"),
        (["--arch", "no_such_pkg_xyz.nets:Net"], "cannot import"),
        (["--arch", "vgg11", "--arch-arg", "depth"], "key=value"),
        (["--arch", "vgg11", "--arch-arg", "depth=3"], "takes only num_classes"),
        (["--arch", "vgg11", "--num-classes", "0"], "num-classes"),
    ]:
        r = cli("check", p, *args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr
    r = cli("check", tmp_path / "nope.pth")
    assert r.exit_code == 2 and "no such file" in r.stderr
    with pytest.raises(UnknownArchError, match="vgg11, vgg11_bn"):
        check(mem_ck({}), "resnet51")
    with pytest.raises(UsageError):
        check(mem_ck({}), "auto", arch_args={"x": "1"})


# ------------------------------------------------------------------------------------------------
# a user-defined module:callable that is not a VGG
# ------------------------------------------------------------------------------------------------
ONET = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(4, cout)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class ONet(nn.Module):
    """Not a VGG: GroupNorm blocks in a ModuleList, a root parameter, a non-persistent buffer."""

    def __init__(self, width: int = 16, num_classes: int = 5):
        super().__init__()
        self.stem = Block(3, width)
        self.blocks = nn.ModuleList([Block(width, width) for _ in range(2)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("mean", torch.zeros(3, 1, 1), persistent=False)

    def forward(self, x):
        x = self.stem(x - self.mean)
        for b in self.blocks:
            x = b(x)
        return self.head(self.pool(x).flatten(1)) * self.scale


def small():
    return ONet(width=8, num_classes=3)


NOT_A_MODEL = 3
'''


@pytest.fixture
def onet(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "usernets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "onet.py").write_text(ONET)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    sys.modules.pop("usernets", None)
    sys.modules.pop("usernets.onet", None)
    from usernets.onet import ONet

    torch.manual_seed(0)
    model = ONet(width=8, num_classes=3)
    plain = tmp_path / "onet.pth"
    torch.save(model.state_dict(), plain)
    nested = tmp_path / "onet.ckpt"
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, nested)
    yield {"src": tmp_path / "src", "plain": plain, "nested": nested, "model": model}
    sys.modules.pop("usernets", None)
    sys.modules.pop("usernets.onet", None)


def test_custom_callable_compatible(onet, cli):
    rep = check(open_checkpoint(onet["plain"]), "usernets.onet:ONet", num_classes=3, arch_args={"width": "8"})
    assert rep.compatible and rep.arch == "usernets.onet:ONet"
    assert rep.spec is not None and rep.spec.source == "custom"
    assert "scale" in rep.key_map.values() and "mean" not in rep.spec.state_dict_shapes()  # non-persistent
    r = cli("check", onet["plain"], "--arch", "usernets.onet:small", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["compatible"] is True


def test_custom_callable_wrong_width(onet, cli):
    r = cli("check", onet["plain"], "--arch", "usernets.onet:ONet", "--num-classes", "3", "--json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert {"key": "stem.conv.weight", "expected": [16, 3, 3, 3], "found": [8, 3, 3, 3]} in d["mismatched"]
    assert any("--arch-arg" in f for f in d["findings"])


def test_custom_callable_nested_and_loads_into_the_real_model(onet):
    """key_map + runtime.build_module(spec) load the file strictly into the user's model."""
    from ckptool.runtime import build_module

    rep = check(open_checkpoint(onet["nested"]), "usernets.onet:small")
    assert rep.compatible and rep.prefix == "model." and rep.state_dict_key == "state_dict"
    model = build_module(rep.spec)
    assert type(model).__name__ == "ONet" and next(model.parameters()).device.type == "cpu"
    raw = torch.load(onet["nested"], weights_only=True)["state_dict"]
    model.load_state_dict({rep.key_map[k]: v for k, v in raw.items()}, strict=True)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.eval()(x), onet["model"].eval()(x))


def test_custom_callable_through_the_script(onet, script):
    env = {"PYTHONPATH": str(onet["src"])}
    r = script(
        "check", onet["plain"], "--arch", "usernets.onet:ONet", "--arch-arg", "width=8", "--num-classes", "3", env=env
    )
    assert r.returncode == 0, r.stderr
    assert "compatible with usernets.onet:ONet" in r.stdout
    # the console script also finds modules in the current folder, as `python -m` does
    exe = Path(sys.executable).with_name("ckptool")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ckptool"]
    res = subprocess.run(
        [*cmd, "check", str(onet["plain"]), "--arch", "usernets.onet:small"],
        cwd=onet["src"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_custom_callable_errors(onet, cli):
    for arch, extra, needle in [
        ("usernets.onet:Nope", [], "has no attribute 'Nope' (it defines: Block, ONet, small)"),
        ("usernets.onet:NOT_A_MODEL", [], "not a callable"),
        ("usernets.onet:Block", [], "failed"),  # needs cin, cout
        ("usernets.onet:small", ["--num-classes", "3"], "takes no num_classes"),
        ("usernets.onet:ONet", ["--arch-arg", "depth=3"], "no argument 'depth'"),
        ("usernets:onet:ONet", [], "module.path:callable"),
    ]:
        r = cli("check", onet["plain"], "--arch", arch, *extra)
        assert r.exit_code == 2, (arch, r.stdout, r.stderr)
        assert needle in r.stderr, (arch, r.stderr)
        assert "Traceback" not in r.stderr


def test_backbone_findings_in_words():
    feats = {k: s for k, s in spec_shapes("vgg11").items() if k.startswith("features.")}
    rep = check(mem_ck(feats), "vgg16")
    assert not rep.compatible
    assert "a vgg11 (no BN) features-only file checked against vgg16 (no BN): use --arch vgg11 --part features" in (
        rep.findings
    )
    auto = check(mem_ck(feats))
    assert (auto.arch, auto.part, auto.compatible, auto.prefix) == ("vgg11", "features", True, "features.")
    # a backbone with a head of its own: the part matches, the head keys are unexpected, and it says so
    with_head = {**feats, "head.weight": (10, 512), "head.bias": (10,)}
    auto = check(mem_ck(with_head))
    assert auto.arch == "vgg11" and auto.part == "features" and not auto.compatible
    assert auto.unexpected == ["head.weight", "head.bias"]
    assert any("best match is the 'features' part of vgg11" in f for f in auto.findings)
