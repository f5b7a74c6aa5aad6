"""Builders shared by the format tests: small real files of each kind, made here (never downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def _const(name: str, arr: np.ndarray) -> object:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr))


@pytest.fixture
def constant_onnx(tmp_path: Path) -> Callable[..., Path]:
    """An ONNX model whose weights live in Constant nodes (paddle2onnx / silero-vad style): a Conv-free MatMul
    + Add in the main graph, and an ``If`` whose two branches hold their own Constant weights."""

    def build(name: str = "const.onnx") -> Path:
        import onnx
        from onnx import TensorProto, helper

        rng = np.random.default_rng(0)
        w = rng.standard_normal((4, 3)).astype(np.float32)
        b = rng.standard_normal((3,)).astype(np.float32)
        then_w = rng.standard_normal((3,)).astype(np.float32)
        else_w = np.arange(3, dtype=np.int64)
        then_g = helper.make_graph(
            [_const("then_bias", then_w), helper.make_node("Add", ["y", "then_bias"], ["then_out"])],
            "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 3])],
        )  # fmt: skip
        else_g = helper.make_graph(
            [
                _const("else_idx", else_w),
                helper.make_node("Cast", ["else_idx"], ["else_f"], to=TensorProto.FLOAT),
                helper.make_node("Add", ["y", "else_f"], ["else_out"]),
            ],
            "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 3])],
        )  # fmt: skip
        nodes = [
            _const("fc.weight", w),
            _const("fc.bias", b),
            helper.make_node("MatMul", ["x", "fc.weight"], ["xw"]),
            helper.make_node("Add", ["xw", "fc.bias"], ["y"]),
            helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["cond"]),
            helper.make_node("If", ["cond"], ["out"], then_branch=then_g, else_branch=else_g),
        ]
        zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
        graph = helper.make_graph(
            nodes, "paddle_like",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
            initializer=[zero],
        )  # fmt: skip
        model = helper.make_model(graph, producer_name="paddle2onnx", opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        path = tmp_path / name
        onnx.save(model, path)
        return path

    return build
