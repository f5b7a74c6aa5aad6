"""ckptool export --onnx: strict load, torch.onnx (dynamo) export, onnx.checker, parity; atomic output.

One full-size vgg16_bn (calibrated BatchNorm, torchvision's legacy form without num_batches_tracked) is
exported once per session; everything else uses TinyVGG (a module:callable architecture), which exports in
about a second.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnx_fixtures import TINY, calibrated, perturb_file, restore_file, save, state_dict

import ckptool.convert.onnx_export as onnx_export
from ckptool.convert.onnx_export import DEFAULT_OPSET, export_onnx
from ckptool.errors import CkptError, OutputExistsError
from ckptool.formats import open_checkpoint
from ckptool.parity import InputShapeError

TESTS = Path(__file__).resolve().parent.parent  # the builders (onnx_fixtures) the subprocesses import
ENV = {"PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------------------------------------------
# full size: vgg16_bn, once
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vgg16_calibrated(big_dir: Path) -> dict[str, object]:
    model = calibrated("vgg16_bn", 1000)
    path = save(state_dict(model, legacy_bn=True), big_dir / "vgg16_bn_calibrated_legacy.pth", "legacy")
    return {"model": model, "path": path}


@pytest.fixture(scope="session")
def vgg16_onnx(vgg16_calibrated: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`ckptool export --onnx` through the installed script, as a user runs it."""
    from proc import run_script

    d = tmp_path_factory.mktemp("vgg16_onnx")
    out = d / "vgg16_bn.onnx"
    r = run_script("export", vgg16_calibrated["path"], "--onnx", out, "--arch", "vgg16_bn", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    return {"dir": d, "out": out, "json": json.loads(r.stdout), "stderr": r.stderr}


@pytest.mark.slow
def test_vgg16_bn_full_size_export(vgg16_onnx: dict[str, object], vgg16_calibrated: dict[str, object]) -> None:
    d, out, res = vgg16_onnx["dir"], vgg16_onnx["out"], vgg16_onnx["json"]
    assert isinstance(d, Path) and isinstance(out, Path) and isinstance(res, dict)
    assert _files(d) == ["vgg16_bn.onnx"]  # self-contained: no .data, no temporary leftovers
    assert vgg16_onnx["stderr"] == ""  # the exporter's chatter stays off the user's streams
    assert res["written"] and res["passed"] and res["checked"] and res["verified"]
    assert res["opset"] == DEFAULT_OPSET and res["external_data"] is False
    assert res["output_shapes"] == [["batch", 1000]]
    p = res["parity"]
    assert p["passed"] and p["samples"] == 2 and p["inputs"] == {"input": [2, 3, 224, 224]}
    assert p["outputs"][0]["torch_max_abs"] > 0.05  # calibrated BatchNorm: realistic logits
    onnx.checker.check_model(str(out), full_check=True)
    m = onnx.load(str(out), load_external_data=False)
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 224, 224]
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {DEFAULT_OPSET}
    # every weight under its state_dict name, bit for bit (BatchNorm not folded into the convolutions)
    sd = vgg16_calibrated["model"].state_dict()  # type: ignore[attr-defined]
    inits = {i.name: i for i in m.graph.initializer}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert np.array_equal(numpy_helper.to_array(inits[k]), v.numpy()), k
    # a dynamic batch: onnxruntime runs batch 3, and agrees with torch
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    (y,) = _session(out).run(None, {"input": x})
    with torch.no_grad():
        want = vgg16_calibrated["model"](torch.from_numpy(x)).numpy()  # type: ignore[operator]
    assert y.shape == (3, 1000) and np.abs(y - want).max() < 1e-4


@pytest.mark.slow
def test_vgg16_bn_tampered_onnx_fails_parity(
    vgg16_onnx: dict[str, object], vgg16_calibrated: dict[str, object], cli
) -> None:
    out, src = vgg16_onnx["out"], vgg16_calibrated["path"]
    assert isinstance(out, Path)
    t = open_checkpoint(out)["features.0.weight"]
    assert t.storage is not None and t.storage.source is not None
    off = t.storage.source.offset
    old = perturb_file(out, off, 0.05)  # one of 138 million weights, in the ONNX file
    try:
        r = cli("parity", src, out, "--arch", "vgg16_bn", "--samples", "2", "--json")
    finally:
        restore_file(out, off, old)
    assert r.exit_code == 1, r.stderr
    o = json.loads(r.stdout)["outputs"][0]
    assert not o["passed"] and o["max_abs_diff"] > 1e-3


