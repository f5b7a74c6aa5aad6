"""ckptool parity, the comparison rule, and the runtime helpers it stands on (tensors_from_checkpoint, load_model)."""

from __future__ import annotations

import json
import math
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_fixtures import TINY, TinyVGG, calibrated, perturb_file, save, state_dict

from ckptool.errors import CkptError, KeyNotFoundError
from ckptool.formats import open_checkpoint
from ckptool.parity import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_STOL, RULE, compare, parse_shape
from ckptool.runtime import WeightsMismatchError, load_model, tensors_from_checkpoint


# ---------------------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------------------
def test_element_fails_only_when_beyond_all_tolerances() -> None:
    ref = np.array([[10.0, 0.001, 1.0]], dtype=np.float32)
    # 10.0 -> off by 0.005: beyond atol 1e-4, within rtol 1e-3 * 10 = 0.01: passes
    # 0.001 -> off by 5e-5: beyond rtol (5%), within atol: passes
    got = np.array([[10.005, 0.00105, 1.0]], dtype=np.float32)
    r = compare("y", ref, got, atol=1e-4, rtol=1e-3)
    assert r.passed and r.failed_elements == 0
    # 1.0 -> off by 0.002: beyond atol AND beyond 1e-3 * 1: fails
    got[0, 2] = 1.002
    r = compare("y", ref, got, atol=1e-4, rtol=1e-3)
    assert not r.passed and r.failed_elements == 1
    assert r.worst["index"] == [0, 0] or r.worst["index"] == [0, 2]  # the largest abs diff (10.0's or 1.0's)
    assert r.max_abs_diff == pytest.approx(0.005, rel=1e-3)


def test_minimum_tolerances_are_exact() -> None:
    ref = np.array([1.0, -2.0, 4.0, 0.5], dtype=np.float32)
    got = np.array([1.01, -2.0, 4.1, 0.5], dtype=np.float32)
    r = compare("y", ref, got, atol=0.0, rtol=0.0, stol=0.0)
    assert r.min_atol == pytest.approx(0.1, rel=1e-5)  # max abs diff
    assert r.min_rtol == pytest.approx(0.025, rel=1e-4)  # 0.1 / 4 = 0.025 > 0.01 / 1
    assert r.stol_needed == pytest.approx(0.1 / 4, rel=1e-4)  # the largest diff over the scale, max |ref| = 4
    assert compare("y", ref, got, atol=r.min_atol, rtol=0, stol=0).passed
    assert not compare("y", ref, got, atol=r.min_atol * 0.99, rtol=0, stol=0).passed
    assert compare("y", ref, got, atol=0, rtol=r.min_rtol, stol=0).passed
    assert not compare("y", ref, got, atol=0, rtol=r.min_rtol * 0.99, stol=0).passed
    assert compare("y", ref, got, atol=0, rtol=0, stol=r.stol_needed).passed
    assert not compare("y", ref, got, atol=0, rtol=0, stol=r.stol_needed * 0.99).passed
    # at rtol 0.02, 4.0's diff (0.1 > 0.08) still needs an atol of 0.1; 1.0's (0.01 < 0.02) does not
    r2 = compare("y", ref, got, atol=0.0, rtol=0.02, stol=0.0)
    assert r2.atol_at_rtol == pytest.approx(0.1, rel=1e-5)
    assert compare("y", ref, got, atol=r2.atol_at_rtol, rtol=0.02, stol=0.0).passed
    r3 = compare("y", ref, got, atol=0.05, rtol=0.0, stol=0.0)
    assert r3.rtol_at_atol == pytest.approx(0.025, rel=1e-4)  # only 4.0's diff exceeds atol 0.05
    # at stol 0.005 (0.02 of scale 4), 1.0's diff 0.01 is within it: only 4.0's needs atol 0.1
    r4 = compare("y", ref, got, atol=0.0, rtol=0.0, stol=0.005)
    assert r4.failed_elements == 1 and r4.atol_at_rtol == pytest.approx(0.1, rel=1e-5)


