"""The scan policy of a repository: ``[tool.ckptool]`` in ``pyproject.toml`` or a ``.ckptool.toml`` (torch-free).

Found upward from the current folder (then from each scanned path's folder), stopping at a repository root (a
folder with ``.git``); the nearest file that holds a policy wins, ``.ckptool.toml`` before ``pyproject.toml`` in
one folder. ``--policy FILE`` names one; ``--no-policy`` ignores them. Keys (all optional)::

    [tool.ckptool]                       # in .ckptool.toml: the same keys at the top level, or under [tool.ckptool]
    allowed-formats = ["safetensors"]    # any other format is a finding (format-not-allowed)
    allow-globals = ["argparse.Namespace"]  # recorded as data, like --allow-global (dangerous ones never)
    max-file-size = "2 GB"               # a larger file is a finding (file-too-large) and is not read
    fail-on = ["dangerous-global", ...]  # only these kinds fail the run; the others are warnings
    warn-on = ["nan", "inf"]             # or: these kinds are warnings; every other kind fails
    strict = true                        # the file-name hash suffix fails too (like --strict)
    require-weights = true               # a scanned folder without any weight file fails (no-weight-files)

Dangerous globals, unresolved globals, unsafe BUILDs and unknown opcodes always fail, whatever the policy says.
A policy that cannot be read, an unknown key, format or kind, or a dangerous global to allow is an error (exit 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import tomllib

from .errors import UsageError
from .scan import DEFAULT_WARN, NEVER_WARN

FILES = (".ckptool.toml", "pyproject.toml")
KEYS = ("allowed-formats", "allow-globals", "max-file-size", "fail-on", "warn-on", "strict", "require-weights")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20}
_UNITS.update({"gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12})


@dataclass(frozen=True)
class Policy:
    """A parsed policy. ``path`` is the file it came from (None: the defaults)."""

    path: str | None = None
    allowed_formats: frozenset[str] | None = None
    allow_globals: tuple[str, ...] = ()
    max_file_size: int | None = None
    fail_on: frozenset[str] | None = None
    warn_on: frozenset[str] = frozenset()
    strict: bool = False
    require_weights: bool = False  # a folder with no weight file is an error, not a warning

    def severity(self, kind: str, *, strict: bool = False) -> str:
        """error or warning for a finding kind (``strict``: the --strict flag: everything fails)."""
        if strict or kind in NEVER_WARN or (kind == "no-weight-files" and self.require_weights):
            return "error"
        if self.fail_on is not None:
            return "error" if kind in self.fail_on else "warning"
        warn = self.warn_on | (frozenset() if self.strict else DEFAULT_WARN)
        return "warning" if kind in warn else "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "allowed-formats": sorted(self.allowed_formats) if self.allowed_formats is not None else None,
            "allow-globals": list(self.allow_globals),
            "max-file-size": self.max_file_size,
            "fail-on": sorted(self.fail_on) if self.fail_on is not None else None,
            "warn-on": sorted(self.warn_on),
            "strict": self.strict,
            "require-weights": self.require_weights,
        }


def parse_size(value: Any, *, where: str) -> int:
    """Bytes from an int or a string like ``"2 GB"``, ``"500MiB"``."""
    if isinstance(value, bool):
        raise UsageError(f"max-file-size {value!r} is not a size", path=where, hint='e.g. max-file-size = "2 GB"')
    if isinstance(value, int) and value >= 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"max-file-size {value!r} is not a size", path=where, hint='e.g. max-file-size = "2 GB"')
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def known_formats() -> frozenset[str]:
    from .formats.sniff import FORMATS

    return frozenset(FORMATS) | {"pickle", "torchscript"}


def _strings(table: dict[str, Any], key: str, where: str) -> list[str] | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{key} must be a list of strings", path=where)
    return value


def from_table(table: dict[str, Any], where: str) -> Policy:
    """The Policy of a ``[tool.ckptool]`` table; UsageError naming the file for anything it cannot mean."""
    from .formats.unpickler import check_allowable

    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise UsageError(f"unknown policy key {unknown[0]!r}", path=where, hint=f"known keys: {', '.join(KEYS)}")
    formats = _strings(table, "allowed-formats", where)
    if formats is not None:
        bad = sorted(set(formats) - known_formats())
        if bad:
            raise UsageError(
                f"allowed-formats: unknown format {bad[0]!r}",
                path=where,
                hint=f"formats: {', '.join(sorted(known_formats()))}",
            )
    allow = _strings(table, "allow-globals", where) or []
    try:
        check_allowable(allow)
    except UsageError as e:
        raise UsageError(e.message.replace("--allow-global", "allow-globals"), path=where, hint=e.hint) from None
    fail_on = _strings(table, "fail-on", where)
    warn_on = _strings(table, "warn-on", where) or []
    if fail_on is not None and warn_on:
        raise UsageError("fail-on and warn-on together: use one of them", path=where)
    never = sorted(set(warn_on) & NEVER_WARN)
    if never:
        raise UsageError(f"warn-on: {never[0]} always fails, it cannot be a warning", path=where)
    strict = table.get("strict", False)
    if not isinstance(strict, bool):
        raise UsageError("strict must be true or false", path=where)
    require = table.get("require-weights", False)
    if not isinstance(require, bool):
        raise UsageError("require-weights must be true or false", path=where)
    size = table.get("max-file-size")
    return Policy(
        path=where,
        allowed_formats=frozenset(formats) if formats is not None else None,
        allow_globals=tuple(allow),
        max_file_size=None if size is None else parse_size(size, where=where),
        fail_on=frozenset(fail_on) if fail_on is not None else None,
        warn_on=frozenset(warn_on),
        strict=strict,
        require_weights=require,
    )


def _table(path: str) -> dict[str, Any] | None:
    """The policy table in a file (None: the file has none)."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as e:
        raise UsageError(f"cannot read the policy file ({e.strerror or e})", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"not valid TOML ({e})", path=path) from None
    tool = doc.get("tool", {}).get("ckptool") if isinstance(doc.get("tool"), dict) else None
    if tool is not None:
        if not isinstance(tool, dict):
            raise UsageError("[tool.ckptool] must be a table", path=path)
        return tool
    if os.path.basename(path) == ".ckptool.toml":
        return {k: v for k, v in doc.items() if k != "tool"}
    return None


