"""The torch.hub hash suffix: a date or a short git SHA in a file name matches torch.hub's rule
(``-([a-f0-9]*)\\.``) but is no hash. A mismatch is a warning (exit 0) unless --strict."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ckptool.scan import scan

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.mark.parametrize("name", ["ckpt-20240101.pth", "model-1a2b3c4d.pth"])
def test_date_or_short_sha_is_a_warning(cli, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", path)
    r = cli("scan", path)
    assert r.exit_code == 0, r.stdout
    assert "ok (1 warning)" in r.stdout and "[hash-mismatch] warning:" in r.stdout
    report = scan(path)
    assert report.safe and [f.kind for f in report.warnings] == ["hash-mismatch"]

    j = json.loads(cli("scan", "--json", path).stdout)["files"][0]
    assert j["safe"] is True and j["findings"][0]["severity"] == "warning"

    strict = cli("scan", "--strict", path)
    assert strict.exit_code == 1 and "FINDINGS (1)" in strict.stdout and "warning:" not in strict.stdout
    assert not scan(path, strict=True).safe


def test_matching_hash_is_clean_and_strict_changes_nothing(cli, tmp_path: Path) -> None:
    src = FIXTURES / "tiny_vgg.pth"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good = tmp_path / f"tiny_vgg-{digest[:8]}.pth"
    shutil.copyfile(src, good)
    r = cli("scan", "--strict", good)
    assert r.exit_code == 0 and "warning" not in r.stdout


def test_warning_never_hides_a_dangerous_global(cli, tmp_path: Path) -> None:
    bad = tmp_path / "evil-20240101.pkl"
    bad.write_bytes(b"cposix\nsystem\n(Vecho pwned\ntR.")
    r = cli("scan", bad)
    assert r.exit_code == 1 and "[dangerous-global]" in r.stdout and "[hash-mismatch] warning:" in r.stdout
    assert scan(bad, warn=frozenset({"dangerous-global", "hash-mismatch"})).safe is False
