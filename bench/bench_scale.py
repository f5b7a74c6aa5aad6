"""Tensor counts and a Llama-style layout: ckptool against what users do today, side by side in one run.

    pip install -e '.[bench]'            # picklescan (and modelscan, where it installs)
    python bench/bench_scale.py [--runs 3] [--dir /tmp/ckptool-bench-scale] [--counts 1000,10000,30000,100000]
                                [--no-llama] [--only scan,picklescan]

1. The curve: a state_dict of N float32 tensors of 4 elements (torch zip, and the same as safetensors), for N in
   --counts. Routes: `ckptool inspect --json` against `torch.load(mmap=True)` + print(k, v.size()); `ckptool
   scan` (and `--no-values`) against `picklescan -p`; on safetensors, `ckptool inspect --json` / `scan`
   against `safe_open` + print(k, shape) (and modelscan when it is installed). Two reference lines, the
   floors: the C unpickler and json with no check at all, trusting the file, printing the same tensor rows as
   `inspect --json`, the pickle found by zipfile or by ckptool's own zip directory reader. Per-tensor cost is
   the slope between the smallest and the largest N.
2. A Llama-style layout: 32 layers x 9 tensors, bfloat16, hidden 1536, MLP 4096, vocab 32000 (~1.9 GB), with
   the output head tied to the embedding (one storage). Routes: inspect, export to safetensors (single file;
   sharded when `export --max-shard-size` exists), diff and scan, against torch.load + print, torch.load +
   safetensors.torch.save_file (HF's convert route: shared tensors cloned), torch.load of both + torch.equal,
   and picklescan.

Every route runs in fresh processes; medians, ratios, and each child's peak RSS (see _harness.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Measure, bench_args, measure, report

TORCH_LIST = (
    "import sys, torch; sd = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
    "for k, v in sd.items(): print(k, v.size())"
)
ST_LIST = (
    "import sys; from safetensors import safe_open\n"
    "with safe_open(sys.argv[1], 'np') as f:\n"
    "    for k in f.keys(): print(k, f.get_slice(k).get_shape())"
)
HF_CONVERT = (
    "import sys, torch; from safetensors.torch import save_file\n"
    "sd = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
    "seen = {}\n"
    "for k, v in list(sd.items()):\n"
    "    p = v.untyped_storage().data_ptr()\n"
    "    if p in seen: sd[k] = v.clone()\n"
    "    seen[p] = k\n"
    "save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])"
)
TORCH_DIFF = (
    "import sys, torch; from safetensors.torch import load_file\n"
    "a = torch.load(sys.argv[1], mmap=True, weights_only=True); b = load_file(sys.argv[2])\n"
    "assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)"
)
# The floors: what listing a checkpoint costs with the C unpickler and no care at all. They trust the file (no
# check of any kind: no allowlist but their own find_class, no guard, no CRC) and print what `inspect --json`
# prints for each tensor (tests/bench checks that). Reference lines, not tools to use. The listing they share,
# from `data`, the pickle's bytes:
_TRUSTING_LIST = (
    "import io, json, math, pickle\n"
    "SIZE = {'FloatStorage': ('float32', 4), 'HalfStorage': ('float16', 2), 'BFloat16Storage': ('bfloat16', 2)}\n"
    "class U(pickle.Unpickler):\n"
    "    def find_class(self, module, name):\n"
    "        if name == 'OrderedDict': return dict\n"
    "        if name.endswith('Storage'): return SIZE[name]\n"
    "        return lambda storage, offset, size, stride, *rest: (storage[1], size)\n"
    "    def persistent_load(self, pid): return pid\n"
    "sd = U(io.BytesIO(data)).load()\n"
    "rows = [{'name': k, 'shape': list(s), 'dtype': d[0], 'numel': math.prod(s), 'nbytes': math.prod(s) * d[1]}\n"
    "        for k, (d, s) in sd.items()]\n"
    "print(json.dumps({'tensors': rows}))"
)
# the pickle found by zipfile (whose directory reader is Python code)
TRUSTING_FLOOR = (
    "import sys, zipfile\n"
    "z = zipfile.ZipFile(sys.argv[1])\n"
    "data = z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))\n" + _TRUSTING_LIST
)
# the pickle found by ckptool's own zip directory reader (about 5x faster than zipfile's at 100k entries)
TRUSTING_FLOOR_CKPT_DIR = (
    "import sys\n"
    "from ckptool.formats import _zipread\n"
    "from ckptool.sources import open_source\n"
    "src = open_source(sys.argv[1]); ar = _zipread.open_archive(src); e = ar.record('data.pkl')\n"
    "lh = ar.local_header(e); at = e.header_offset + _zipread.LDH_SIZE + lh[9] + lh[10]\n"
    "data = src.buffer()[at : at + e.size]\n" + _TRUSTING_LIST
)
CK = [sys.executable, "-m", "ckptool"]


def build_counts(d: Path, n: int) -> tuple[Path, Path]:
    pt, st = d / f"n{n}.pth", d / f"n{n}.safetensors"
    if not (pt.exists() and st.exists()):
        import torch
        from safetensors.torch import save_file

        sd = {f"layers.{i}.weight": torch.zeros(4) for i in range(n)}
        torch.save(sd, pt)
        save_file(sd, st)
    return pt, st


def build_llama(d: Path) -> Path:
    path = d / "llama_like.pth"
    if not path.exists():
        import torch

        g = torch.Generator().manual_seed(0)
        hidden, mlp, vocab = 1536, 4096, 32000

        def w(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

        sd = {"model.embed_tokens.weight": w(vocab, hidden)}
        for i in range(32):
            p = f"model.layers.{i}."
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                sd[p + f"self_attn.{name}.weight"] = w(hidden, hidden)
            sd[p + "mlp.gate_proj.weight"] = w(mlp, hidden)
            sd[p + "mlp.up_proj.weight"] = w(mlp, hidden)
            sd[p + "mlp.down_proj.weight"] = w(hidden, mlp)
            sd[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
            sd[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        sd["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied: one storage
        torch.save(sd, path)
    return path


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def curve(d: Path, counts: list[int], runs: int, only: list[str] | None = None) -> list[str]:
    out: list[str] = []
    rows: dict[str, dict[int, Measure]] = {}
    for n in counts:
        pt, st = build_counts(d, n)
        routes = [
            ("ckptool inspect --json (zip)", [*CK, "inspect", "--json", str(pt)]),
            ("torch.load(mmap=True) + print", [sys.executable, "-c", TORCH_LIST, str(pt)]),
            ("floor: zipfile + C pickle + json, trusting (zip)", [sys.executable, "-c", TRUSTING_FLOOR, str(pt)]),
            (
                "floor: ckptool's zip directory + C pickle + json, trusting (zip)",
                [sys.executable, "-c", TRUSTING_FLOOR_CKPT_DIR, str(pt)],
            ),
            ("ckptool scan (zip)", [*CK, "scan", str(pt)]),
            ("ckptool scan --no-values (zip)", [*CK, "scan", "--no-values", str(pt)]),
        ]
        if have("picklescan"):
            routes.append(("picklescan -p (zip)", ["picklescan", "-p", str(pt)]))
        routes += [
            ("ckptool inspect --json (safetensors)", [*CK, "inspect", "--json", str(st)]),
            ("safe_open + print", [sys.executable, "-c", ST_LIST, str(st)]),
            ("ckptool scan (safetensors)", [*CK, "scan", str(st)]),
        ]
        if have("modelscan"):
            routes.append(("modelscan (safetensors)", ["modelscan", "-p", str(st)]))
        if only:
            routes = [r for r in routes if any(o in r[0] for o in only)]
        ms = []
        for label, cmd in routes:
            m = measure(f"{label}, N={n:,}", cmd, runs=runs, warmup=0)
            rows.setdefault(label, {})[n] = m
            ms.append(m)
        out.append(report(f"{n:,} tensors", ms, ms[0]))
        for a, b in (
            ("torch.load(mmap=True) + print", "ckptool inspect --json (zip)"),
            ("torch.load(mmap=True) + print", "floor: zipfile + C pickle + json, trusting (zip)"),
            ("floor: zipfile + C pickle + json, trusting (zip)", "ckptool inspect --json (zip)"),
            ("torch.load(mmap=True) + print", "floor: ckptool's zip directory + C pickle + json, trusting (zip)"),
            ("picklescan -p (zip)", "ckptool scan (zip)"),
            ("picklescan -p (zip)", "ckptool scan --no-values (zip)"),
            ("safe_open + print", "ckptool inspect --json (safetensors)"),
        ):
            if a in rows and b in rows:
                out.append(f"- {a} / {b}: {rows[a][n].median / rows[b][n].median:.2f}x")
        out.append("")
        print("\n".join(out[-8:]), flush=True)
    lo, hi = min(counts), max(counts)
    out.append("### Per-tensor cost (slope between the smallest and the largest N, median wall time)\n")
    for label, by_n in rows.items():
        if lo in by_n and hi in by_n and hi > lo:
            slope = (by_n[hi].median - by_n[lo].median) / (hi - lo) * 1e6
            out.append(f"- {label}: {slope:.1f} us per tensor")
    return out


def llama(d: Path, runs: int) -> list[str]:
    pt = build_llama(d)
    st = d / "llama_like.safetensors"
    if not st.exists():
        subprocess.run([*CK, "export", str(pt), "--safetensors", str(st)], check=True, capture_output=True)
    o1, o2 = d / "llama_out.safetensors", d / "llama_hf.safetensors"
    sharded = "--max-shard-size" in subprocess.run([*CK, "export", "--help"], capture_output=True, text=True).stdout
    out: list[str] = []

    def fresh(p: Path) -> None:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    groups: list[tuple[str, list[tuple[str, list[str], Path | None]]]] = [
        (
            "inspect",
            [
                ("ckptool inspect", [*CK, "inspect", str(pt)], None),
                ("torch.load(mmap=True) + print", [sys.executable, "-c", TORCH_LIST, str(pt)], None),
            ],
        ),
        (
            "export to safetensors",
            [
                ("ckptool export --safetensors", [*CK, "export", str(pt), "--safetensors", str(o1), "--force"], o1),
                ("torch.load + save_file (HF convert)", [sys.executable, "-c", HF_CONVERT, str(pt), str(o2)], o2),
            ],
        ),
        (
            "diff (torch zip vs safetensors, every byte)",
            [
                ("ckptool diff", [*CK, "diff", str(pt), str(st)], None),
                ("torch.load + load_file + torch.equal", [sys.executable, "-c", TORCH_DIFF, str(pt), str(st)], None),
            ],
        ),
        (
            "scan",
            [
                ("ckptool scan", [*CK, "scan", str(pt)], None),
                ("ckptool scan --no-values", [*CK, "scan", "--no-values", str(pt)], None),
            ]
            + ([("picklescan -p", ["picklescan", "-p", str(pt)], None)] if have("picklescan") else []),
        ),
    ]
    if sharded:
        od = d / "llama_sharded"
        groups[1][1].append(
            (
                "ckptool export --max-shard-size 500MB",
                [*CK, "export", str(pt), "--safetensors", str(od), "--max-shard-size", "500MB", "--force"],
                od,
            )
        )
    for title, routes in groups:
        ms = []
        for label, cmd, target in routes:
            if target is not None:
                fresh(target)
            ms.append(measure(label, cmd, runs=runs, warmup=0))
        out.append(report(f"Llama-style, {pt.stat().st_size / 1e9:.2f} GB: {title}", ms, ms[0]))
        out.append("")
        print("\n".join(out[-2:]), flush=True)
    for p in (o1, o2):
        fresh(p)
    return out


def main() -> None:
    def extra(ap: object) -> None:
        ap.add_argument("--counts", default="1000,10000,30000,100000")  # type: ignore[attr-defined]
        ap.add_argument("--no-llama", action="store_true")  # type: ignore[attr-defined]
        ap.add_argument("--only", default="", help="routes whose label holds one of these (comma-separated)")  # type: ignore[attr-defined]

    a = bench_args(extra)
    a.dir = a.dir if a.dir != "/tmp/ckptool-bench" else "/tmp/ckptool-bench-scale"
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    out = curve(d, [int(x) for x in a.counts.split(",")], a.runs, [o for o in a.only.split(",") if o])
    if not a.no_llama:
        out += ["", *llama(d, a.runs)]
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
