"""`ckptool extract`: the article's partial model (`model.features` as a frozen feature extractor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ckptool.arch.vgg import vgg_spec
from ckptool.errors import KeyNotFoundError, UsageError
from ckptool.extract import extract, output_format
from ckptool.runtime import build_module

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"


def tiny_features() -> nn.Sequential:
    """The `features` layout of fixtures/tiny_vgg*.pth: conv0 bn1 relu2 pool3 conv4 bn5 relu6 pool7."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip


def _original_features() -> dict[str, torch.Tensor]:
    sd = torch.load(FIX / "tiny_vgg.pth", weights_only=True)
    return {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}


# ------------------------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_vgg16_bn_features_load_into_vgg_features(cli, vgg16_bn_files: dict[str, Path], tmp_path: Path) -> None:
    """The article's partial model: extract `features`, then `vgg.features.load_state_dict(...)` as is."""
    out = tmp_path / "vgg16_bn_features.safetensors"
    r = cli("extract", vgg16_bn_files["zip"], "--prefix", "features", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["tensors"] == 13 * 2 + 13 * 5 == 91  # 13 convs (weight, bias) + 13 BNs (5 each)
    assert d["tensors_in_source"] == 97 and d["verified"] is True
    assert d["wrapper_prefix"] is None and d["names"]["features.40.weight"] == "40.weight"

    sd = load_file(out)
    vgg = build_module(vgg_spec("vgg16_bn"))
    result = vgg.features.load_state_dict(sd)  # strict: no missing, no unexpected
    assert not result.missing_keys and not result.unexpected_keys
    full = torch.load(vgg16_bn_files["zip"], weights_only=True, mmap=True)
    for k, v in sd.items():
        assert torch.equal(v, full[f"features.{k}"]), k
    # a frozen feature extractor: [N, 512, 7, 7] for 224x224, same values as the full model's backbone
    ref = build_module(vgg_spec("vgg16_bn"))
    ref.load_state_dict(full)
    for p in vgg.features.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = vgg.features.eval()(x)
        assert feats.shape == (1, 512, 7, 7)
        assert torch.equal(feats, ref.features.eval()(x))
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["ckptool.extract.prefix"] == "features"
    # the same as a torch .pth, from the legacy file (no num_batches_tracked there, as in torchvision's)
    pth = tmp_path / "vgg16_bn_features.pth"
    r = cli("extract", vgg16_bn_files["legacy"], "--prefix", "features", "-o", pth)
    assert r.exit_code == 0, r.stderr
    legacy = torch.load(pth, weights_only=True)
    assert len(legacy) == 13 * 2 + 13 * 4
    result = build_module(vgg_spec("vgg16_bn")).features.load_state_dict(legacy, strict=False)
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    assert all(torch.equal(v, sd[k]) for k, v in legacy.items())


@pytest.mark.slow
def test_vgg16_bn_legacy_and_prefix_boundary(vgg16_bn_files: dict[str, Path], tmp_path: Path) -> None:
    res = extract(vgg16_bn_files["legacy"], "features.1", tmp_path / "bn1.safetensors")
    # features.1 is bn1_1 (4 tensors in the legacy file: no num_batches_tracked); never features.10/11/...
    assert sorted(res.names.values()) == ["bias", "running_mean", "running_var", "weight"]
    assert all(k.startswith("features.1.") for k in res.names)
    res = extract(vgg16_bn_files["legacy"], "classifier.", tmp_path / "head.safetensors", keep_prefix=True)
    assert list(res.names.values()) == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert load_file(tmp_path / "head.safetensors")["classifier.6.weight"].shape == (1000, 4096)


@pytest.mark.slow
def test_streamed_peak_rss(vgg16_bn_files: dict[str, Path], tmp_path: Path) -> None:
    """Streamed: extracting 59 MB from the 553 MB file never holds the file (or the 59 MB) in memory."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(r.returncode)"
    )
    out = tmp_path / "f.safetensors"
    cmd = [sys.executable, "-c", wrapper, sys.executable, "-m", "ckptool", "extract", str(vgg16_bn_files["zip"])]
    r = subprocess.run([*cmd, "--prefix", "features", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    peak_mib = int(r.stdout.strip().splitlines()[-1])
    assert out.stat().st_size > 58_000_000
    assert peak_mib < 120, f"peak RSS {peak_mib} MiB"


def test_extract_safetensors_is_torch_free(tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ckptool", "extract", str(FIX / "tiny_vgg.pth"),
         "--prefix", "features", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "ckptool.extract" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert out.exists()


# ------------------------------------------------------------------------------------------- forms
@pytest.mark.parametrize(
    ("fixture", "wrapper"),
    [("tiny_vgg.pth", None), ("tiny_vgg_legacy.pth", None), ("tiny_vgg_dp.pth", "module."),
     ("tiny_train.ckpt", "model."), ("tiny_vgg.safetensors", None)],
)  # fmt: skip
def test_every_form_loads_into_features(fixture: str, wrapper: str | None, tmp_path: Path) -> None:
    out = tmp_path / "features.safetensors"
    res = extract(FIX / fixture, "features", out)
    assert res.wrapper_prefix == wrapper
    if wrapper:
        assert any(repr(wrapper) in n for n in res.notes)
    sd = load_file(out)
    feats = tiny_features()
    strict = fixture != "tiny_vgg_legacy.pth"  # legacy BN has no num_batches_tracked, as torchvision's 2017 files
    result = feats.load_state_dict(sd, strict=strict)
    assert not result.unexpected_keys
    assert [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] == []
    orig = _original_features()
    for k, v in sd.items():
        assert torch.equal(v, orig[k]), k


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_pth_output_loads_with_weights_only(suffix: str, tmp_path: Path) -> None:
    out = tmp_path / f"features{suffix}"
    res = extract(FIX / "tiny_train.ckpt", "features", out)
    assert res.format == "torch-zip" and res.verified
    sd = torch.load(out, weights_only=True)
    feats = tiny_features()
    result = feats.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    orig = _original_features()
    assert list(sd) == list(orig)  # file order kept
    for k, v in sd.items():
        assert torch.equal(v, orig[k]), k


def test_nested_checkpoint_and_key(tmp_path: Path) -> None:
    res = extract(FIX / "tiny_train.ckpt", "classifier", tmp_path / "head.safetensors", key="state_dict")
    assert res.state_dict_key == "state_dict" and res.tensors == 6
    assert set(load_file(tmp_path / "head.safetensors")) == {f"{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}


def test_prefix_including_the_wrapper(tmp_path: Path) -> None:
    res = extract(FIX / "tiny_vgg_dp.pth", "module.features.", tmp_path / "f.safetensors")
    assert res.prefix == "features" and res.names["module.features.0.weight"] == "0.weight"


def test_keep_prefix_loads_into_the_full_model_non_strict(cli, tmp_path: Path) -> None:
    out = tmp_path / "kept.safetensors"
    r = cli("extract", FIX / "tiny_vgg_dp.pth", "-p", "features", "-o", out, "--keep-prefix")
    assert r.exit_code == 0, r.stderr
    assert "features.0.weight (prefix kept)" in r.stdout and "module." in r.stdout
    sd = load_file(out)
    assert all(k.startswith("features.") for k in sd)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = tiny_features()
            self.classifier = nn.Linear(784, 10)

    result = Model().load_state_dict(sd, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) == {"classifier.weight", "classifier.bias"}


# ------------------------------------------------------------------------------------------- errors
def test_no_match_names_what_is_there(cli, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    r = cli("extract", FIX / "tiny_train.ckpt", "--prefix", "feature", "-o", out)
    assert r.exit_code == 2
    assert "no tensor under 'feature'" in r.stderr and "features (14 tensors)" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_existing_output_needs_force(cli, tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    out.write_bytes(b"keep me")
    r = cli("extract", FIX / "tiny_vgg.pth", "--prefix", "features", "-o", out)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = cli("extract", FIX / "tiny_vgg.pth", "--prefix", "features", "-o", out, "--force")
    assert r.exit_code == 0, r.stderr
    assert len(load_file(out)) == 14
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]


def test_usage_errors(cli, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="output format"):
        output_format(tmp_path / "out.npz")
    r = cli("extract", FIX / "tiny_vgg.pth", "--prefix", "features", "-o", tmp_path / "out.npz")
    assert r.exit_code == 2 and "OUT.safetensors" in r.stderr
    r = cli("extract", FIX / "tiny_vgg.pth", "--prefix", " ", "-o", tmp_path / "out.safetensors")
    assert r.exit_code == 2 and "--prefix is empty" in r.stderr
    r = cli("extract", tmp_path / "missing.pth", "--prefix", "features", "-o", tmp_path / "out.safetensors")
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = cli("extract", FIX / "tiny_vgg.pth", "--prefix", "features")
    assert r.exit_code == 2  # -o is required
    with pytest.raises(KeyNotFoundError):
        extract(FIX / "tiny_vgg.pth", "features.99", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_output_is_not_the_input(tmp_path: Path) -> None:
    src = tmp_path / "w.safetensors"
    src.write_bytes((FIX / "tiny_vgg.safetensors").read_bytes())
    with pytest.raises(UsageError, match="input file itself"):
        extract(src, "features", src, force=True)
    assert src.read_bytes() == (FIX / "tiny_vgg.safetensors").read_bytes()


def test_script_json(script, tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    r = script("extract", FIX / "tiny_train.ckpt", "--prefix", "features", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["output"] == os.fspath(out) and d["tensors"] == 14 and d["wrapper_prefix"] == "model."
    assert d["format"] == "safetensors" and d["prefix"] == "features"
    r = script("extract", FIX / "tiny_train.ckpt", "--prefix", "features", "-o", out)
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr
