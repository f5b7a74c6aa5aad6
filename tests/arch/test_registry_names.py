"""The registry knows no family: no shared module names a registered family or variant."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ckptool
from ckptool.arch.family import family_modules, list_families

PACKAGE = Path(ckptool.__file__).resolve().parent


def _family_files() -> set[Path]:
    arch = PACKAGE / "arch"
    out = set()
    for mod in family_modules():
        out.add(arch / f"{mod}.py")
        out.add(arch / f"{mod}_torch.py")
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Every identifier and every string literal (docstrings and comments aside) of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.alias):
            out.append((node.lineno, node.name))
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
    return out


def test_families_are_found_and_registered():
    fams = list_families()
    assert len(fams) >= 1 and all(f.variants for f in fams)
    assert {f.__class__.__module__.rsplit(".", 1)[-1] for f in fams} <= set(family_modules())


def test_no_family_or_variant_name_outside_its_module():
    words = set()
    for fam in list_families():
        words.add(fam.name)
        words.update(fam.variants)
    pattern = re.compile(
        r"(?<![a-z0-9])(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")(?![a-z0-9])", re.I
    )
    own = _family_files()
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in own:
            continue
        for line, text in _code_words(path):
            for m in pattern.finditer(text):
                hits.append(f"{path.relative_to(PACKAGE)}:{line}: {m.group(0)!r} in {text[:80]!r}")
    assert not hits, "family names hard-coded outside their modules:\n" + "\n".join(hits)


def test_the_check_can_fail(tmp_path):
    """The scanner sees a family name in code (so the test above is not vacuous)."""
    name = list_families()[0].variants[0]
    f = tmp_path / "x.py"
    f.write_text(f'"""doc {name}"""\nX = "{name}"\n')
    assert [w for _, w in _code_words(f)] == ["X", name]