def test_scale_tolerance_passes_noise_on_near_zero_elements_of_a_large_output() -> None:
    """Issue 9's honest VGG16-BN features export: scale ~47.6, float32 noise of ~2.75e-4 on elements near 0."""
    rng = np.random.default_rng(0)
    ref = np.maximum(rng.standard_normal((1, 512, 7, 7)) * 8, 0).astype(np.float32)
    ref[0, 0, 0, 0] = 47.6
    ref.reshape(-1)[1:13] = np.float32(1e-3)  # 12 elements near zero in the reference...
    got = ref.copy()
    got.reshape(-1)[1:13] = np.float32(1e-3 + 2.75e-4)  # ...off by float32 noise: beyond atol and rtol * |ref|
    two_way = compare("features", ref, got, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL, stol=0.0)
    assert not two_way.passed and two_way.failed_elements == 12  # what failed on some CPUs
    r = compare("features", ref, got, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    assert r.passed and r.torch_max_abs == pytest.approx(47.6)
    assert r.stol_needed == pytest.approx(2.75e-4 / 47.6, rel=1e-2) and r.stol_needed < DEFAULT_STOL / 10
    # a real change of one element (1e-3 of the scale) still fails under the default rule
    got.reshape(-1)[100] += np.float32(47.6e-3)
    bad = compare("features", ref, got, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    assert not bad.passed and bad.failed_elements == 1


def test_scale_of_an_all_zero_output() -> None:
    ref = np.zeros((2, 3), np.float32)
    assert compare("y", ref, ref.copy(), atol=0, rtol=0).passed
    got = ref.copy()
    got[0, 0] = 1e-3  # no scale to hide behind: atol alone decides
    assert not compare("y", ref, got, atol=1e-4, rtol=1e-3).passed
    assert compare("y", ref, got, atol=2e-3, rtol=0).passed


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=20),
    st.lists(st.floats(-1, 1, width=32), min_size=20, max_size=20),
    st.floats(0, 0.5),
    st.floats(0, 0.5),
    st.sampled_from([0.0, 1e-4, 1e-3, 0.01]),
)
def test_rule_matches_its_definition(
    ref: list[float], noise: list[float], atol: float, rtol: float, stol: float
) -> None:
    b = np.array(ref, dtype=np.float32)
    a = (b + np.array(noise[: len(ref)], dtype=np.float32) * np.float32(0.3)).astype(np.float32)
    r = compare("y", b, a, atol=atol, rtol=rtol, stol=stol)
    b64 = b.astype(np.float64)
    d = np.abs(a.astype(np.float64) - b64)
    scale = np.abs(b64).max()
    expect_fail = int(np.sum((d > atol) & (d > rtol * np.abs(b64)) & (d > stol * scale)))
    assert r.failed_elements == expect_fail
    assert r.passed == (expect_fail == 0)
    # the reported minimum tolerances always pass on their own
    assert compare("y", b, a, atol=r.min_atol, rtol=0, stol=0).passed
    assert compare("y", b, a, atol=r.atol_at_rtol, rtol=rtol, stol=stol).passed
    if math.isfinite(r.rtol_at_atol):
        assert compare("y", b, a, atol=atol, rtol=r.rtol_at_atol, stol=stol).passed
    if math.isfinite(r.stol_needed):
        assert compare("y", b, a, atol=atol, rtol=rtol, stol=r.stol_needed).passed


def test_rule_text_names_all_three_tolerances() -> None:
    assert "atol" in RULE and "rtol * |torch|" in RULE and "stol * max|torch|" in RULE
    assert DEFAULT_STOL == 1e-4


def test_nan_and_inf() -> None:
    ref = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    assert compare("y", ref, ref.copy(), atol=0, rtol=0).passed  # NaN matches NaN, inf matches inf
    got = np.array([1.0, np.inf, 1.0], dtype=np.float32)
    r = compare("y", ref, got, atol=1e9, rtol=1e9)
    assert not r.passed and r.failed_elements == 1
    got = np.array([np.nan, -np.inf, 1.0], dtype=np.float32)
    assert not compare("y", ref, got, atol=1e9, rtol=1e9).passed


