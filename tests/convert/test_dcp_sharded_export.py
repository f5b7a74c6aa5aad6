"""A DCP folder from the real 2-rank run exported to huggingface_hub's sharded safetensors layout: streamed,
bit-exact against the run's own consolidated state, loadable with huggingface_hub's loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("huggingface_hub")


def test_export_a_dcp_folder_to_sharded_safetensors(cli: Any, dcp_run: Path, tmp_path: Path) -> None:
    from huggingface_hub import load_state_dict_from_file
    from safetensors.torch import load_file

    out = tmp_path / "out"
    r = cli("export", dcp_run / "dcp", "--safetensors", out, "--max-shard-size", "150B")
    assert r.exit_code == 0, r.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    want = load_file(dcp_run / "consolidated.safetensors")
    assert set(index["weight_map"]) == set(want)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(s.startswith("model-0000") for s in shards)
    got: dict[str, Any] = {}
    for shard in shards:
        got.update(load_state_dict_from_file(out / shard))
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in want.values())
    r = cli("diff", out, dcp_run / "dcp")  # the sharded folder against the DCP folder it came from
    assert r.exit_code == 0 and "identical" in r.output, r.output
