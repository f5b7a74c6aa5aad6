"""Every command on a sharded checkpoint (a folder of shards written by huggingface_hub): layers, check,
predict, parity, diff and export agree with the single file the shards were split from."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from factory import noise_image
from onnx_fixtures import TINY, TinyVGG, calibrate


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory, real_state_dict, hf_sharded, save_ckpt) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("r18sharded")
    sd = real_state_dict("resnet18")
    return {
        "single": save_ckpt(sd, d / "resnet18.pth"),
        "st": hf_sharded(d / "st", dict(sd), max_shard_size=10_000_000),
        "bin": hf_sharded(d / "bin", dict(sd), safe=False, max_shard_size=10_000_000),
        "image": noise_image(d / "cat.png", 0),
    }


@pytest.mark.parametrize("layout", ["st", "bin"])
def test_layers_check_predict_diff(cli, r18: dict[str, Path], layout: str) -> None:
    folder = r18[layout]
    assert len(list(folder.glob("*-of-*"))) == 6  # 46.8 MB in shards of at most 10 MB
    c = cli("check", folder, "--json")
    assert c.exit_code == 0, c.stderr
    assert json.loads(c.stdout)["arch"] == "resnet18"
    lay = cli("layers", folder, "--json")
    one = cli("layers", r18["single"], "--json")
    assert lay.exit_code == 0 and one.exit_code == 0, lay.stderr
    a_rows, b_rows = json.loads(lay.stdout)["layers"], json.loads(one.stdout)["layers"]
    assert a_rows == b_rows and len(a_rows) > 10
    a = json.loads(cli("predict", folder, r18["image"], "--json").stdout)
    b = json.loads(cli("predict", r18["single"], r18["image"], "--json").stdout)
    assert a["arch"] == b["arch"] == "resnet18"
    top_a, top_b = a["predictions"][0]["top"], b["predictions"][0]["top"]
    assert [c["index"] for c in top_a] == [c["index"] for c in top_b]
    assert all(abs(x["prob"] - y["prob"]) < 1e-5 for x, y in zip(top_a, top_b, strict=True))
    r = cli("diff", folder, r18["single"])
    assert r.exit_code == 0 and "bit-identical" in r.stdout.splitlines()[-1], r.stdout


def test_parity_of_a_sharded_checkpoint(cli, tmp_path: Path, hf_sharded: Callable[..., Path]) -> None:
    from ckptool import open_checkpoint
    from ckptool.convert.onnx_export import export_onnx

    model = calibrate(TinyVGG(), 32)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    single = tmp_path / "tiny.pth"
    torch.save(sd, single)
    folder = hf_sharded(tmp_path / "tiny", sd, max_shard_size=20_000)
    with open_checkpoint(single) as ck:
        assert export_onnx(ck, tmp_path / "tiny.onnx", arch=TINY).passed
    r = cli("parity", folder, tmp_path / "tiny.onnx", "--arch", TINY, "--json")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["passed"] is True
    out = tmp_path / "from-shards.onnx"
    r = cli("export", folder, "--onnx", out, "--arch", TINY)
    assert r.exit_code == 0, r.stderr + r.stdout