def test_topk_and_cosine() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 20)).astype(np.float32)
    r = compare("logits", ref, ref.copy(), atol=0, rtol=0)
    assert r.top1_agreement == 1.0 and r.top5_agreement == 1.0 and r.cosine == pytest.approx(1.0)
    got = ref.copy()
    got[0] = -got[0]  # sample 0's ranking reversed
    r = compare("logits", ref, got, atol=1e-4, rtol=1e-3)
    assert r.top1_agreement == pytest.approx(5 / 6) and r.top5_agreement == pytest.approx(5 / 6)
    assert r.cosine < 1.0
    feat = compare("features", np.ones((2, 3, 4, 4), np.float32), np.ones((2, 3, 4, 4), np.float32), atol=0, rtol=0)
    assert feat.top1_agreement is None and feat.top5_agreement is None  # not a classifier output
    few = compare("logits", ref[:, :3], ref[:, :3], atol=0, rtol=0)
    assert few.top1_agreement == 1.0 and few.top5_agreement is None


def test_parse_shape() -> None:
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("2x3x32x32") == (2, 3, 32, 32)
    for bad in ("1,3,a,4", "0,3,4,4", ""):
        with pytest.raises(CkptError):
            parse_shape(bad)


# ---------------------------------------------------------------------------------------------------
# tensors_from_checkpoint / load_model
# ---------------------------------------------------------------------------------------------------
def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tensors_views_shared_storage_bf16(tmp_path: Path, fmt: str) -> None:
    base = torch.arange(24, dtype=torch.float32)
    obj = OrderedDict(
        whole=base,
        view=base[4:10],  # a storage offset
        strided=base.view(4, 6).t(),  # non-contiguous
        bf16=torch.linspace(-3, 3, 7).to(torch.bfloat16),
        half=torch.linspace(-1, 1, 5).half(),
        long=torch.tensor([1, -2, 3]),
        scalar=torch.tensor(2.5),
    )
    p = save(obj, tmp_path / "t.pth", fmt)
    ck = open_checkpoint(p)
    got = tensors_from_checkpoint(ck)
    assert list(got) == list(obj)
    for k, v in obj.items():
        assert _same(got[k], v), k
    if fmt == "zip":  # the three views share one storage, as torch.load builds them
        ptr = got["whole"].untyped_storage().data_ptr()
        assert got["view"].untyped_storage().data_ptr() == ptr
        assert got["strided"].untyped_storage().data_ptr() == ptr
    sub = tensors_from_checkpoint(ck, ["long", "view"])
    assert list(sub) == ["long", "view"] and _same(sub["view"], obj["view"])
    with pytest.raises(KeyNotFoundError):
        tensors_from_checkpoint(ck, ["nope"])


def test_tensors_zero_copy_and_private(tmp_path: Path) -> None:
    p = save(OrderedDict(w=torch.arange(4096, dtype=torch.float32)), tmp_path / "z.pth")
    ck = open_checkpoint(p)
    t = tensors_from_checkpoint(ck)["w"]
    before = p.read_bytes()
    t += 1  # copy-on-write mapping: the tensor changes, the file does not
    assert t[0].item() == 1.0
    assert p.read_bytes() == before


def test_tensors_from_safetensors_and_onnx(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(6, dtype=torch.int64)}
    save_file(sd, tmp_path / "m.safetensors")
    got = tensors_from_checkpoint(open_checkpoint(tmp_path / "m.safetensors"))
    assert all(_same(got[k], v) for k, v in sd.items())

    import onnx
    from onnx import helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w"), helper.make_tensor("k", onnx.TensorProto.INT64, [3], [7, -8, 9])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    got = tensors_from_checkpoint(open_checkpoint(tmp_path / "m.onnx"))
    assert np.array_equal(got["w"].numpy(), w)
    assert got["k"].tolist() == [7, -8, 9]  # int64_data (a typed field, not raw_data): decoded


@pytest.fixture(scope="module")
def tiny_model() -> TinyVGG:
    return calibrated(TINY, 10)  # type: ignore[return-value]


