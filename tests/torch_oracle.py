"""What ``torch.load`` returns for a file: the oracle of the fidelity tests (tests/formats/test_*_fidelity.py).

``weights_only=True`` runs in-process (torch's own restricted unpickler). ``weights_only=False`` runs the real
pickle machinery, so it only ever sees the benign files these tests build, and runs in a child process with
its address space capped (a corrupt pickle can make the C unpickler allocate tens of GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

_CHILD = textwrap.dedent(
    r"""
    import json, resource, sys, warnings
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import torch
    warnings.simplefilter("ignore")

    def flat(obj, prefix, out, depth=0):
        if isinstance(obj, torch.Tensor):
            out[prefix] = describe(obj)
        elif isinstance(obj, dict) and depth < 6:
            for k, v in obj.items():
                flat(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
        elif isinstance(obj, (list, tuple)) and depth < 6:
            for i, v in enumerate(obj):
                flat(v, f"{prefix}.{i}" if prefix else str(i), out, depth + 1)
        else:
            out[prefix] = {"value": repr(obj)[:200], "type": type(obj).__name__}

    def describe(t):
        d = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "layout": str(t.layout)}
        if t.is_quantized:
            d["int_repr"] = t.int_repr().contiguous().view(torch.uint8).numpy().tobytes().hex()
            d["dequant"] = t.dequantize().contiguous().view(torch.uint8).numpy().tobytes().hex()
            return d
        if t.layout != torch.strided:
            d["dense"] = t.to_dense().contiguous().view(torch.uint8).numpy().tobytes().hex()
            return d
        t = t.resolve_conj().resolve_neg().detach().contiguous()
        d["hex"] = t.view(torch.uint8).numpy().tobytes().hex() if t.numel() else ""
        return d

    res = {}
    for path in sys.argv[2:]:
        try:
            obj = torch.load(path, weights_only=sys.argv[1] == "1", map_location="cpu")
            out = {}
            flat(obj, "", out)
            res[path] = {"ok": True, "tensors": out}
        except BaseException as e:
            res[path] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(json.dumps(res))
    """
)


def torch_load(paths: list[Path], *, weights_only: bool) -> dict[str, dict[str, Any]]:
    """{path: {"ok": True, "tensors": {name: {dtype, shape, hex}}} | {"ok": False, "error": ...}} for each
    path, from ``torch.load`` in a child process (one process for all paths)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "1" if weights_only else "0", *map(str, paths)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ckptool_hex(ck: Any, name: str) -> str:
    """A tensor's values as ckptool reads them, in the oracle's encoding (contiguous little-endian bytes)."""
    return ck.read_bytes(ck[name]).hex()
