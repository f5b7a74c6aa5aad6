"""ONNX weights kept in Constant nodes (paddle2onnx, silero-vad), in the main graph and in ``If`` subgraphs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ckptool import open_checkpoint
from ckptool.scan import scan

CONSTANTS = {"fc.weight", "fc.bias", "then_bias", "else_idx"}


def onnx_values(path: Path) -> dict[str, np.ndarray]:
    """What onnx itself says each Constant node's value is (the oracle)."""
    import onnx
    from onnx import numpy_helper

    out: dict[str, np.ndarray] = {}

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            for a in n.attribute:
                if n.op_type == "Constant" and a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(onnx.load(path).graph)
    return out


def test_constants_are_listed_under_their_output_names_with_values(constant_onnx: Callable[..., Path]) -> None:
    path = constant_onnx()
    with open_checkpoint(path) as ck:
        assert set(ck.names()) == CONSTANTS | {"zero"}
        assert {t.name for t in ck if t.constant} == CONSTANTS
        assert not ck["zero"].constant
        for name, want in onnx_values(path).items():
            t = ck[name]
            assert t.shape == want.shape and t.dtype == str(want.dtype)
            assert ck.read_bytes(t) == want.astype(want.dtype.newbyteorder("<")).tobytes()


def test_inspect_json_marks_constants(constant_onnx: Callable[..., Path], cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("inspect", constant_onnx(), "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    marked = {t["name"]: t.get("constant", False) for t in d["tensors"]}
    assert marked == {**dict.fromkeys(CONSTANTS, True), "zero": False}


def test_diff_of_itself_is_identical(constant_onnx: Callable[..., Path], cli) -> None:  # type: ignore[no-untyped-def]
    path = constant_onnx()
    r = cli("diff", path, path)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "identical" in r.stdout and "5 tensors" in r.stdout


def test_scan_checks_constant_values(constant_onnx: Callable[..., Path]) -> None:
    report = scan(constant_onnx())
    assert report.safe and report.values_checked
    assert report.tensors_checked == 4  # float tensors: fc.weight, fc.bias, then_bias, zero


@pytest.mark.parametrize("kind", ["--safetensors", "--pth"])
def test_export_writes_the_constants(constant_onnx: Callable[..., Path], tmp_path: Path, cli, kind: str) -> None:  # type: ignore[no-untyped-def]
    src = constant_onnx()
    out = tmp_path / ("out.safetensors" if kind == "--safetensors" else "out.pth")
    r = cli("export", src, kind, out)
    assert r.exit_code == 0, r.stdout + r.stderr
    want = onnx_values(src)
    if kind == "--safetensors":
        from safetensors.numpy import load_file

        got = load_file(out)
    else:
        import torch

        got = {k: v.numpy() for k, v in torch.load(out, weights_only=True).items()}
    assert set(got) == CONSTANTS | {"zero"}
    for name, arr in want.items():
        np.testing.assert_array_equal(got[name], arr)


def test_extract_and_check_and_layers_run(constant_onnx: Callable[..., Path], tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = constant_onnx()
    r = cli("extract", src, "--prefix", "fc", "-o", tmp_path / "fc.safetensors")
    assert r.exit_code == 0, r.stdout + r.stderr
    with open_checkpoint(tmp_path / "fc.safetensors") as ck:
        assert set(ck.names()) == {"weight", "bias"}
    assert cli("layers", src).exit_code == 0
    assert cli("check", src).exit_code in (0, 1)  # runs: no known architecture is a finding, not an error
    assert "Traceback" not in cli("check", src).stderr


def test_a_tensor_attribute_that_is_not_a_constant_value_is_not_listed(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(
        "ConstantOfShape", ["shape"], ["y"], value=numpy_helper.from_array(np.array([7.0], dtype=np.float32))
    )
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    path = tmp_path / "cos.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    with open_checkpoint(path) as ck:
        assert ck.names() == []