@pytest.mark.slow
def test_vgg16_bn_features_only(vgg16_calibrated: dict[str, object], tmp_path: Path, cli) -> None:
    out = tmp_path / "features.onnx"
    r = cli("export", vgg16_calibrated["path"], "--onnx", out, "--arch", "vgg16_bn", "--features-only", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["output_names"] == ["features"] and d["output_shapes"] == [["batch", 512, 7, 7]]
    assert d["parity"]["outputs"][0]["top1_agreement"] is None  # not a classifier output
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (y,) = _session(out).run(["features"], {"input": x})
    assert y.shape == (2, 512, 7, 7)
    # parity recognises a features model by its output name
    r = cli("parity", vgg16_calibrated["path"], out, "--arch", "vgg16_bn", "--samples", "1", "--json")
    assert r.exit_code == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["features_only"] is True and p["outputs"][0]["shape"] == [1, 512, 7, 7]


# ---------------------------------------------------------------------------------------------------
# tiny model: behaviour
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny_src")
    model = calibrated(TINY, 10)
    return {
        "zip": save(state_dict(model), d / "tiny.pth"),
        "dp_legacy": save(state_dict(model, prefix="module.", legacy_bn=True), d / "tiny_dp_legacy.pth", "legacy"),
        "features": save(state_dict(model.features), d / "tiny_features.pth"),  # type: ignore[arg-type]
    }


def test_prefix_and_legacy_bn_forms_export(tiny: dict[str, Path], tmp_path: Path) -> None:
    r = export_onnx(open_checkpoint(tiny["dp_legacy"]), tmp_path / "m.onnx", arch=TINY)
    assert r.written and r.passed and r.input_shape == [1, 3, 32, 32]  # the architecture's declared input
    assert r.parity is not None and r.parity.outputs[0].torch_max_abs > 0.05
    names = {i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert "features.0.weight" in names and not any(n.startswith("module.") for n in names)


def test_backbone_only_checkpoint_features_only(tiny: dict[str, Path], tmp_path: Path) -> None:
    r = export_onnx(open_checkpoint(tiny["features"]), tmp_path / "f.onnx", arch=TINY, features_only=True)
    assert r.written and r.passed and r.output_names == ["features"]
    assert r.output_shapes == [["batch", 16, 8, 8]]
    # a registry backbone identified by --arch auto works the same way
    from ckptool.arch.vgg import vgg_spec
    from ckptool.runtime import build_module

    feats = build_module(vgg_spec("vgg11_bn", 10)).features
    src = save(state_dict(feats), tmp_path / "vgg11_features.pth")
    r = export_onnx(
        open_checkpoint(src), tmp_path / "v.onnx", arch="auto", features_only=True, input_shape=(1, 3, 64, 64)
    )
    assert r.written and r.arch == "vgg11_bn" and r.output_shapes == [["batch", 512, 2, 2]]
    r = export_onnx(open_checkpoint(src), tmp_path / "w.onnx", arch="auto", input_shape=(1, 3, 64, 64))
    assert r.written and r.features_only and r.output_names == ["features"] and "backbone" in r.notes[0]


@pytest.mark.parametrize("opset", [18, 20, 23])
def test_opsets_run_in_onnxruntime(tiny: dict[str, Path], tmp_path: Path, opset: int) -> None:
    out = tmp_path / f"o{opset}.onnx"
    r = export_onnx(open_checkpoint(tiny["zip"]), out, arch=TINY, opset=opset)
    assert r.written and r.passed  # parity ran the file on onnxruntime
    m = onnx.load(str(out))
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    for n in (1, 5):
        (y,) = _session(out).run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})
        assert y.shape == (n, 10)


