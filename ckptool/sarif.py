"""``ckptool scan --format sarif``: SARIF 2.1.0 for GitHub code scanning (torch-free, never prints).

One run, tool driver ``ckptool`` with its version and one rule per finding kind that occurs (the kind is the
rule id: ``dangerous-global``, ``hash-mismatch``, ...). One result per finding: the level is ``error`` for a
finding that fails the run and ``warning`` for one reported as a warning (``--strict`` / the policy decide);
a file that could not be scanned is an ``error`` result of rule ``scan-error``. Locations name the file by a
URI relative to the repository root (``%SRCROOT%``: ``$GITHUB_WORKSPACE`` in GitHub Actions, else the
current folder), with the byte offset of the global's opcode when scan knows it (``region.byteOffset``; a
``startLine`` of 1 as well, since code scanning wants a line). Skipped paths are tool notifications (level
``note``), not results.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .scan import ERROR, ScanReport
from .scanset import ScanFailure, ScanRun

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
DOCS = "https://github.com/OWNER/ckptool/blob/main/docs/commands/scan.md"

# kind -> (short description, security severity for code scanning (CVSS-like, as a string), tags)
RULES: dict[str, tuple[str, str]] = {
    "dangerous-global": ("A pickle references a global that runs code, resolves names, runs processes, "
                         "or touches files or the network", "9.8"),
    "unresolved-global": ("A STACK_GLOBAL imports a name built at load time: it cannot be checked", "9.8"),
    "unsafe-build": ("BUILD sets attributes on a global itself (monkey-patching on load)", "9.0"),
    "unknown-opcode": ("An opcode that has no place in a weight file (out-of-band buffers)", "8.0"),
    "unknown-global": ("A pickle references a global outside the tensor allowlist: torch.load(weights_only=True) "
                       "refuses it, pickle.load would import it", "7.0"),
    "hidden-pickle": ("Another pickle follows the first one's STOP: other loaders may run it", "8.0"),
    "torchscript-code": ("A TorchScript archive: torch.load / torch.jit.load compile and run its code, which "
                         "ckptool cannot vouch for", "8.0"),
    "parser-differential": ("The archive reads differently in ckptool and in torch's reader", "9.0"),
    "invalid-pickle": ("A pickle that does not parse: pickle.load runs every opcode before the error", "6.0"),
    "trailing-data": ("Unexplained bytes after a pickle", "4.0"),
    "hash-mismatch": ("The file name's torch.hub hash suffix does not match its sha256", "5.0"),
    "nan": ("NaN values in a floating tensor", "3.0"),
    "inf": ("Inf values in a floating tensor", "3.0"),
    "negative-running-var": ("A batch-norm running_var below zero", "3.0"),
    "corrupt": ("The reader refuses the file: sizes or structure that lie", "6.0"),
    "unsafe": ("The reader refuses the file as unsafe", "8.0"),
    "format-not-allowed": ("The file's format is not one the policy allows", "5.0"),
    "file-too-large": ("The file is larger than the policy's max-file-size", "3.0"),
    "scan-error": ("The file could not be scanned", "5.0"),
    "no-weight-files": ("A scanned folder holds no weight file ckptool recognises", "2.0"),
}  # fmt: skip


def _rule(kind: str) -> dict[str, Any]:
    text, sev = RULES.get(kind, (f"ckptool scan finding: {kind}", "5.0"))
    security = float(sev) >= 7.0 or kind.startswith(("zip-", "onnx-", "safetensors-", "index-", "dcp-"))
    return {
        "id": kind,
        "name": "".join(w.capitalize() for w in kind.split("-")),
        "shortDescription": {"text": text},
        "fullDescription": {"text": f"{text}. See ckptool's scan documentation for the finding kind '{kind}'."},
        "helpUri": DOCS,
        "help": {"text": f"{text}. Run `ckptool scan FILE` for the details of each finding."},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["security"] if security else ["correctness"], "security-severity": sev},
    }


def _uri(path: str, root: str) -> tuple[str, str | None]:
    """(uri, uriBaseId): relative to the root when the file is inside it, else an absolute file URI."""
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, root)
    except ValueError:  # another drive (Windows)
        rel = os.pardir
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return Path(full).as_uri(), None
    return quote(rel.replace(os.sep, "/")), "%SRCROOT%"


def _location(path: str, root: str, offset: int | None = None, where: str | None = None) -> dict[str, Any]:
    uri, base = _uri(path, root)
    art: dict[str, Any] = {"uri": uri}
    if base:
        art["uriBaseId"] = base
    phys: dict[str, Any] = {"artifactLocation": art}
    region: dict[str, Any] = {"startLine": 1}
    if offset is not None and offset >= 0:
        region.update(byteOffset=offset, byteLength=1)
    phys["region"] = region
    loc: dict[str, Any] = {"physicalLocation": phys}
    if where:
        loc["logicalLocations"] = [{"fullyQualifiedName": where, "kind": "member"}]
    return loc


def _offset(report: ScanReport, kind: str, message: str, where: str | None) -> int | None:
    """The file offset of the global a finding names, when scan knows it (-1 inside compressed members)."""
    if kind not in ("dangerous-global", "unknown-global"):
        return None
    for g in report.globals:
        if g.where == where and f"references {g.name}" in message and g.offset >= 0:
            return g.offset
    return None


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def to_sarif(run: ScanRun, *, root: str | None = None, version: str | None = None) -> dict[str, Any]:
    """The SARIF 2.1.0 log of a scan run. ``root``: the repository root that URIs are relative to (default
    ``$GITHUB_WORKSPACE``, else the current folder)."""
    if version is None:
        from . import __version__ as version
    root = os.path.abspath(root or os.environ.get("GITHUB_WORKSPACE") or os.getcwd())
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}

    def rule_index(kind: str) -> int:
        if kind not in index:
            index[kind] = len(rules)
            rules.append(_rule(kind))
        return index[kind]

    results: list[dict[str, Any]] = []
    for r in run.results:
        if isinstance(r, ScanFailure):
            results.append({
                "ruleId": "scan-error", "ruleIndex": rule_index("scan-error"), "level": "error",
                "message": {"text": r.error},
                "locations": [_location(r.path, root)],
                "partialFingerprints": {"ckptool/v1": _fingerprint("scan-error", r.path, r.message)},
            })  # fmt: skip
            continue
        for f in r.findings:
            text = f"{f.where}: {f.message}" if f.where else f.message
            results.append({
                "ruleId": f.kind, "ruleIndex": rule_index(f.kind),
                "level": "error" if f.severity == ERROR else "warning",
                "message": {"text": text},
                "locations": [_location(r.path, root, _offset(r, f.kind, f.message, f.where), f.where)],
                "partialFingerprints": {"ckptool/v1": _fingerprint(f.kind, r.path, f.where or "", f.message)},
                "properties": {"format": r.format, "severity": f.severity},
            })  # fmt: skip
    notes = [
        {"level": "note", "message": {"text": f"skipped {s.path}: {s.reason}"}, "locations": [_location(s.path, root)]}
        for s in run.skipped
    ]
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "ckptool",
                        "version": version,
                        "semanticVersion": version,
                        "informationUri": DOCS,
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": Path(root).as_uri() + "/"}},
                "invocations": [
                    {
                        "executionSuccessful": not run.failures,
                        "toolExecutionNotifications": notes,
                    }
                ],
                "results": results,
            }
        ],
    }
