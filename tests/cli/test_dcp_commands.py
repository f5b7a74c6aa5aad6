"""The shard column of a DCP folder (which rank file holds each tensor, several for a sharded one), and the
value commands that run a model, predict and parity, on DCP folders."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from factory import noise_image  # noqa: E402
from onnx_fixtures import TINY, TinyVGG, calibrate  # noqa: E402


def _dcp(state: dict[str, Any], out: Path) -> Path:
    import torch.distributed.checkpoint as tdcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tdcp.save(state, checkpoint_id=str(out), no_dist=True)
    return out


def test_the_shard_column_names_every_rank_file_of_a_tensor(cli: Any, dcp_run: Path) -> None:
    r = cli("inspect", "--json", dcp_run / "dcp")
    assert r.exit_code == 0, r.output
    j = json.loads(r.output)
    assert j["files"] == ["__0_0.distcp", "__1_0.distcp"]
    files = {t["name"]: t["file"] for t in j["tensors"]}
    # Shard(0) and Shard(1) DTensors: a chunk in each rank's file
    for name in ("embed.weight", "layers.0.attn.qkv.weight", "layers.0.mlp.up.weight"):
        assert files[name] == ["__0_0.distcp", "__1_0.distcp"], (name, files[name])
    # every tensor names at least one of the folder's files, and nothing else
    for name, f in files.items():
        names = f if isinstance(f, list) else [f]
        assert names and set(names) <= {"__0_0.distcp", "__1_0.distcp"}, (name, f)
    assert any(isinstance(f, str) for f in files.values())  # a replicated / unsharded tensor: one file


def test_the_shard_column_on_a_terminal_and_plain(cli: Any, tty: Callable[..., Any], dcp_run: Path) -> None:
    r = tty("inspect", dcp_run / "dcp")
    assert r.returncode == 0, r
    assert "shard" in r.text and "__0_0.distcp" in r.text and "__1_0.distcp" in r.text
    p = cli("inspect", dcp_run / "dcp")  # piped: the same table, plain
    row = next(line for line in p.output.splitlines() if line.startswith("embed.weight"))
    assert "__0_0.distcp, __1_0.distcp" in row, row


@pytest.fixture(scope="module")
def r18_dcp(tmp_path_factory: pytest.TempPathFactory, real_state_dict: Any, save_ckpt: Any) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("r18dcp")
    sd = real_state_dict("resnet18")
    return {
        "single": save_ckpt(sd, d / "resnet18.pth"),
        "dcp": _dcp({"model": dict(sd), "epoch": 7}, d / "dcp"),
        "image": noise_image(d / "cat.png", 1),
    }


def test_predict_on_a_dcp_folder_matches_the_single_file(cli: Any, r18_dcp: dict[str, Path]) -> None:
    a = cli("predict", r18_dcp["dcp"], r18_dcp["image"], "--json")
    assert a.exit_code == 0, a.output
    b = cli("predict", r18_dcp["single"], r18_dcp["image"], "--json")
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["arch"] == jb["arch"] == "resnet18"
    top_a, top_b = ja["predictions"][0]["top"], jb["predictions"][0]["top"]
    assert [c["index"] for c in top_a] == [c["index"] for c in top_b]
    assert all(abs(x["prob"] - y["prob"]) < 1e-6 for x, y in zip(top_a, top_b, strict=True))


def test_parity_and_onnx_export_from_a_dcp_folder(cli: Any, tmp_path: Path) -> None:
    from ckptool import open_checkpoint
    from ckptool.convert.onnx_export import export_onnx

    model = calibrate(TinyVGG(), 32)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    single = tmp_path / "tiny.pth"
    torch.save(sd, single)
    folder = _dcp({"model": sd}, tmp_path / "dcp")
    with open_checkpoint(single) as ck:
        assert export_onnx(ck, tmp_path / "tiny.onnx", arch=TINY).passed
    r = cli("parity", folder, tmp_path / "tiny.onnx", "--arch", TINY, "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["passed"] is True
    # a changed weight in the DCP: parity against the ONNX of the original fails (exit 1)
    sd2 = {k: v.clone() for k, v in sd.items()}
    first = next(k for k, v in sd2.items() if v.is_floating_point() and v.ndim == 4)
    sd2[first] += 1.0
    changed = _dcp({"model": sd2}, tmp_path / "dcp2")
    r = cli("parity", changed, tmp_path / "tiny.onnx", "--arch", TINY, "--json")
    assert r.exit_code == 1, r.stderr + r.stdout
    assert json.loads(r.stdout)["passed"] is False
    out = tmp_path / "from-dcp.onnx"
    r = cli("export", folder, "--onnx", out, "--arch", TINY)
    assert r.exit_code == 0, r.stderr + r.stdout
    assert out.is_file()