def test_load_model_accepts_what_check_accepts(tmp_path: Path, tiny_model: TinyVGG) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = tiny_model(x)
    files = {
        "plain": save(state_dict(tiny_model), tmp_path / "plain.pth"),
        "dp": save(state_dict(tiny_model, prefix="module."), tmp_path / "dp.pth"),
        "legacy_bn": save(state_dict(tiny_model, legacy_bn=True), tmp_path / "legacy.pth", "legacy"),
        "lightning": save({"epoch": 1, "state_dict": state_dict(tiny_model, prefix="model.")}, tmp_path / "l.ckpt"),
        "half": save(OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in state_dict(tiny_model).items()), tmp_path / "h.pth"),
    }  # fmt: skip
    for kind, p in files.items():
        m = load_model(open_checkpoint(p), TINY)
        assert not m.training and not any(q.requires_grad for q in m.parameters())
        with torch.no_grad():
            y = m(x)
        tol = 5e-2 if kind == "half" else 0
        assert torch.allclose(y, want, atol=tol, rtol=0), kind
        assert m.features[0].weight.dtype == torch.float32


def test_load_model_misfit_shows_check_findings(tmp_path: Path, tiny_model: TinyVGG) -> None:
    p = save(state_dict(tiny_model), tmp_path / "t.pth")
    with pytest.raises(WeightsMismatchError) as e:
        load_model(open_checkpoint(p), TINY, arch_args={"num_classes": "7"})
    msg = str(e.value)
    assert e.value.exit_code == 2
    assert "do not fit" in msg and "classifier.3.weight" in msg and "[10, 32]" in msg
    assert "ckptool check" in msg


# ---------------------------------------------------------------------------------------------------
# ckptool parity (tiny model: fast; the full-size runs are in tests/convert/test_onnx_export.py)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyVGG) -> tuple[Path, Path]:
    from ckptool.convert.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("parity")
    ckp = save(state_dict(tiny_model), d / "tiny.pth")
    r = export_onnx(open_checkpoint(ckp), d / "tiny.onnx", arch=TINY)
    assert r.written and r.passed
    return ckp, d / "tiny.onnx"


def _onnx_offset(onnx_path: Path, name: str) -> int:
    t = open_checkpoint(onnx_path)[name]
    assert t.storage is not None and t.storage.source is not None
    return t.storage.source.offset


