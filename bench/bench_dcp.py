"""torch.distributed.checkpoint folder -> one safetensors file: ckptool against torch's own routes, side by side.

    python bench/bench_dcp.py [--runs 3] [--dir /tmp/ckptool-bench] [--layers 12] [--hidden 2048]

Builds (once, in --dir) a DCP folder with a real 2-rank gloo run (``torch.distributed.checkpoint.save``):
a Llama-style stack of ``--layers`` blocks of bfloat16 ``hidden x hidden`` matrices, most ``Shard(0)`` across
the two ranks, the MLP down projections ``Shard(1)`` (column blocks, gathered through ckptool's slab), plus
replicated norms and a step counter. Then times, in fresh processes (median wall and CPU time, the child's
peak RSS):

  - ckptool export DCP --safetensors OUT             (streamed, bit-exact check on: the default)
  - ckptool export DCP --safetensors OUT --no-verify
  - dcp_to_torch_save(DCP, OUT.pt)                    (torch's converter: loads the whole state, then saves)
  - torch's load into an empty state (what dcp_to_torch_save does) + safetensors.torch.save_file
    (the route to safetensors with torch alone)

Routes run round-robin; outputs are deleted and dirty pages flushed before every run, outside the timing.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Measure, bench_args, report, run_once

DCP_TO_PT = (
    "import sys\n"
    "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
    "dcp_to_torch_save(sys.argv[1], sys.argv[2])"
)
DCP_TO_ST = (
    "import sys, warnings; warnings.simplefilter('ignore')\n"
    "from torch.distributed.checkpoint import FileSystemReader\n"
    "from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner\n"
    "from torch.distributed.checkpoint.state_dict_loader import _load_state_dict\n"
    "from safetensors.torch import save_file\n"
    "sd = {}\n"
    "_load_state_dict(sd, storage_reader=FileSystemReader(sys.argv[1]), planner=_EmptyStateDictLoadPlanner(), no_dist=True)\n"
    "save_file({k: v.contiguous() for k, v in sd['model'].items()}, sys.argv[2])"
)


def _rank(rank: int, port: int, out: str, layers: int, hidden: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    g = torch.Generator().manual_seed(0)
    model = {}
    for i in range(layers):
        for name, shard in (("q", 0), ("k", 0), ("v", 0), ("o", 0), ("up", 0), ("gate", 0), ("down", 1)):
            full = torch.randn(hidden, hidden, generator=g).to(torch.bfloat16)
            model[f"layers.{i}.{name}.weight"] = distribute_tensor(full, mesh, [Shard(shard)])
        model[f"layers.{i}.norm.weight"] = distribute_tensor(torch.ones(hidden), mesh, [Replicate()])
    dcp.save({"model": model, "step": 1000}, checkpoint_id=out)
    dist.barrier()
    dist.destroy_process_group()


def build(d: Path, layers: int, hidden: int) -> Path:
    out = d / f"dcp_{layers}x{hidden}"
    if (out / ".metadata").exists():
        return out
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(port, str(out), layers, hidden), nprocs=2, join=True, start_method="fork")
    return out


def main() -> None:
    args = bench_args(
        lambda ap: (
            ap.add_argument("--layers", type=int, default=12),
            ap.add_argument("--hidden", type=int, default=2048),
        )
    )
    d = Path(args.dir)
    src = build(d, args.layers, args.hidden)
    size = sum(f.stat().st_size for f in src.iterdir())
    out = d / "dcp_out"
    out.mkdir(exist_ok=True)
    exe = str(Path(sys.executable).with_name("ckptool"))
    st, pt = out / "out.safetensors", out / "out.pt"
    routes = {
        "`ckptool export --safetensors`": [exe, "export", str(src), "--safetensors", str(st)],
        "... `--no-verify`": [exe, "export", str(src), "--safetensors", str(st), "--no-verify"],
        "`dcp_to_torch_save` (to .pt)": [sys.executable, "-c", DCP_TO_PT, str(src), str(pt)],
        "torch load (as `dcp_to_torch_save`) + `save_file`": [sys.executable, "-c", DCP_TO_ST, str(src), str(st)],
    }
    results: dict[str, Measure] = {k: Measure(k, [], [], 0.0) for k in routes}
    for r in range(args.runs + 1):  # round 0 warms the page cache
        for label, cmd in routes.items():
            for p in (st, pt):
                p.unlink(missing_ok=True)
            os.sync()
            s, cpu, rss = run_once(cmd)
            if r:
                m = results[label]
                m.seconds.append(s)
                m.cpu.append(cpu)
                m.rss_mib = max(m.rss_mib, rss)
    rows = list(results.values())
    print(f"DCP folder {src.name}: {size / 2**20:.0f} MiB in {len(list(src.iterdir()))} files, {args.runs} runs")
    print(report(f"DCP ({args.layers} layers x {args.hidden}, bfloat16, 2 ranks) -> safetensors", rows, rows[2]))


if __name__ == "__main__":
    main()
