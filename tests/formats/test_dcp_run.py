"""The 2-rank DCP fixture itself: torch wrote what the other DCP tests rely on (checked with torch)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def test_the_run_wrote_a_sharded_dcp_folder(dcp_run: Path) -> None:
    folder = dcp_run / "dcp"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    meta = pickle.loads((folder / ".metadata").read_bytes())  # torch's own view (the test trusts this file)
    md = meta.state_dict_metadata
    chunks = {k: [(tuple(c.offsets), tuple(c.sizes)) for c in v.chunks] for k, v in md.items() if hasattr(v, "chunks")}
    assert chunks["model.embed.weight"] == [((0, 0), (5, 4)), ((5, 0), (5, 4))]
    assert chunks["model.layers.0.attn.qkv.weight"] == [((0, 0), (4, 3)), ((4, 0), (3, 3))]  # uneven
    assert chunks["model.layers.0.mlp.up.weight"] == [((0, 0), (4, 3)), ((0, 3), (4, 3))]  # Shard(1)
    assert chunks["model.layers.0.mlp.gate"] == [((0, 0), (1, 5)), ((1, 0), (0, 5))]  # an empty chunk
    assert chunks["model.scale"] == [((), ())]
    assert md["model.layers.0.attn.qkv.weight"].properties.dtype == torch.bfloat16
    assert {"step", "run_name", "config.lr", "config.warmup"} <= set(md)
    files = {info.relative_path for info in meta.storage_data.values()}
    assert files == {"__0_0.distcp", "__1_0.distcp"}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_consolidated_state_is_what_torch_loads_from_the_folder(dcp_run: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    full = load_file(dcp_run / "consolidated.safetensors")
    state = {"model": {k: torch.empty_like(v) for k, v in full.items()}, "step": 0, "run_name": "", "config": {}}
    dcp.load(state, checkpoint_id=str(dcp_run / "dcp"), no_dist=True)
    for k, v in full.items():
        assert torch.equal(state["model"][k], v), k
    extras = json.loads((dcp_run / "extras.json").read_text())
    assert state["step"] == extras["step"] == 1200
    assert state["run_name"] == "dcp-two-ranks"
    saved = torch.load(dcp_run / "consolidated.pt", weights_only=True)
    assert saved["config"] == {"lr": 0.001, "warmup": 100}