def test_parity_passes_with_metrics(cli, tiny_pair: tuple[Path, Path]) -> None:
    ckp, om = tiny_pair
    r = cli("parity", ckp, om, "--arch", TINY, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["passed"] is True and d["atol"] == DEFAULT_ATOL and d["rtol"] == DEFAULT_RTOL
    (o,) = d["outputs"]
    assert o["name"] == "logits" and o["shape"] == [4, 10] and o["top1_agreement"] == 1.0
    assert o["torch_max_abs"] > 0.05  # calibrated: real activations, not near-zero logits
    assert o["max_abs_diff"] < 1e-5 and o["cosine_similarity"] > 0.99999
    for k in ("max_rel_diff", "mean_abs_diff", "min_atol", "min_rtol", "top5_agreement"):
        assert k in o
    assert d["inputs"] == {"input": [2, 3, 32, 32]}
    # the same seed gives the same numbers; another seed other inputs
    again = json.loads(cli("parity", ckp, om, "--arch", TINY, "--json").stdout)
    assert again["outputs"] == d["outputs"]
    other = json.loads(cli("parity", ckp, om, "--arch", TINY, "--json", "--seed", "5").stdout)
    assert other["outputs"][0]["worst"] != d["outputs"][0]["worst"]
    # --samples / --batch: a dynamic batch dimension takes any batch
    r = cli("parity", ckp, om, "--arch", TINY, "--json", "--samples", "5", "--batch", "3")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["samples"] == 5 and d["outputs"][0]["shape"] == [5, 10]


def test_parity_fails_on_a_tampered_onnx_weight(cli, tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    ckp, om = tiny_pair
    bad = tmp_path / "tampered.onnx"
    shutil.copy(om, bad)
    perturb_file(bad, _onnx_offset(bad, "features.0.weight"), 0.05)
    r = cli("parity", ckp, bad, "--arch", TINY)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "parity FAILED" in r.stdout and "would pass with --atol" in r.stdout
    d = json.loads(cli("parity", ckp, bad, "--arch", TINY, "--json").stdout)
    assert d["passed"] is False and d["outputs"][0]["failed_elements"] > 0
    assert d["outputs"][0]["max_abs_diff"] > 10 * DEFAULT_ATOL
    # ...and passes when told to tolerate that much (the reported minimum)
    need = d["outputs"][0]["min_atol"]
    assert cli("parity", ckp, bad, "--arch", TINY, "--atol", str(need * 1.01)).exit_code == 0


def test_parity_fails_on_a_tampered_checkpoint(cli, tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    ckp, om = tiny_pair
    bad = tmp_path / "tampered.pth"
    shutil.copy(ckp, bad)
    t = open_checkpoint(bad)["classifier.3.bias"]
    assert t.storage is not None and t.storage.source is not None
    perturb_file(bad, t.storage.source.offset, 0.01)  # one logit's bias moves by 0.01
    r = cli("parity", bad, om, "--arch", TINY, "--json")
    assert r.exit_code == 1
    o = json.loads(r.stdout)["outputs"][0]
    assert o["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)
    assert o["failed_elements"] == 4  # that logit, in each of the 4 samples


def test_parity_fails_on_a_small_but_real_tampering(cli, tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """One first-layer weight moved by 0.002 (~1% of its layer's range) moves the logits by ~1e-3 of their scale:
    10x the scale tolerance, so the scale-aware rule still catches it."""
    ckp, om = tiny_pair
    bad = tmp_path / "tampered_small.pth"
    shutil.copy(ckp, bad)
    t = open_checkpoint(bad)["features.0.weight"]
    assert t.storage is not None and t.storage.source is not None
    perturb_file(bad, t.storage.source.offset, 0.002)
    r = cli("parity", bad, om, "--arch", TINY, "--json")
    assert r.exit_code == 1, r.stdout
    d = json.loads(r.stdout)
    o = d["outputs"][0]
    assert d["stol"] == DEFAULT_STOL and d["rule"] == RULE and o["failed_elements"] > 0
    assert o["stol_needed"] > 2 * DEFAULT_STOL  # beyond the scale tolerance with margin, not by a hair
    assert cli("parity", bad, om, "--arch", TINY, "--stol", str(o["stol_needed"] * 1.01)).exit_code == 0


def test_parity_errors(cli, tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    ckp, om = tiny_pair
    r = cli("parity", ckp, om, "--arch", "vgg99")
    assert r.exit_code == 2 and "unknown architecture" in r.stderr and "Traceback" not in r.stderr
    r = cli("parity", ckp, om, "--arch", "vgg11_bn")
    assert r.exit_code == 2 and "do not fit vgg11_bn" in r.stderr
    r = cli("parity", ckp, om, "--arch", TINY, "--input-shape", "1,3,64,64")
    assert r.exit_code == 2 and "fixed to" in r.stderr
    r = cli("parity", ckp, ckp, "--arch", TINY)
    assert r.exit_code == 2 and "onnxruntime cannot load" in r.stderr
    r = cli("parity", ckp, tmp_path / "missing.onnx", "--arch", TINY)
    assert r.exit_code == 2 and "missing.onnx" in r.stderr


def test_parity_with_the_onnx_file_as_the_checkpoint(cli, tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, om = tiny_pair
    # an ONNX export keeps every weight under its state_dict name: it is a checkpoint of the same model too
    r = cli("parity", om, om, "--arch", TINY, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["outputs"][0]["max_abs_diff"] < 1e-5


def test_parity_script(script, tiny_pair: tuple[Path, Path]) -> None:
    ckp, om = tiny_pair
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    r = script("parity", ckp, om, "--arch", TINY, env=env)
    assert r.returncode == 0, r.stderr
    assert "parity passed" in r.stdout and "logits" in r.stdout
    r = script("parity", ckp, om, "--arch", TINY, "--atol", "0", "--rtol", "0", "--json", env=env)
    d = json.loads(r.stdout)
    assert r.returncode == (0 if d["passed"] else 1)