def test_bad_opset(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CkptError, match="--opset 13 is not supported"):
        export_onnx(open_checkpoint(tiny["zip"]), tmp_path / "x.onnx", arch=TINY, opset=13)
    assert _files(tmp_path) == []


def test_external_data(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ext.onnx"
    r = export_onnx(open_checkpoint(tiny["zip"]), out, arch=TINY, external_data=True)
    assert r.written and r.passed and r.external_data
    assert _files(tmp_path) == ["ext.onnx", "ext.onnx.data"]
    assert r.data_nbytes == (tmp_path / "ext.onnx.data").stat().st_size > 0
    m = onnx.load(str(out), load_external_data=False)
    ext = [i for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert ext and all(len(i.raw_data) == 0 for i in ext)
    for i in ext:
        info = {e.key: e.value for e in i.external_data}
        assert info["location"] == "ext.onnx.data" and int(info["offset"]) % 4096 == 0
    onnx.checker.check_model(str(out), full_check=True)
    # ckptool reads it back (through the external file) as the same weights
    src = open_checkpoint(tiny["zip"])
    back = open_checkpoint(out)
    weights = [t for t in back.tensors if not t.constant]  # Constant nodes hold the exporter's own values
    dropped = {t.name for t in src.tensors} - {t.name for t in weights}
    assert dropped and all(n.endswith("num_batches_tracked") for n in dropped)  # the exporter drops only these
    for t in weights:
        assert back.read_bytes(t) == src.read_bytes(src[t.name]), t.name
    # an existing OUT.data is refused too, before any work
    (tmp_path / "other.onnx.data").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        export_onnx(open_checkpoint(tiny["zip"]), tmp_path / "other.onnx", arch=TINY, external_data=True)
    assert not (tmp_path / "other.onnx").exists()


def test_parity_failure_writes_nothing(tiny: dict[str, Path], tmp_path: Path, monkeypatch, cli) -> None:
    """An exporter that got a weight wrong (simulated: one initializer changed before writing) fails the
    parity check: exit 1, says by how much, and leaves no file behind."""
    real = onnx_export._tidy

    def tidy_and_break(model):  # type: ignore[no-untyped-def]
        note = real(model)
        t = model.graph.initializers["features.0.weight"].const_value
        arr = np.array(t.numpy(), copy=True)
        arr.flat[0] += 0.05
        import onnx_ir as ir

        model.graph.initializers["features.0.weight"].const_value = ir.Tensor(arr, name="features.0.weight")
        return note

    monkeypatch.setattr(onnx_export, "_tidy", tidy_and_break)
    out = tmp_path / "bad.onnx"
    r = cli("export", tiny["zip"], "--onnx", out, "--arch", TINY)
    assert r.exit_code == 1, r.stderr
    assert "parity FAILED" in r.stdout and "NOT written" in r.stdout and "would pass with --atol" in r.stdout
    assert _files(tmp_path) == []
    r = cli("export", tiny["zip"], "--onnx", out, "--arch", TINY, "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 1 and d["passed"] is False and d["written"] is False
    assert d["parity"]["outputs"][0]["max_abs_diff"] > 1e-3
    # --no-verify skips the comparison: the (wrong) model is written, as asked
    r = cli("export", tiny["zip"], "--onnx", out, "--arch", TINY, "--no-verify", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["verified"] is False
    assert _files(tmp_path) == ["bad.onnx"]


def test_interrupt_leaves_no_partial_file(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "run_parity", boom)
    for ext in (False, True):
        with pytest.raises(KeyboardInterrupt):
            export_onnx(open_checkpoint(tiny["zip"]), tmp_path / "x.onnx", arch=TINY, external_data=ext)
        assert _files(tmp_path) == []


def test_errors_exit_2_and_write_nothing(tiny: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "o.onnx"
    cases = [
        (["--arch", "vgg99"], "unknown architecture 'vgg99'"),
        (["--arch", "nosuchpkg.nets:Net"], "cannot import"),
        (["--arch", "vgg16_bn"], "do not fit vgg16_bn"),  # check's findings
        (["--arch", TINY, "--arch-arg", "num_classes=7"], "classifier.3.weight: file [10, 32], model [7, 32]"),
        (["--arch", TINY, "--input-shape", "1,3,1,1"], "cannot take an input of shape 1,3,1,1"),
        (["--arch", TINY, "--input-shape", "1,1,32,32"], "cannot take an input of shape 1,1,32,32"),
        (["--arch", TINY, "--input-shape", "1,3,x"], "--input-shape"),
        (["--arch", TINY, "--opset", "99"], "--opset 99"),
        ([], "do not fit any known architecture"),  # no --arch: identified from the weights, as check does
    ]
    for args, msg in cases:
        r = cli("export", tiny["zip"], "--onnx", out, *args, env=None)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("ckptool: error:") and r.stderr.count("\n") == 1  # one line
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert _files(tmp_path) == [], args
    # an input shape error is its own type
    with pytest.raises(InputShapeError):
        export_onnx(open_checkpoint(tiny["zip"]), out, arch=TINY, input_shape=(1, 3, 1, 1))


def test_exporter_failure_is_one_clear_line(tmp_path: Path, cli) -> None:
    from onnx_fixtures import DataDependent

    src = save(DataDependent().state_dict(), tmp_path / "dd.pth")
    r = cli("export", src, "--onnx", tmp_path / "dd.onnx", "--arch", "onnx_fixtures:DataDependent")
    assert r.exit_code == 2, r.stdout
    assert r.stderr.startswith("ckptool: error: torch.onnx.export failed") and r.stderr.count("\n") == 1
    assert "data-dependent" in r.stderr and "\x1b[" not in r.stderr and "CKPTOOL_DEBUG=1" in r.stderr
    assert r.stdout == "" and _files(tmp_path) == ["dd.pth"]


def test_existing_output_needs_force(tiny: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"precious")
    r = cli("export", tiny["zip"], "--onnx", out, "--arch", TINY)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert out.read_bytes() == b"precious"
    r = cli("export", tiny["zip"], "--onnx", out, "--arch", TINY, "--force")
    assert r.exit_code == 0, r.stderr
    onnx.checker.check_model(str(out), full_check=True)
    assert _files(tmp_path) == ["o.onnx"]
    # never onto the input itself, even with --force
    r = cli("export", tiny["zip"], "--onnx", tiny["zip"], "--arch", TINY, "--force")
    assert r.exit_code == 2 and "input" in r.stderr


def test_text_output_and_script(tiny: dict[str, Path], tmp_path: Path, script) -> None:
    out = tmp_path / "s.onnx"
    r = script("export", tiny["zip"], "--onnx", out, "--arch", TINY, env=ENV)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert f"wrote {out}" in r.stdout and "self-contained" in r.stdout
    assert "onnx.checker: passed (full check)" in r.stdout and "parity passed" in r.stdout
    assert "'input' [batch, 3, 32, 32] -> 'logits' [batch, 10]" in r.stdout
    r = script("export", tiny["zip"], "--onnx", out, "--arch", TINY, env=ENV)
    assert r.returncode == 2 and "exists" in r.stderr and r.stdout == ""


def test_huge_model_switches_to_external_data(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """Above protobuf's 2 GB a self-contained file is impossible: the export writes external data instead
    (simulated by lowering the limit)."""
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 40_000)  # the inline model is ~58 KB, the external one ~20 KB
    r = export_onnx(open_checkpoint(tiny["zip"]), tmp_path / "big.onnx", arch=TINY)
    assert r.written and r.passed and r.external_data
    assert any("2 GB" in n for n in r.notes)
    assert _files(tmp_path) == ["big.onnx", "big.onnx.data"]


def test_copy_of_session_file_still_verifies(tiny: dict[str, Path], tmp_path: Path, cli) -> None:
    """The written file is a plain, relocatable ONNX model: a copy elsewhere verifies too."""
    out = tmp_path / "a.onnx"
    assert cli("export", tiny["zip"], "--onnx", out, "--arch", TINY).exit_code == 0
    other = tmp_path / "sub"
    other.mkdir()
    shutil.copy(out, other / "b.onnx")
    assert cli("parity", tiny["zip"], other / "b.onnx", "--arch", TINY).exit_code == 0
