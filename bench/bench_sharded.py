"""Sharded export: ckptool against Hugging Face's convert routes, side by side in one run.

    python bench/bench_sharded.py [--runs 3] [--dir /tmp/ckptool-bench] [--layers 12]

Builds (once, in --dir) a Llama-style model as a sharded ``pytorch_model-0000K-of-0000N.bin`` folder
written by ``huggingface_hub.save_torch_state_dict`` (``--layers`` blocks of seven 1024 x 2816 / 1024 x 1024
bfloat16 matrices plus norms, an embedding tied to the output head, shards of at most 150 MB), then converts
it to sharded safetensors (``--max-shard-size 150MB``) by each route, in fresh processes, round-robin
(median wall and CPU time, ratios against HF's per-shard route, the child's peak RSS):

  - ckptool export SRC --safetensors OUT --max-shard-size 150MB   (streamed, bit-exact check: the default)
  - ... --no-verify
  - HF's convert route: for each .bin shard, ``torch.load`` it whole, drop the shared names as
    ``_remove_duplicate_names`` does, ``safetensors.torch.save_file`` it, then write the index
    (what ``transformers``' / safetensors' convert scripts do: one shard in memory at a time)
  - huggingface_hub whole-model route: load every shard (``torch.load``), then
    ``save_torch_state_dict`` (the whole model in memory)

Before each run the output folder is deleted and dirty pages are flushed (untimed); the source stays in the
page cache after the warm-up round, for every route alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Measure, bench_args, report, run_once

HF_PER_SHARD = r"""
import json, os, sys, torch
from safetensors.torch import save_file
from huggingface_hub.serialization._torch import _remove_duplicate_names
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
index = json.load(open(os.path.join(src, "pytorch_model.bin.index.json")))
shards = list(dict.fromkeys(index["weight_map"].values()))
weight_map, meta = {}, {}
for i, shard in enumerate(shards):
    sd = torch.load(os.path.join(src, shard), map_location="cpu", weights_only=True)
    for kept, dropped in _remove_duplicate_names(sd).items():
        for d in dropped:
            meta[d] = kept
            del sd[d]
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in sd})
    del sd
total = sum(os.path.getsize(os.path.join(out, n)) for n in set(weight_map.values()))
json.dump({"metadata": {"total_size": total, **meta}, "weight_map": weight_map},
          open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
"""

HUB_WHOLE = r"""
import json, os, sys, torch
from huggingface_hub import save_torch_state_dict
src, out = sys.argv[1], sys.argv[2]
index = json.load(open(os.path.join(src, "pytorch_model.bin.index.json")))
sd = {}
for shard in dict.fromkeys(index["weight_map"].values()):
    sd.update(torch.load(os.path.join(src, shard), map_location="cpu", weights_only=True))
os.makedirs(out)
save_torch_state_dict(sd, out, max_shard_size="150MB")
"""


def build(d: Path, layers: int) -> Path:
    folder = d / f"llama-{layers}l-bin"
    if (folder / "pytorch_model.bin.index.json").exists():
        return folder
    import torch
    from huggingface_hub import save_torch_state_dict

    g = torch.Generator().manual_seed(0)
    h, ff, vocab = 1024, 2816, 8192

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": w(vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{n}.weight"] = w(h, h)
        sd[p + "mlp.gate_proj.weight"] = w(ff, h)
        sd[p + "mlp.up_proj.weight"] = w(ff, h)
        sd[p + "mlp.down_proj.weight"] = w(h, ff)
        sd[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied: one storage
    folder.mkdir(parents=True, exist_ok=True)
    # the .bin writer keeps shared tensors (torch.save keeps the aliasing); HF's safe route would drop them
    save_torch_state_dict(sd, folder, max_shard_size="150MB", safe_serialization=False)
    return folder


def interleaved(routes: list[tuple[str, list[str], Path]], runs: int, warmup: int = 1) -> list[Measure]:
    times: list[list[float]] = [[] for _ in routes]
    cpus: list[list[float]] = [[] for _ in routes]
    peaks = [0.0 for _ in routes]
    for i in range(warmup + runs):
        for k, (_label, cmd, out) in enumerate(routes):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            s, cpu, rss = run_once(cmd)
            if i >= warmup:
                times[k].append(s)
                cpus[k].append(cpu)
                peaks[k] = max(peaks[k], rss)
            shutil.rmtree(out, ignore_errors=True)
    return [Measure(label, times[k], cpus[k], peaks[k]) for k, (label, _c, _o) in enumerate(routes)]


def main() -> None:
    def options(p: object) -> None:
        p.add_argument("--layers", type=int, default=12)  # type: ignore[attr-defined]

    a = bench_args(options)
    d = Path(a.dir)
    src = build(d, a.layers)
    size = sum(f.stat().st_size for f in src.glob("*.bin")) / 1e6
    shards = len(list(src.glob("*.bin")))
    out = d / "sharded-out"
    cli = [sys.executable, "-m", "ckptool"]
    subprocess.run([*cli, "export", "--help"], check=True, capture_output=True)
    rows = interleaved(
        [
            ("ckptool export --max-shard-size 150MB", [*cli, "export", str(src), "--safetensors", str(out),
                                                       "--max-shard-size", "150MB"], out),
            ("  ... --no-verify", [*cli, "export", str(src), "--safetensors", str(out), "--max-shard-size", "150MB",
                                   "--no-verify"], out),
            ("HF convert route: each shard torch.load + save_file", [sys.executable, "-c", HF_PER_SHARD, str(src),
                                                                     str(out)], out),
            ("huggingface_hub: load all + save_torch_state_dict", [sys.executable, "-c", HUB_WHOLE, str(src),
                                                                   str(out)], out),
        ],
        a.runs,
    )  # fmt: skip
    print(
        report(
            f"{src.name}: {shards} .bin shards, {size:.0f} MB, to sharded safetensors; ratios against HF's per-shard "
            "route",
            rows,
            rows[2],
        )
    )


if __name__ == "__main__":
    main()
