"""ckptool diff: keys, shapes, dtypes and values of two files, across formats, streamed and torch-free."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from factory import make_onnx, save_sd, tricky_state_dict
from safetensors.torch import save_file

from ckptool import open_checkpoint
from ckptool.convert.safetensors_writer import export_safetensors
from ckptool.diff import diff

diffmod = importlib.import_module("ckptool.diff")  # the module (ckptool.diff is the API function)


def run_diff(a: Path, b: Path, **kw: object) -> diffmod.DiffReport:
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        return diff(ca, cb, **kw)  # type: ignore[arg-type]


def sd_pair(tmp_path: Path, change: dict[str, torch.Tensor]) -> tuple[Path, Path, OrderedDict[str, torch.Tensor]]:
    sd = tricky_state_dict()
    a = save_sd(sd, tmp_path / "a.pth")
    sd2 = OrderedDict((k, v.clone()) for k, v in sd.items())
    for k, v in change.items():
        if k.startswith("-"):
            del sd2[k[1:]]
        else:
            sd2[k] = v
    b = save_sd(sd2, tmp_path / "b.pth")
    return a, b, sd


def test_identical_across_formats(tmp_path: Path) -> None:
    sd = tricky_state_dict()
    a = save_sd(sd, tmp_path / "a.pth")
    with open_checkpoint(a) as ck:
        export_safetensors(ck, tmp_path / "a.safetensors")
    r = run_diff(a, tmp_path / "a.safetensors")
    assert r.identical and not r.only_in_a and not r.only_in_b
    assert r.counts["identical"] == len(sd) and r.max_abs_diff == 0.0
    assert r.format_a == "torch-zip" and r.format_b == "safetensors"


def test_pth_against_onnx(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "fc.bias": np.zeros(5, np.float32)}
    onnx_path = make_onnx(tmp_path / "m.onnx", arrays)
    a = save_sd(OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), tmp_path / "m.pth")
    assert run_diff(a, onnx_path).identical
    arrays["fc.bias"] = arrays["fc.bias"] + 0.5
    onnx2 = make_onnx(tmp_path / "m2.onnx", arrays)
    r = run_diff(a, onnx2)
    bad = r.differences()
    assert [t.name for t in bad] == ["fc.bias"] and bad[0].max_abs_diff == pytest.approx(0.5)


def test_one_changed_element(tmp_path: Path) -> None:
    base = tricky_state_dict()["base"].clone()
    base[17] += 1e-3
    a, b, _ = sd_pair(tmp_path, {"base": base})
    r = run_diff(a, b)
    assert not r.identical
    (t,) = r.differences()
    assert t.name == "base" and t.status == "different" and t.mismatched == 1
    assert t.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    loose = run_diff(a, b, atol=1e-2)
    assert loose.identical and [x.status for x in loose.tensors if x.name == "base"] == ["close"]
    tight = run_diff(a, b, atol=1e-4)
    assert not tight.identical and tight.differences()[0].mismatched == 1


def test_keys_shapes_dtypes(tmp_path: Path) -> None:
    sd = tricky_state_dict()
    a, b, _ = sd_pair(
        tmp_path,
        {"-i8": torch.empty(0), "extra.w": torch.ones(2), "fp16": sd["fp16"].float(), "f64": torch.zeros(2, 2)},
    )
    r = run_diff(a, b)
    assert r.only_in_a == ["i8"] and r.only_in_b == ["extra.w"]
    by = {t.name: t for t in r.tensors}
    assert by["f64"].status == "shape" and by["f64"].max_abs_diff is None
    assert by["fp16"].status == "dtype" and by["fp16"].max_abs_diff == 0.0  # same values, other dtype
    assert not r.identical and r.counts["dtype"] == 1 and r.counts["shape"] == 1


def test_bits_nan_and_signed_zero(tmp_path: Path) -> None:
    x = torch.tensor([0.0, 1.0, float("nan"), float("inf"), -float("inf")])
    y = x.clone()
    y[0] = -0.0
    r = run_diff(save_sd({"x": x}, tmp_path / "a.pth"), save_sd({"x": y}, tmp_path / "b.pth"))
    (t,) = r.tensors
    assert t.status == "different" and t.mismatched == 1 and t.max_abs_diff == 0.0  # bit-exact by default
    r = run_diff(tmp_path / "a.pth", tmp_path / "b.pth", atol=1e-9)
    assert r.identical and r.tensors[0].status == "close"  # NaN matches NaN, inf matches inf
    z = x.clone()
    z[1] = float("nan")
    r = run_diff(tmp_path / "a.pth", save_sd({"x": z}, tmp_path / "c.pth"), atol=1.0)
    (t,) = r.tensors
    assert t.status == "different" and t.nan_mismatch == 1 and math.isinf(t.max_abs_diff or 0)
    assert r.to_dict()["tensors"][0]["max_abs_diff"] == math.inf  # the CLI's JSON renderer writes "inf"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_low_precision_values(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=g).to(dtype)
    y = (x.float() * 1.25).to(dtype)
    r = run_diff(save_sd({"x": x}, tmp_path / "a.pth"), save_sd({"x": y}, tmp_path / "b.pth"))
    want = (x.double() - y.double()).abs().max().item()
    assert r.tensors[0].max_abs_diff == pytest.approx(want)
    assert r.tensors[0].mismatched == int(
        (
            x.view(torch.uint8 if x.element_size() == 1 else torch.int16)
            != y.view(torch.uint8 if x.element_size() == 1 else torch.int16)
        ).sum()
    )


def test_chunked_views_and_mixed_dtypes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks force the re-chunking path: strided views against contiguous copies, fp16 vs fp32."""
    monkeypatch.setattr(diffmod, "ELEMENTS", 7)
    g = torch.Generator().manual_seed(0)
    m = torch.randn(9, 13, generator=g)
    a = save_sd(OrderedDict(t=m.t(), h=m[:, 2:].half(), s=m[::2]), tmp_path / "a.pth")
    m2 = m.clone()
    m2[4, 5] += 2.0
    b_sd = {"t": m2.t().contiguous(), "h": m2[:, 2:].float().contiguous(), "s": m2[::2].contiguous()}
    save_file(b_sd, tmp_path / "b.safetensors")
    r = run_diff(a, tmp_path / "b.safetensors")
    by = {t.name: t for t in r.tensors}
    assert by["t"].status == "different" and by["t"].mismatched == 1 and by["t"].max_abs_diff == pytest.approx(2.0)
    assert by["s"].status == "different" and by["s"].mismatched == 1
    want = (m[:, 2:].half().double() - m2[:, 2:].double()).abs().max().item()
    assert by["h"].status == "dtype" and by["h"].max_abs_diff == pytest.approx(want)


def test_prefix_matching(tmp_path: Path) -> None:
    sd = OrderedDict((f"features.{i}.weight", torch.randn(3)) for i in range(3))
    a = save_sd(OrderedDict((f"module.{k}", v) for k, v in sd.items()), tmp_path / "dp.pth")
    b = save_sd(sd, tmp_path / "plain.pth")
    r = run_diff(a, b)
    assert r.identical and r.prefix_a == "module." and r.prefix_b == ""
    assert r.tensors[0].name == "module.features.0.weight" and r.tensors[0].name_b == "features.0.weight"
    assert "module." in r.notes[0]
    c = save_sd(OrderedDict((k.removeprefix("features."), v) for k, v in sd.items()), tmp_path / "sub.pth")
    r = run_diff(a, c)  # module.features.0.weight against 0.weight
    assert r.identical and r.prefix_a == "module.features."


def test_no_common_names(tmp_path: Path) -> None:
    a = save_sd({"a.w": torch.ones(2)}, tmp_path / "a.pth")
    b = save_sd({"onnx::Conv_12": torch.ones(2)}, tmp_path / "b.pth")
    r = run_diff(a, b)
    assert not r.identical and r.no_common_names and "no tensor names in common" in r.notes[-1]


def test_only_and_exclude(tmp_path: Path) -> None:
    base = tricky_state_dict()["base"].clone()
    base[0] = 99.0
    a, b, _ = sd_pair(tmp_path, {"base": base, "extra": torch.ones(1)})
    assert run_diff(a, b, exclude=["base", "extra"]).identical
    r = run_diff(a, b, only=["view.*"])
    assert r.identical and {t.name for t in r.tensors} == {"view.offset", "view.strided", "view.2d"}


# -- CLI ----------------------------------------------------------------------------------------------------


