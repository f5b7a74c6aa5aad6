"""The import graph, read from the source with ``ast``: no cycles, no lower layer importing a higher one, and
no torch below the runtime (DESIGN.md, "What never happens")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ckptool

PACKAGE = Path(ckptool.__file__).parent
HEAVY = ("torch", "torchvision", "onnxruntime")

# first-level unit -> rank; a module may import its own unit or a unit of lower or equal rank. ``formats`` builds
# Checkpoints, so it sits above checkpoint.py, which imports no format.
RANKS = {
    "errors": 0, "dtypes": 0, "_extras": 0, "_gc": 0,
    "sources": 1,
    "checkpoint": 2,
    "formats": 3, "arch": 3,
    "layers": 4, "compat": 4, "diff": 4, "scan": 4,
    "policy": 5, "scanset": 6, "sarif": 7,  # scan for CI: the policy file, folders and globs, SARIF
    "runtime": 5,
    "parity": 6, "predict": 7, "labels": 6,
    "convert": 8,
    "extract": 9,
    "api": 10,
    "cli": 11,
    "__init__": 12, "__main__": 12,
}  # fmt: skip
TORCH_FREE_UNITS = ("_gc", "sources", "formats", "checkpoint", "arch", "layers", "compat", "diff", "scan")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.with_suffix("").relative_to(PACKAGE.parent).parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    top |= {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try)) for n in ast.walk(s)}
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        level = id(node) in top
        if isinstance(node, ast.Import):
            out += [(a.name, level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, level))
            out += [(f"{mod}.{a.name}", level) for a in node.names if f"{mod}.{a.name}" in MODULES]
    return out


def _edges(*, module_level_only: bool = False) -> dict[str, set[str]]:
    """ckptool module -> the ckptool modules it imports (a parent package is never an edge: Python imports it
    before any of its modules anyway)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for mod, level in _imports(name, path):
            if module_level_only and not level:
                continue
            if mod in MODULES and mod != name and not name.startswith(mod + "."):
                deps.add(mod)
        graph[name] = deps
    return graph


def _unit(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_walk_sees_the_package() -> None:
    graph = _edges()
    assert len(MODULES) > 40
    assert "ckptool.formats.unpickler" in graph["ckptool.formats.torch_zip"]
    assert "ckptool.checkpoint" in graph["ckptool.formats.safetensors"]
    assert set(RANKS) >= {_unit(m) for m in MODULES}, "a new top-level module needs a rank here"


def test_the_import_graph_has_no_cycle() -> None:
    graph = _edges()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append([*path[path.index(d) :], d] if d in path else [n, d])
            elif d not in state:
                visit(d, [*path, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = [
        f"{a} imports {b}"
        for a, deps in _edges().items()
        for b in sorted(deps)
        if _unit(a) != _unit(b) and RANKS[_unit(b)] > RANKS[_unit(a)]
    ]
    assert wrong == []


def test_checkpoint_imports_no_format() -> None:
    assert not {d for d in _edges()["ckptool.checkpoint"] if d.startswith("ckptool.formats")}


def _torch_free(name: str) -> bool:
    if _unit(name) not in TORCH_FREE_UNITS:
        return False
    leaf = name.rpartition(".")[2]
    return not (name.startswith("ckptool.arch.") and (leaf.endswith("_torch") or leaf == "custom"))


def test_the_torch_free_layers_never_import_torch() -> None:
    direct = [
        f"{name} imports {mod}"
        for name, path in MODULES.items()
        if _torch_free(name)
        for mod, _level in _imports(name, path)
        if mod.split(".")[0] in HEAVY
    ]
    assert direct == []
    # and nothing they import at module level does either
    graph = _edges(module_level_only=True)
    heavy = {n for n, p in MODULES.items() if any(m.split(".")[0] in HEAVY and lvl for m, lvl in _imports(n, p))}
    for name in filter(_torch_free, MODULES):
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += graph[n]
        assert not seen & heavy, f"{name} loads {sorted(seen & heavy)} at import"


@pytest.mark.parametrize("module", ["ckptool.formats", "ckptool.scan", "ckptool.cli.inspect"])
def test_importing_does_not_load_torch(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(proc.stdout) == []


def test_inspect_does_not_load_torch(tmp_path: Path) -> None:
    f = tmp_path / "a.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    code = (
        "import sys, json\n"
        "from ckptool.cli.app import main\n"
        f"sys.argv = ['ckptool', 'inspect', {str(f)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    code_, heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    assert code_ in (0, None), proc.stdout
    assert heavy == []
