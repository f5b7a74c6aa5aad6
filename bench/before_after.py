"""Issue 14's before/after table: each class's CURRENT tests run against the CODE of a git ref.

    python bench/before_after.py [--before REF] [--after REF] [--jobs 1]

For each ref, a temporary ``git worktree`` is checked out, and this checkout's ``tests/`` and ``fixtures/`` are
copied over its own; pytest then runs each class's test files with that worktree first on ``PYTHONPATH`` (so
``import ckptool``, and the installed ``ckptool`` script the tests call, run the ref's code). A test passes
only where it passed (a collection error fails every test of its file). The table: class | tests | passing
before | passing after. The default ``--before`` is the commit before the session that built issue 14
(6c310cd, the last issue-12 commit); ``--after`` is HEAD.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The classes of issue 14 and the test files that pin each one down (paths under tests/).
CLASSES: dict[str, list[str]] = {
    "1. zip differentials (miniz's reading)": ["formats/test_zip_differential.py", "formats/test_zip_miniz.py"],
    "2. legacy, tar and TorchScript paths; corrupt pickles": [
        "formats/test_legacy_fidelity.py",
        "formats/test_torch_tar.py",
        "formats/test_corrupt_pickles.py",
        "formats/test_torchscript_scan.py",
    ],
    "3. values are torch.load's; benign kinds; labels": [
        "formats/test_value_fidelity.py",
        "formats/test_benign_kinds.py",
        "formats/test_denylist.py",
    ],
    "4. resource bounds": ["formats/test_zip_bounds.py"],
    "5. scan for CI (folders, SARIF, policy, action)": [
        "test_scanset.py",
        "test_scanset_series.py",
        "test_scanset_empty.py",
        "test_sarif.py",
        "test_policy.py",
        "test_action.py",
        "test_precommit.py",
    ],
}


def _checkout(ref: str, dest: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(dest), ref],
                   check=True, capture_output=True)  # fmt: skip
    for sub in ("tests", "fixtures"):
        shutil.rmtree(dest / sub, ignore_errors=True)
        shutil.copytree(ROOT / sub, dest / sub)
    return dest


def _run(tree: Path, files: list[str], tmp: Path) -> dict[str, str]:
    """test id -> "pass" | "fail" | "skip", for the files run against ``tree``'s code."""
    xml = tmp / "junit.xml"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp / 'pt'}",
           f"--junitxml={xml}", *[str(tree / "tests" / f) for f in files]]  # fmt: skip
    subprocess.run(cmd, cwd=tree, env=env, capture_output=True, timeout=3600)
    out: dict[str, str] = {}
    if not xml.exists():
        return out
    for case in ET.parse(xml).getroot().iter("testcase"):
        cid = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag for child in case}
        out[cid] = "fail" if tags & {"failure", "error"} else "skip" if "skipped" in tags else "pass"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="6c310cd")
    ap.add_argument("--after", default="HEAD")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ckptool-ba-") as t:
        base = Path(t)
        trees = {name: _checkout(ref, base / name) for name, ref in (("before", a.before), ("after", a.after))}
        try:
            for cls, files in CLASSES.items():
                res = {}
                for name, tree in trees.items():
                    tmp = base / f"run-{name}"
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir()
                    res[name] = _run(tree, files, tmp)
                tests = sorted(i for i, v in res["after"].items() if v != "skip")  # skipped after: not counted
                before = sum(res["before"].get(i) == "pass" for i in tests)
                after = sum(res["after"][i] == "pass" for i in tests)
                rows.append((cls, len(tests), before, after))
                print(f"| {cls} | {len(tests)} | {before} | {after} |", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True
                )
    print(f"\n`python bench/before_after.py --before {a.before} --after {a.after}`\n")
    print("| class | tests | pass before | pass after |\n|---|---:|---:|---:|")
    for cls, n, before, after in rows:
        print(f"| {cls} | {n} | {before} | {after} |")


if __name__ == "__main__":
    main()
