"""The scan policy: [tool.ckptool] in pyproject.toml or .ckptool.toml, found upward from the current folder or
the scanned paths (stopping at a repository root), or --policy FILE: allowed formats, allowed extra globals
(never dangerous ones), max file size, which finding kinds fail the run, hash-suffix strictness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ckptool.errors import UsageError
from ckptool.policy import discover, load, parse_size

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NAMESPACE = (  # a training checkpoint with an argparse.Namespace (unknown-global without a policy)
    b"\x80\x02}q\x00X\x04\x00\x00\x00argsq\x01cargparse\nNamespace\nq\x02)\x81q\x03}q\x04X\x02\x00\x00\x00lrq\x05"
    b"G?\xb9\x99\x99\x99\x99\x99\x9asbs."
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "weights").mkdir()
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", root / "weights" / "model.pth")
    shutil.copyfile(FIXTURES / "tiny_vgg.safetensors", root / "weights" / "model.safetensors")
    shutil.copyfile(FIXTURES / "tiny_vgg.safetensors", root / "weights" / "ckpt-20240101.safetensors")
    return root


def _scan(cli, cwd: Path, *args: str | Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(cwd)
    return cli("scan", *args)


def test_no_policy_defaults(cli, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _scan(cli, repo, "weights", monkeypatch=monkeypatch)
    assert r.exit_code == 0 and "policy:" not in r.stdout  # the date suffix is a warning


def test_safetensors_only_in_pyproject(cli, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.ckptool]\nallowed-formats = ["safetensors"]\n')
    r = _scan(cli, repo, "--json", "weights", monkeypatch=monkeypatch)
    assert r.exit_code == 1
    obj = json.loads(r.stdout)
    assert obj["policy"]["path"] == str(repo / "pyproject.toml")
    bad = {Path(f["path"]).name: [x["kind"] for x in f["findings"]] for f in obj["files"]}
    assert bad["model.pth"] == ["format-not-allowed"] and bad["model.safetensors"] == []
    text = _scan(cli, repo / "weights", "model.pth", monkeypatch=monkeypatch)  # found upward from a subfolder
    assert text.exit_code == 1 and "[format-not-allowed]" in text.stdout and "the format is torch-zip" in text.stdout
    assert f"policy: {repo / 'pyproject.toml'}" in text.stdout
    assert _scan(cli, repo, "--no-policy", "weights", monkeypatch=monkeypatch).exit_code == 0


def test_found_from_the_scanned_paths(cli, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / ".ckptool.toml").write_text('allowed-formats = ["safetensors"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _scan(cli, elsewhere, repo / "weights" / "model.pth", monkeypatch=monkeypatch)
    assert r.exit_code == 1 and "[format-not-allowed]" in r.stdout


def test_strict_and_fail_on(cli, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = Path("weights") / "ckpt-20240101.safetensors"
    (repo / ".ckptool.toml").write_text("[tool.ckptool]\nstrict = true\n")
    r = _scan(cli, repo, target, monkeypatch=monkeypatch)
    assert r.exit_code == 1 and "[hash-mismatch] the name" in r.stdout
    (repo / ".ckptool.toml").write_text('fail-on = ["dangerous-global"]\n')
    (repo / "weights" / "args.pkl").write_bytes(NAMESPACE)
    r = _scan(cli, repo, "weights/args.pkl", monkeypatch=monkeypatch)
    assert r.exit_code == 0 and "[unknown-global] warning:" in r.stdout  # reported, does not fail
    (repo / "weights" / "evil.pkl").write_bytes(b"cposix\nsystem\n(Vecho pwned\ntR.")
    assert _scan(cli, repo, "weights/evil.pkl", monkeypatch=monkeypatch).exit_code == 1


def test_allow_globals_and_max_size(cli, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / "weights" / "args.pkl").write_bytes(NAMESPACE)
    assert _scan(cli, repo, "weights/args.pkl", monkeypatch=monkeypatch).exit_code == 1
    (repo / ".ckptool.toml").write_text('allow-globals = ["argparse.Namespace"]\nmax-file-size = "10 KB"\n')
    r = _scan(cli, repo, "--json", "weights", monkeypatch=monkeypatch)
    files = {Path(f["path"]).name: f for f in json.loads(r.stdout)["files"]}
    assert files["args.pkl"]["safe"] is True
    assert [x["kind"] for x in files["model.pth"]["findings"]] == ["file-too-large"]  # tiny_vgg is ~40 KB
    assert r.exit_code == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('allow-globals = ["os.system"]', "can never be allowed"),
        ('allow-globals = ["pydoc.locate"]', "can never be allowed"),
        ('allowed-formats = ["keras"]', "unknown format 'keras'"),
        ('warn-on = ["dangerous-global"]', "always fails"),
        ('fail-on = ["nan"]\nwarn-on = ["inf"]', "fail-on and warn-on together"),
        ('max-file-size = "lots"', "is not a size"),
        ("colour = 1", "unknown policy key 'colour'"),
        ("strict = 1", "strict must be true or false"),
        ("allowed-formats = [", "not valid TOML"),
    ],
)
def test_bad_policy_is_exit_2(cli, repo: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    (repo / ".ckptool.toml").write_text(text + "\n")
    r = _scan(cli, repo, "weights", monkeypatch=monkeypatch)
    assert r.exit_code == 2 and message in r.stderr and str(repo / ".ckptool.toml") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_explicit_policy_file(cli, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pol = tmp_path / "ci-policy.toml"
    pol.write_text('[tool.ckptool]\nallowed-formats = ["torch-zip"]\n')
    r = _scan(cli, repo, "--policy", pol, "weights/model.safetensors", monkeypatch=monkeypatch)
    assert r.exit_code == 1 and "[format-not-allowed]" in r.stdout
    empty = tmp_path / "pyproject.toml"
    empty.write_text("[project]\n")
    with pytest.raises(UsageError, match=r"no \[tool.ckptool\]"):
        load(str(empty))


def test_search_stops_at_the_repository_root(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".ckptool.toml").write_text('allowed-formats = ["onnx"]\n')  # above the repository: not used
    monkeypatch.chdir(repo / "weights")
    assert discover([repo / "weights"]).path is None
    (repo / ".git").rmdir()  # no repository root: the search goes on upward
    assert discover([repo / "weights"]).path == str(tmp_path / ".ckptool.toml")


def test_sizes() -> None:
    assert parse_size("2 GB", where="x") == 2 * 10**9 and parse_size("500MiB", where="x") == 500 * 2**20
    assert parse_size(1024, where="x") == 1024


def test_policy_reaches_the_jobs(cli, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (repo / ".ckptool.toml").write_text('allowed-formats = ["safetensors"]\n')
    one = _scan(cli, repo, "--json", "weights", monkeypatch=monkeypatch)
    two = _scan(cli, repo, "--json", "--jobs", "2", "weights", monkeypatch=monkeypatch)
    assert json.loads(one.stdout) == json.loads(two.stdout) and two.exit_code == 1
