from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from proc import run_script
from typer.testing import CliRunner

from ckptool.cli.app import app

if TYPE_CHECKING:
    import torch

    from ckptool.checkpoint import Checkpoint

pytest_plugins = ["cli.clihelp", "sources.remote_fixtures"]  # the CLI fixtures: tty, pipeline, brackets

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for full-size generated checkpoints (built once, shared by tests)."""
    return tmp_path_factory.mktemp("big")


@pytest.fixture(scope="session")
def vgg16_bn_files(big_dir: Path) -> dict[str, Path]:
    """Full-size vgg16_bn (138,365,992 parameters) in zip format and in legacy format without
    num_batches_tracked (like torchvision's vgg16_bn-6c64b313.pth)."""
    from factory import save, vgg_state_dict

    sd = vgg_state_dict("vgg16_bn")
    out = {"zip": save(sd, big_dir / "vgg16_bn.pth", "zip")}
    legacy = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    from collections import OrderedDict

    out["legacy"] = save(OrderedDict(legacy), big_dir / "vgg16_bn_legacy.pth", "legacy")
    return out


class Cli:
    """Runs the CLI through typer's CliRunner (in-process) or the installed `ckptool` script."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str | os.PathLike[str], env: dict[str, str] | None = None):
        return self.runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def script() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_script


# -- format builders (shared by tests/formats and the command tests) ----------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# architecture families (tests/arch): header-only Checkpoints, registry state_dicts, saved files
# ---------------------------------------------------------------------------------------------------
def _mem_ck(shapes: dict[str, tuple[int, ...]], dtype: str = "float32") -> Checkpoint:
    from ckptool.checkpoint import Checkpoint, TensorInfo

    tensors = [
        TensorInfo(k, "int64" if k.endswith("num_batches_tracked") else dtype, tuple(s)) for k, s in shapes.items()
    ]
    return Checkpoint(path="<mem>", format="torch-zip", tensors=tensors)


@pytest.fixture
def mem_ck() -> Callable[..., Checkpoint]:
    """``mem_ck(shapes)``: a Checkpoint with only headers, what every reader returns, without a file."""
    return _mem_ck


def _real_state_dict(arch: str, num_classes: int = 1000, *, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """The family's torch module, initialised as the family initialises it (seeded), with BatchNorm
    statistics that are not the identity (so a wrong mapping changes the outputs)."""
    import torch

    from ckptool.arch.registry import resolve
    from ckptool.runtime import build_module

    torch.manual_seed(seed)
    model = build_module(resolve(arch, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed + 1)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
    return OrderedDict(sd)


@pytest.fixture(scope="session")
def real_state_dict() -> Callable[..., OrderedDict[str, torch.Tensor]]:
    return _real_state_dict


def _save(obj: object, path: Path, fmt: str = "zip") -> Path:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


@pytest.fixture(scope="session")
def save_ckpt() -> Callable[..., Path]:
    """``save_ckpt(obj, path, "zip" | "legacy")``: torch.save in either on-disk format."""
    return _save


@pytest.fixture(scope="session")
def dcp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch.distributed.checkpoint folder written by a real 2-rank gloo run (``tests/dcp_factory.py``, in a
    subprocess, once per session): ``dcp/`` (``.metadata``, ``__0_0.distcp``, ``__1_0.distcp``), plus the
    consolidated state: ``consolidated.safetensors`` (the model's tensors whole), ``consolidated.pt``
    (the whole state, as ``dcp_to_torch_save`` writes it) and ``extras.json`` (the non-tensor entries)."""
    out = tmp_path_factory.mktemp("dcp_run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "dcp_factory.py"), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


# ---------------------------------------------------------------------------------------------------
# sharded Hugging Face checkpoints (tests/formats/test_hf_index.py, tests/convert, tests/cli)
# ---------------------------------------------------------------------------------------------------
def _small_lm(seed: int = 0, *, tied: bool = True) -> dict[str, torch.Tensor]:
    """A tiny decoder-shaped state_dict with HF key names (``model.`` prefix), mixed dtypes, and the output
    embedding tied to the input embedding (one storage) when ``tied``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(64, 16, generator=g)}
    for i in range(3):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = torch.randn(16, 16, generator=g)
        sd[p + "self_attn.k_proj.weight"] = torch.randn(16, 16, generator=g).to(torch.bfloat16)
        sd[p + "mlp.up_proj.weight"] = torch.randn(32, 16, generator=g).to(torch.float16)
        sd[p + "input_layernorm.weight"] = torch.ones(16)
    sd["model.norm.weight"] = torch.rand(16, generator=g)
    sd["model.position_ids"] = torch.arange(8, dtype=torch.int64)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] if tied else torch.randn(64, 16, generator=g)
    return sd


@pytest.fixture(scope="session")
def small_lm() -> Callable[..., dict[str, torch.Tensor]]:
    """``small_lm(seed=0, tied=True)``: a tiny HF-named state_dict (see :func:`_small_lm`)."""
    return _small_lm


def _hf_sharded(
    folder: Path, sd: dict[str, torch.Tensor] | None = None, *, safe: bool = True, max_shard_size: int = 3000
) -> Path:
    """``huggingface_hub.save_torch_state_dict`` into ``folder``: the real library's sharded layout (shared
    tensors dropped as it drops them). Returns the folder."""
    from huggingface_hub import save_torch_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(
        _small_lm(tied=False) if sd is None else sd, folder, max_shard_size=max_shard_size, safe_serialization=safe
    )
    return folder


@pytest.fixture(scope="session")
def hf_sharded() -> Callable[..., Path]:
    """``hf_sharded(folder, sd=None, safe=True, max_shard_size=3000)``: a sharded HF folder written by
    huggingface_hub (safetensors, or ``pytorch_model-0000K-of-0000N.bin`` when ``safe=False``)."""
    return _hf_sharded