def test_cli_identical_and_different(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    base = tricky_state_dict()["base"].clone()
    base[3] += 0.25
    a, b, _ = sd_pair(tmp_path, {"base": base})
    res = cli("diff", a, a)
    assert res.exit_code == 0 and "identical: all" in res.stdout and res.stderr == ""
    res = cli("diff", a, b)
    assert res.exit_code == 1
    assert "base" in res.stdout and "different" in res.stdout and "0.25" in res.stdout
    res = cli("diff", a, b, "--atol", "0.3", "--json")
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert d["identical"] is True and d["counts"]["close"] == 1 and d["atol"] == 0.3
    res = cli("diff", a, b, "--json")
    d = json.loads(res.stdout)
    assert res.exit_code == 1 and d["identical"] is False
    assert [t["name"] for t in d["tensors"] if t["status"] != "identical"] == ["base"]


def test_cli_key_and_errors(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    sd = tricky_state_dict()
    train = save_sd({"epoch": 1, "model": sd, "ema": tricky_state_dict(seed=5)}, tmp_path / "train.ckpt")
    plain = save_sd(sd, tmp_path / "plain.pth")
    assert cli("diff", train, plain).exit_code == 0  # the located state_dict ("model")
    assert cli("diff", train, plain, "--key-a", "ema").exit_code == 1
    res = cli("diff", train, plain, "--key", "ema")  # --key applies to both torch files
    assert res.exit_code == 2 and "'ema'" in res.stderr and "plain.pth" in res.stderr
    train2 = save_sd(
        {"epoch": 2, "model": tricky_state_dict(seed=9), "ema": tricky_state_dict(seed=5)}, tmp_path / "t2.ckpt"
    )
    assert cli("diff", train, train2).exit_code == 1
    assert cli("diff", train, train2, "--key", "ema").exit_code == 0
    res = cli("diff", plain, tmp_path / "missing.pth")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "missing.pth" in res.stderr
    res = cli("diff", plain, plain, "--atol", "-1")
    assert res.exit_code == 2
    res = cli("diff", plain, save_sd({"zzz": torch.ones(1)}, tmp_path / "z.pth"))
    assert res.exit_code == 1 and "no tensor names in common" in res.stderr


def test_script_and_torch_free(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    sd = tricky_state_dict()
    a = save_sd(sd, tmp_path / "a.pth")
    with open_checkpoint(a) as ck:
        export_safetensors(ck, tmp_path / "a.safetensors")
    r = script("diff", a, tmp_path / "a.safetensors")
    assert r.returncode == 0 and "identical" in r.stdout, r.stderr
    sd["bf16"] = sd["bf16"] * 2
    b = save_sd(sd, tmp_path / "b.pth")
    r = script("diff", a, b, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["counts"]["different"] == 1
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ckptool", "diff", str(a), str(tmp_path / "a.safetensors")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0
    assert not [line for line in r.stderr.splitlines() if line.rstrip().endswith((" torch", "| torch"))]


@pytest.mark.slow
def test_full_size_streamed(vgg16_bn_files: dict[str, Path], script) -> None:  # type: ignore[no-untyped-def]
    """The 553 MB zip against its legacy twin (no num_batches_tracked): values equal, keys differ."""
    r = script("diff", vgg16_bn_files["zip"], vgg16_bn_files["legacy"], "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 1 and d["counts"]["identical"] == 84 and len(d["only_in_a"]) == 13
    r = script("diff", vgg16_bn_files["zip"], vgg16_bn_files["legacy"], "--exclude", "*num_batches_tracked")
    assert r.returncode == 0, r.stdout


def test_pth_against_onnx_ignores_batchnorm_step_counters(tmp_path: Path) -> None:
    """torch's ONNX export has no num_batches_tracked: a .pth and its ONNX still diff as identical, with a
    note; a missing real weight still makes them different."""
    rng = np.random.default_rng(1)
    arrays = {"bn.weight": rng.standard_normal(4).astype(np.float32), "bn.running_var": np.ones(4, np.float32)}
    onnx_path = make_onnx(tmp_path / "bn.onnx", arrays)
    sd = OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items())
    sd["bn.num_batches_tracked"] = torch.tensor(5)
    a = save_sd(sd, tmp_path / "bn.pth")
    r = run_diff(a, onnx_path)
    assert r.identical and not r.only_in_a
    assert any("num_batches_tracked" in n for n in r.notes)
    sd["bn.extra"] = torch.ones(2)
    r2 = run_diff(save_sd(sd, tmp_path / "bn2.pth"), onnx_path)
    assert not r2.identical and r2.only_in_a == ["bn.extra"]
