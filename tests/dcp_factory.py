"""A real torch.distributed.checkpoint (DCP) folder, written by a 2-rank gloo run on this machine.

``python tests/dcp_factory.py OUT`` starts 2 CPU processes (``torch.multiprocessing.start_processes``, forked
after torch is imported, so torch is imported once; gloo over
``tcp://127.0.0.1:<free port>``), builds DTensors on a 1-D device mesh and saves them with
``torch.distributed.checkpoint.save`` to ``OUT/dcp``. Rank 0 also writes the consolidated state (every
tensor of ``state["model"]`` whole) to ``OUT/consolidated.safetensors``, the whole state as
``dcp_to_torch_save`` would write it to ``OUT/consolidated.pt``, and the non-tensor entries to
``OUT/extras.json``. The ``dcp_run`` fixture in conftest.py runs it once per
session (in a subprocess, so pytest's process never initialises torch.distributed).

What is in it, by how it is laid out:

The state is ``{"model": {...}, "step": ..., "run_name": ..., "config": {...}}``; DCP flattens it to
``model.embed.weight`` ... ``config.lr``. In ``model``:

- ``Shard(0)`` DTensors, even (``embed.weight``) and uneven (``layers.0.attn.qkv.weight``, bfloat16,
  7 rows split 4 + 3);
- a ``Shard(1)`` DTensor (``layers.0.mlp.up.weight``, float16): each chunk is a column block, so no
  chunk is a contiguous byte range of the whole tensor;
- a tensor too small to give every rank a row (``layers.0.mlp.gate``: 1 row on 2 ranks, an empty chunk);
- replicated DTensors and plain tensors (float32, bfloat16, int64, a 0-d scalar);
- non-tensors: a step counter, a string and a small dict (DCP flattens it to ``config.lr`` ...).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

WORLD = 2


def _tensors(torch):  # the full (global) tensors; every rank builds the same ones from one seed
    g = torch.Generator().manual_seed(1234)
    return {
        "embed.weight": torch.randn(10, 4, generator=g),
        "layers.0.attn.qkv.weight": torch.randn(7, 3, generator=g).to(torch.bfloat16),
        "layers.0.mlp.up.weight": torch.randn(4, 6, generator=g).to(torch.float16),
        "layers.0.mlp.gate": torch.randn(1, 5, generator=g),
        "norm.weight": torch.randn(4, generator=g),
        "norm.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(3, 4, generator=g),
        "position_ids": torch.arange(8, dtype=torch.int64),
        "scale": torch.tensor(0.5),
    }


# name -> placement on the 1-D mesh (None: a plain tensor, saved by every rank; DCP keeps one copy)
PLACEMENTS = {
    "embed.weight": "shard0",
    "layers.0.attn.qkv.weight": "shard0",
    "layers.0.mlp.up.weight": "shard1",
    "layers.0.mlp.gate": "shard0",
    "norm.weight": "replicate",
    "norm.bias": None,
    "head.weight": "replicate",
    "position_ids": None,
    "scale": None,
}
EXTRAS = {"step": 1200, "run_name": "dcp-two-ranks", "config": {"lr": 0.001, "warmup": 100}}


def _run(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        full = _tensors(torch)
        kinds = {"shard0": [Shard(0)], "shard1": [Shard(1)], "replicate": [Replicate()]}
        model = {}
        for name, t in full.items():
            kind = PLACEMENTS[name]
            model[name] = t if kind is None else distribute_tensor(t, mesh, kinds[kind])
        state = {"model": model, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in EXTRAS.items()}}
        dcp.save(state, checkpoint_id=os.path.join(out, "dcp"))
        dist.barrier()
        if rank == 0:
            from safetensors.torch import save_file

            save_file(full, os.path.join(out, "consolidated.safetensors"))
            torch.save({"model": full, **EXTRAS}, os.path.join(out, "consolidated.pt"))
            with open(os.path.join(out, "extras.json"), "w") as f:
                json.dump(EXTRAS, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(out: str | os.PathLike[str]) -> Path:
    # imported once here: the forked ranks inherit it (a spawned rank imports torch again, seconds each)
    import torch
    import torch.distributed.checkpoint
    import torch.distributed.tensor  # noqa: F401
    import torch.multiprocessing as mp

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_run, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return out


if __name__ == "__main__":
    build(sys.argv[1])
