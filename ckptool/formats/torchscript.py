"""TorchScript archives (``torch.jit.save``): what their ``code/`` records call, for ``ckptool scan``.

``torch.load`` hands a TorchScript archive to ``torch.jit.load``, which compiles the TorchScript source in
``<prefix>/code/**.py`` and runs it: a ``__setstate__`` method runs while the archive loads, and any method
may call ``torch.from_file``, ``torch.load`` or a custom operator. ckptool does not run or type-check
TorchScript, so it cannot vouch for that code: scan reports it (kind ``torchscript-code``) and names the
calls it can see. The text is only searched, never compiled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

MAX_CODE_BYTES = 16 << 20  # per record; TorchScript sources are kilobytes
# calls that reach files, processes or code by name, as they appear in serialized TorchScript
NOTABLE = {
    "torch.from_file": "maps a file by name",
    "torch.load": "loads another file",
    "torch.save": "writes a file",
    "torch.jit.load": "loads another archive",
    "ops.aten.from_file": "maps a file by name",
}
LOAD_HOOKS = {"__setstate__": "runs while the archive loads"}
_CALL = re.compile(rb"(?<![\w.])((?:torch|ops)(?:\.[A-Za-z_]\w*)+)\s*\(")
_DEF = re.compile(rb"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.M)
_STD_OPS = ("ops.aten.", "ops.prim.", "ops.quantized.", "ops.profiler.")


def is_code_record(name: str, prefix: str = "") -> bool:
    """A TorchScript source record: ``<prefix>code/...*.py`` (its ``.debug_pkl`` twins are pickles)."""
    rest = name[len(prefix) :] if name.startswith(prefix) else name
    return (rest.startswith("code/") or "/code/" in f"/{rest}") and name.endswith(".py")


def calls_in(code: bytes) -> tuple[list[str], list[str]]:
    """(load hooks defined, distinct dotted torch/ops calls) in a TorchScript source, in order of appearance."""
    hooks = [h for h in dict.fromkeys(m.decode() for m in _DEF.findall(code)) if h in LOAD_HOOKS]
    calls = list(dict.fromkeys(m.decode("ascii", "replace") for m in _CALL.findall(code)))
    return hooks, calls


def describe(hooks: list[str], calls: list[str]) -> str:
    parts = [f"{h} {LOAD_HOOKS[h]}" for h in hooks]
    notable = [c for c in calls if c in NOTABLE]
    custom = [c for c in calls if c.startswith("ops.") and not c.startswith(_STD_OPS) and c not in NOTABLE]
    parts += [f"{c} ({NOTABLE[c]})" for c in notable]
    if custom:
        parts.append(f"custom operators {', '.join(custom[:5])} (code registered outside the archive)")
    rest = [c for c in calls if c not in notable and c not in custom]
    if rest:
        parts.append(f"calls {', '.join(rest[:8])}{', ...' if len(rest) > 8 else ''}")
    return "; ".join(parts) if parts else "no calls found"


def code_findings(records: Iterable[tuple[str, int, Callable[[], bytes]]]) -> list[tuple[str, str]]:
    """(member, message) for each TorchScript source record, from (name, size, read) triples."""
    out = []
    for name, size, read in records:
        if size > MAX_CODE_BYTES:
            out.append((name, f"TorchScript code of {size} bytes (not searched: more than {MAX_CODE_BYTES >> 20} MB)"))
            continue
        hooks, calls = calls_in(read())
        out.append(
            (
                name,
                "TorchScript code that torch.load / torch.jit.load compiles and runs; ckptool cannot vouch for "
                f"it: {describe(hooks, calls)}",
            )
        )
    return out
