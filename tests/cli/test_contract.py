"""The contract a CI job relies on: exit codes through shell pipelines (pipefail), strict JSON that validates
against docs/schemas/<command>.schema.json for every command, errors as JSON under --json, exit 1 from one
mechanism."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli.clihelp import ROOT, Brackets, evil_pickle, run_tty, strict_json, write_safetensors

jsonschema = pytest.importorskip("jsonschema")

SCHEMAS = ROOT / "docs" / "schemas"
FIXTURES = ROOT / "fixtures"
COMMANDS = ["inspect", "layers", "check", "archs", "export", "parity", "diff", "scan", "predict", "labels", "extract"]


def validate(command: str, text: str) -> dict[str, Any]:
    """Parse ``text`` strictly (one JSON value, no NaN/Infinity) and validate it against the command's schema."""
    obj = strict_json(text)
    assert isinstance(obj, dict)
    schema = json.loads((SCHEMAS / f"{command}.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(obj)
    return obj


def test_every_command_has_a_valid_schema() -> None:
    for c in COMMANDS:
        schema = json.loads((SCHEMAS / f"{c}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert "inf" in json.dumps(schema["$defs"]["number"]), c  # the documented non-finite encoding
    assert sorted(p.name.split(".")[0] for p in SCHEMAS.glob("*.schema.json")) == sorted(COMMANDS)


def test_strict_parser_rejects_what_it_must() -> None:
    with pytest.raises(ValueError):
        strict_json('{"x": Infinity}')
    with pytest.raises(ValueError):
        strict_json('{"x": NaN}')
    with pytest.raises(json.JSONDecodeError):
        strict_json('{"x": 1}\n{"y": 2}')  # two objects are not one


def test_encoder_writes_non_finite_numbers_as_strings() -> None:
    from ckptool.cli._output import encode_json

    text = encode_json({"a": math.inf, "b": [-math.inf, math.nan, 1.5], "c": np.float32(np.inf), "d": np.int64(3)})
    assert strict_json(text) == {"a": "inf", "b": ["-inf", "nan", 1.5], "c": "inf", "d": 3}


# ---------------------------------------------------------------------------------------------------
# every command's --json validates (torch-free ones first)
# ---------------------------------------------------------------------------------------------------
def test_torch_free_commands_json(cli, tmp_path: Path, brackets: Brackets) -> None:
    pth = FIXTURES / "tiny_vgg.pth"
    runs = {
        "inspect": [("inspect", pth), ("inspect", FIXTURES / "tiny_mlp.onnx"), ("inspect", brackets.st, "-f", "a*")],
        "layers": [("layers", pth)],
        "check": [("check", pth), ("check", pth, "--arch", "vgg11_bn")],
        "archs": [("archs",)],
        "export": [
            ("export", pth, "--safetensors", tmp_path / "o.safetensors"),
            ("export", pth, "--pth", tmp_path / "o.pth"),
        ],
        "diff": [("diff", pth, FIXTURES / "tiny_vgg_dp.pth"), ("diff", pth, brackets.st)],
        "scan": [("scan", pth, brackets.evil, brackets.nan), ("scan", pth, tmp_path / "missing.pth")],
        "labels": [("labels",)],
        "extract": [("extract", pth, "-p", "features", "-o", tmp_path / "f.safetensors")],
    }
    for command, invocations in runs.items():
        for args in invocations:
            r = cli(*args, "--json")
            assert r.exit_code in (0, 1, 2), (args, r.stdout, r.stderr)
            d = validate(command, r.stdout)
            assert ("error" in d) == (r.exit_code == 2), (args, r.stdout)


def test_diff_json_encodes_inf_as_a_string(cli, tmp_path: Path) -> None:
    a = write_safetensors(tmp_path / "a.safetensors", {"w": np.array([1.0, np.nan], np.float32)})
    b = write_safetensors(tmp_path / "b.safetensors", {"w": np.array([1.0, 2.0], np.float32)})
    r = cli("diff", a, b, "--json")
    assert r.exit_code == 1
    d = validate("diff", r.stdout)
    assert d["max_abs_diff"] == "inf" and d["tensors"][0]["max_abs_diff"] == "inf"
    assert "Infinity" not in r.stdout and "NaN" not in r.stdout


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnx_fixtures import TINY, calibrated, save, state_dict

    from ckptool.convert.onnx_export import export_onnx
    from ckptool.formats import open_checkpoint

    d = tmp_path_factory.mktemp("contract")
    model = calibrated(TINY, 10)
    ckp = save(state_dict(model), d / "tiny.pth")
    feats = save(state_dict(model.features), d / "tiny_features.pth")  # type: ignore[arg-type]
    om = d / "tiny.onnx"
    assert export_onnx(open_checkpoint(ckp), om, arch=TINY).passed
    fo = d / "tiny_features.onnx"
    assert export_onnx(open_checkpoint(ckp), fo, arch=TINY, features_only=True).passed
    return {"dir": d, "pth": ckp, "features_pth": feats, "onnx": om, "features_onnx": fo}


def test_torch_commands_json(cli, tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    from onnx_fixtures import TINY
    from PIL import Image

    r = cli("export", tiny_pair["pth"], "--onnx", tmp_path / "e.onnx", "--arch", TINY, "--json")
    assert r.exit_code == 0, r.stderr
    d = validate("export", r.stdout)
    assert d["target"] == "onnx" and d["parity"]["stol"] == 1e-4
    # features after ReLU + max-pool: exact zeros in the reference, where a relative difference is infinite
    r = cli("parity", tiny_pair["pth"], tiny_pair["features_onnx"], "--arch", TINY, "--json")
    assert r.exit_code == 0, r.stderr
    d = validate("parity", r.stdout)
    assert d["features_only"] is True and "stol * max|torch|" in d["rule"]
    assert "Infinity" not in r.stdout
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(img)
    r = cli("predict", tiny_pair["onnx"], img, "--size", "32", "--labels", _labels(tmp_path), "--json")
    assert r.exit_code == 0, r.stderr
    validate("predict", r.stdout)
    r = cli("predict", tiny_pair["pth"], img, "--arch", TINY, "--size", "32", "--labels", _labels(tmp_path), "--json")
    assert r.exit_code == 0, r.stderr
    assert validate("predict", r.stdout)["backend"] == "torch"


def _labels(d: Path) -> Path:
    f = d / "labels.txt"
    f.write_text("".join(f"c{i}\n" for i in range(10)))
    return f


def test_parity_json_with_an_infinite_relative_difference_is_strict(cli, tiny_pair: dict[str, Path]) -> None:
    """A tampered features model: differences where torch's output is exactly 0 (an infinite max_rel_diff)."""
    import shutil as sh

    from onnx_fixtures import TINY, perturb_file

    from ckptool.formats import open_checkpoint

    bad = tiny_pair["dir"] / "tampered_features.pth"
    sh.copy(tiny_pair["features_pth"], bad)
    t = open_checkpoint(bad)["4.bias"]  # the second conv's bias: shifts outputs that were exactly 0 after ReLU
    assert t.storage is not None and t.storage.source is not None
    perturb_file(bad, t.storage.source.offset, -0.5)  # torch gives 0 where onnx does not
    r = cli("parity", bad, tiny_pair["features_onnx"], "--arch", TINY, "--features-only", "--json")
    assert r.exit_code == 1, r.stderr
    d = validate("parity", r.stdout)
    assert d["outputs"][0]["max_rel_diff"] == "inf"
    assert "Infinity" not in r.stdout


# ---------------------------------------------------------------------------------------------------
# errors under --json
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "{missing}"),
        ("layers", "{missing}"),
        ("check", "{missing}"),
        ("export", "{missing}", "--safetensors", "{out}"),
        ("diff", "{missing}", "{missing}"),
        ("extract", "{missing}", "-p", "features", "-o", "{out}"),
        ("check", "{pth}", "--arch", "no_such_arch"),
        ("check", "{pth}", "--num-classes", "0"),  # click's own usage error
        ("predict", "{missing}", "{missing}"),
        ("parity", "{missing}", "{missing}"),
    ],
)
def test_an_error_under_json_is_one_object_on_stdout(cli, tmp_path: Path, args: tuple[str, ...]) -> None:
    subs = {
        "missing": str(tmp_path / "missing[1].pth"),
        "out": str(tmp_path / "o.safetensors"),
        "pth": str(FIXTURES / "tiny_vgg.pth"),
    }
    r = cli(*(a.format(**subs) for a in args), "--json")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    d = validate(args[0], r.stdout)
    assert set(d) == {"error"} and set(d["error"]) == {"type", "message", "path", "hint"}
    assert d["error"]["type"] and d["error"]["message"]
    assert len(r.stdout.strip().splitlines()) == 1  # exactly one object
    errs = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errs) >= 1 and ("ckptool: error:" in errs[-1] or "Error" in r.stderr)
    if "missing" in args[1]:
        assert d["error"]["path"] == subs["missing"] and d["error"]["type"] == "UnreadableError"


def test_no_error_object_without_json(cli, tmp_path: Path) -> None:
    r = cli("inspect", tmp_path / "missing.pth")
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.startswith("ckptool: error:")


# ---------------------------------------------------------------------------------------------------
# exit codes through shell pipelines (GitHub Actions runs bash with -o pipefail)
# ---------------------------------------------------------------------------------------------------
def test_pipefail_keeps_the_exit_code(pipeline: Callable[..., Any], tmp_path: Path) -> None:
    evil = evil_pickle(tmp_path / "evil.pth")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(300):  # ~100 KB of findings: more than a pipe holds, so `head -1` really closes it early
        shutil.copy(evil, many / f"evil{i:03}.pth")
    pth = FIXTURES / "tiny_vgg.pth"
    cases = [
        (f'$CKPTOOL scan "{evil}" | head -1', 1),
        (f'$CKPTOOL scan "{evil}" | true', 1),
        (f'$CKPTOOL scan "{many}"/*.pth | head -1', 1),
        (f'$CKPTOOL check "{pth}" --arch vgg11_bn | head -1', 1),
        (f'$CKPTOOL check "{pth}" --arch vgg11_bn | true', 1),
        (f'$CKPTOOL inspect "{tmp_path}/missing.pth" | head -1', 2),
        (f'$CKPTOOL scan "{tmp_path}/missing.pth" | true', 2),
        (f'$CKPTOOL scan "{pth}" --json | true', 0),
        ("$CKPTOOL labels | head -1", 0),
        ("$CKPTOOL labels | true", 0),
    ]
    for shell, code in cases:
        r = pipeline(shell)
        assert r.returncode == code, (shell, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr and "BrokenPipe" not in r.stderr, (
            shell
        )
    r = pipeline(f'$CKPTOOL scan "{many}"/*.pth | head -1')
    assert re.match(r".*evil000\.pth: FINDINGS", r.stdout), r.stdout


# ---------------------------------------------------------------------------------------------------
# exit 1 is one mechanism
# ---------------------------------------------------------------------------------------------------
def test_exit_1_comes_only_from_findings_error() -> None:
    cli_dir = ROOT / "ckptool" / "cli"
    for f in cli_dir.glob("*.py"):
        if f.name == "_errors.py":
            continue
        text = f.read_text()
        assert "typer.Exit(1)" not in text and "Exit(code)" not in text, f.name
    errors = (cli_dir / "_errors.py").read_text()
    assert "except FindingsError:\n            raise typer.Exit(1)" in errors and errors.count("Exit(1)") == 1


def test_error_classes_live_in_errors_py() -> None:
    import importlib

    # ckptool.parity is also the verb of the Python API: take the modules themselves
    ox, errors, parity, runtime = (
        importlib.import_module(f"ckptool.{m}") for m in ("convert.onnx_export", "errors", "parity", "runtime")
    )

    for name in ("WeightsMismatchError", "InputShapeError", "ExportFailedError", "OnnxCheckError", "FindingsError"):
        assert getattr(errors, name).__module__ == "ckptool.errors", name
    assert runtime.WeightsMismatchError is errors.WeightsMismatchError  # the old import paths still work
    assert parity.InputShapeError is errors.InputShapeError
    assert ox.ExportFailedError is errors.ExportFailedError and ox.OnnxCheckError is errors.OnnxCheckError
    for mod in (ox, parity, runtime):
        assert not hasattr(mod, "_first_line"), mod


def test_tty_json_is_still_strict(brackets: Brackets) -> None:
    r = run_tty("inspect", brackets.st, "--json")
    assert r.returncode == 0
    d = validate("inspect", r.text.strip())
    assert {t["name"] for t in d["tensors"]} == {"a[/]b", "blk[0].weight", "[bold]x[/bold]"}
    assert d["metadata"]["__metadata__"]["note"] == "[red]not markup[/red]"
