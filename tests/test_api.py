"""The Python API (`import ckptool`): the verbs take a path or an open Checkpoint alike, return typed results
with short reprs, import nothing heavy, and are documented (args, returns, raises)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import ckptool
from ckptool.errors import KeyNotFoundError, UsageError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PTH, ST, CKPT = FIXTURES / "tiny_vgg.pth", FIXTURES / "tiny_vgg.safetensors", FIXTURES / "tiny_train.ckpt"

VERBS = [
    "open",
    "layers",
    "check",
    "diff",
    "scan",
    "export_safetensors",
    "export_pth",
    "export_onnx",
    "extract",
    "parity",
    "predict",
]
RESULTS = [
    "CompatReport",
    "DiffReport",
    "ExportResult",
    "ExtractResult",
    "LayerTable",
    "OnnxExportResult",
    "ParityReport",
    "PredictReport",
    "ScanReport",
]
HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "rich", "PIL", "typer", "safetensors")


def test_import_is_light() -> None:
    code = "import json, sys, ckptool; ckptool.check; ckptool.CkptError; print(json.dumps(sorted(sys.modules)))"
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    loaded = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    assert loaded == [], loaded
    assert "ckptool.api" in mods  # the probe sees ckptool's own imports


def test_verbs_are_functions_even_after_their_modules_load() -> None:
    for name in ("scan", "diff", "layers", "extract", "parity", "predict"):
        importlib.import_module(f"ckptool.{name}")  # binding the submodule must not replace the verb
    for name in VERBS:
        assert inspect.isfunction(getattr(ckptool, name)), name
    assert importlib.import_module("ckptool.scan").__name__ == "ckptool.scan"
    assert ckptool.ScanReport is importlib.import_module("ckptool.scan").ScanReport
    with pytest.raises(AttributeError):
        ckptool.NoSuchThing  # noqa: B018


def test_public_api_is_documented() -> None:
    for name in VERBS:
        doc = inspect.getdoc(getattr(ckptool, name)) or ""
        for section in ("Args:", "Returns:", "Raises:"):
            assert section in doc, f"ckptool.{name} docstring has no {section}"
        params = [p for p in inspect.signature(getattr(ckptool, name)).parameters]
        for p in params:
            assert f"{p}:" in doc, f"ckptool.{name}: argument {p} is not documented"
    for name in RESULTS:
        cls = getattr(ckptool, name)
        assert cls.__doc__ and not cls.__doc__.startswith(f"{name}("), f"{name} has no docstring"


def _same(a: object, b: object) -> None:
    da, db = a.to_dict(), b.to_dict()  # type: ignore[attr-defined]
    for d in (da, db):
        for k in ("seconds", "torch_seconds", "onnx_seconds", "time"):
            d.pop(k, None)
    assert da == db


def test_path_or_checkpoint_alike(tmp_path: Path) -> None:
    with ckptool.open(PTH) as ck:
        _same(ckptool.check(PTH, "vgg11_bn"), ckptool.check(ck, "vgg11_bn"))  # a path used to be AttributeError
        _same(ckptool.layers(PTH), ckptool.layers(ck))
        _same(ckptool.diff(PTH, ST), ckptool.diff(ck, ST))
        _same(ckptool.scan(PTH), ckptool.scan(ck))
        a = ckptool.export_safetensors(PTH, tmp_path / "a.safetensors")
        b = ckptool.export_safetensors(ck, tmp_path / "b.safetensors")
        assert a.verified and b.verified and a.tensors == b.tensors == len(ck)
        assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
        p = ckptool.export_pth(ck, tmp_path / "c.pth")
        assert p.verified and ckptool.diff(tmp_path / "c.pth", PTH).identical
        e1 = ckptool.extract(PTH, "features", tmp_path / "f1.safetensors")
        e2 = ckptool.extract(ck, "features", tmp_path / "f2.safetensors")
        assert e1.names == e2.names and e1.tensors > 0
        assert ck["features.0.weight"].shape == (8, 3, 3, 3)  # the caller's Checkpoint stays open
    assert ckptool.diff(tmp_path / "f1.safetensors", tmp_path / "f2.safetensors").identical


def test_results_are_findings_not_exceptions() -> None:
    r = ckptool.check(PTH, "vgg16_bn")
    assert isinstance(r, ckptool.CompatReport) and not r.compatible and r.missing
    assert ckptool.check(ST, "vgg11_bn").compatible is False
    assert isinstance(ckptool.scan(PTH), ckptool.ScanReport) and ckptool.scan(PTH).safe


def test_training_checkpoint_key() -> None:
    with ckptool.open(CKPT) as ck:
        assert ck.state_dict_key is not None
        _same(ckptool.layers(CKPT), ckptool.layers(ck))
        _same(ckptool.layers(CKPT, key=ck.state_dict_key), ckptool.layers(ck, key=ck.state_dict_key))
        with pytest.raises(UsageError, match="applies when opening a file"):
            ckptool.check(ck, key="no.such.key")
    with pytest.raises(KeyNotFoundError):
        ckptool.check(CKPT, key="no.such.key")


def test_reprs_are_short(tmp_path: Path) -> None:
    results = [
        ckptool.check(PTH, "vgg16_bn"),  # 60-odd missing keys: the dataclass repr would print every one
        ckptool.check(PTH),
        ckptool.layers(PTH),
        ckptool.layers(ST, "vgg11_bn"),
        ckptool.diff(PTH, ST),
        ckptool.scan(PTH),
        ckptool.export_safetensors(PTH, tmp_path / "a.safetensors"),
        ckptool.extract(PTH, "features", tmp_path / "f.pth"),
    ]
    for r in results:
        text = repr(r)
        assert text.startswith(f"<{type(r).__name__} ") and text.endswith(">"), text
        assert "\n" not in text and len(text) <= 160, text
        assert len(json.dumps(r.to_dict(), default=str)) > len(text)  # a summary, not the whole result
    assert len(json.dumps(results[0].to_dict(), default=str)) > 2000


# ------------------------------------------------------------------------------------ torch side
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from onnx_fixtures import TINY, calibrated, save, state_dict

    d = tmp_path_factory.mktemp("api_tiny")
    model = calibrated(TINY, 10)
    pth = save(state_dict(model), d / "tiny.pth")
    img = d / "cat.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(img)
    return {"arch": TINY, "pth": pth, "img": img, "dir": d}


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # onnx_fixtures:TinyVGG is importable


def test_onnx_parity_predict_take_path_or_checkpoint(tiny_model: dict[str, object], tmp_path: Path, on_path) -> None:
    arch, pth, img = str(tiny_model["arch"]), Path(str(tiny_model["pth"])), Path(str(tiny_model["img"]))
    r1 = ckptool.export_onnx(pth, tmp_path / "a.onnx", arch=arch)
    with ckptool.open(pth) as ck:
        r2 = ckptool.export_onnx(ck, tmp_path / "b.onnx", arch=arch)
        assert isinstance(r1, ckptool.OnnxExportResult) and r1.written and r2.written and r1.passed
        assert r1.output_shapes == r2.output_shapes
        p1 = ckptool.parity(pth, tmp_path / "a.onnx", arch=arch, samples=2)
        p2 = ckptool.parity(ck, tmp_path / "a.onnx", arch=arch, samples=2)
        assert isinstance(p1, ckptool.ParityReport) and p1.passed and p2.passed
        assert [o.max_abs_diff for o in p1.outputs] == [o.max_abs_diff for o in p2.outputs]  # same seeded inputs
        names = [f"class {i}" for i in range(10)]
        t1 = ckptool.predict(pth, img, arch=arch, top=3, labels=names)
        t2 = ckptool.predict(ck, [img], arch=arch, top=3, labels=names)
    o = ckptool.predict(tmp_path / "a.onnx", img, top=3, labels=names)
    assert isinstance(t1, ckptool.PredictReport) and t1.backend == "torch" and o.backend == "onnxruntime"
    assert [c.index for c in t1.predictions[0].top] == [c.index for c in t2.predictions[0].top]
    assert t1.predictions[0].top[0].index == o.predictions[0].top[0].index
    for r in (r1, p1, p1.outputs[0], t1, o):
        text = repr(r)
        assert text.startswith(f"<{type(r).__name__} ") and "\n" not in text and len(text) <= 160, text
