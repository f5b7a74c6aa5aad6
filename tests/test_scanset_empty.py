"""A scanned folder with no weight file: a ``no-weight-files`` report naming what was skipped. A warning by
default (exit 0: a repository without weights is normal for a CI step that scans everything), a failing
finding (exit 1) with ``require-weights = true`` in the policy or ``--strict``; a glob that matches nothing
and a path that does not exist stay errors (exit 2: a typo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptool.errors import UsageError
from ckptool.policy import from_table
from ckptool.scanset import ScanOptions, scan_paths


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "repo" / "docs"
    d.mkdir(parents=True)
    (d / "a.txt").write_text("hello\n")
    (d / "b.gz").write_bytes(b"\x1f\x8b" + bytes(40))
    return d


def test_default_is_a_warning_with_the_skipped_list(docs: Path, cli) -> None:
    r = cli("scan", docs, "--json", "--no-policy")
    assert r.exit_code == 0, r.stdout
    doc = json.loads(r.stdout)
    (f,) = doc["files"]
    assert f["path"] == str(docs) and f["safe"] is True and f["format"] == "folder"
    assert [(x["kind"], x["severity"]) for x in f["findings"]] == [("no-weight-files", "warning")]
    assert "all 2 of its files were skipped" in f["findings"][0]["message"]
    assert {Path(s["path"]).name: s["reason"] for s in doc["skipped"]} == {
        "a.txt": "not a checkpoint ckptool recognises (torch zip, torch legacy, safetensors, ONNX)",
        "b.gz": "a gzip file",
    }


def test_an_empty_folder(tmp_path: Path, cli) -> None:
    (tmp_path / "none").mkdir()
    r = cli("scan", tmp_path / "none", "--no-policy")
    assert r.exit_code == 0 and "it is empty" in r.stdout


def test_strict_and_the_policy_make_it_fail(docs: Path, cli) -> None:
    assert cli("scan", docs, "--strict", "--no-policy").exit_code == 1
    (docs.parent / ".ckptool.toml").write_text("require-weights = true\n")
    r = cli("scan", docs, "--json", "--policy", docs.parent / ".ckptool.toml")
    assert r.exit_code == 1
    f = json.loads(r.stdout)["files"][0]
    assert f["safe"] is False and f["findings"][0]["severity"] == "error"
    r = cli("scan", docs, "--format", "sarif", "--policy", docs.parent / ".ckptool.toml")
    res = json.loads(r.stdout)["runs"][0]["results"]
    assert [(x["ruleId"], x["level"]) for x in res] == [("no-weight-files", "error")]


def test_a_folder_with_weights_has_no_such_report(docs: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, docs / "m.pth")
    run = scan_paths([docs], ScanOptions(policy=from_table({"require-weights": True}, "p.toml")))
    assert [r.path for r in run.reports] == [str(docs / "m.pth")] and run.reports[0].safe


def test_a_typo_stays_an_error(tmp_path: Path, cli) -> None:
    assert cli("scan", tmp_path / "nope", "--no-policy").exit_code == 2
    assert cli("scan", str(tmp_path / "*.pth"), "--no-policy").exit_code == 2


def test_the_policy_key_is_checked() -> None:
    with pytest.raises(UsageError, match="require-weights must be true or false"):
        from_table({"require-weights": "yes"}, "p.toml")
    assert from_table({"require-weights": True}, "p.toml").to_dict()["require-weights"] is True
