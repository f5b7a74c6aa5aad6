"""bench/bench_scale.py's reference lines, the floors: each must print what ``inspect --json`` prints for each tensor,
or the docs' comparison with it (docs/benchmarks.md, "What the torch zip targets at 100k would take") is void."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckptool

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"


def _floor_program(name: str) -> str:
    spec = importlib.util.spec_from_file_location("bench_scale_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(getattr(mod, name))


@pytest.mark.parametrize("program", ["TRUSTING_FLOOR", "TRUSTING_FLOOR_CKPT_DIR"])
def test_the_floor_prints_inspect_json_rows(tmp_path: Path, program: str) -> None:
    sd = {
        "a.weight": torch.zeros(3, 5),
        "a.bias": torch.ones(5, dtype=torch.float16),
        "b.scale": torch.tensor(2.0, dtype=torch.bfloat16),  # 0-d
        "c.empty": torch.zeros(0, 4),
        **{f"layers.{i}.w": torch.zeros(4) for i in range(300)},  # past the 256 one-byte memo indexes
    }
    path = tmp_path / "sd.pth"
    torch.save(sd, path)
    got = subprocess.run(
        [sys.executable, "-c", _floor_program(program), str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = json.loads(got.stdout)["tensors"]
    with ckptool.open_checkpoint(str(path)) as ck:
        want = ck.to_dict()["tensors"]
    assert rows == want
    assert [r["name"] for r in rows] == list(sd)
    assert rows[2] == {"name": "b.scale", "shape": [], "dtype": "bfloat16", "numel": 1, "nbytes": 2}