def load(path: str) -> Policy:
    """The policy in ``path`` (``--policy FILE``): a .ckptool.toml or a pyproject.toml with [tool.ckptool]."""
    table = _table(path)
    if table is None:
        raise UsageError("holds no [tool.ckptool] table", path=path)
    return from_table(table, path)


def find(starts: Iterable[str]) -> str | None:
    """The nearest policy file upward from each start folder in turn (stopping at a repository root)."""
    seen: set[str] = set()
    for start in starts:
        folder = os.path.abspath(start)
        if not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        while folder not in seen:
            seen.add(folder)
            for name in FILES:
                cand = os.path.join(folder, name)
                if os.path.isfile(cand) and _table(cand) is not None:
                    return cand
            parent = os.path.dirname(folder)
            if os.path.exists(os.path.join(folder, ".git")) or parent == folder:
                break
            folder = parent
    return None


def discover(paths: Sequence[str | os.PathLike[str]], *, explicit: str | None = None, use: bool = True) -> Policy:
    """The policy for a scan of ``paths``: ``explicit`` (--policy), else the one found from the current folder,
    else from the scanned paths' folders; the defaults when there is none or ``use`` is False."""
    if explicit is not None:
        return load(explicit)
    if not use:
        return Policy()
    found = find([os.getcwd(), *(os.fspath(p) for p in paths)])
    return load(found) if found else Policy()
