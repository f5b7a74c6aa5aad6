"""`ckptool scan PATH...` for CI: folders walked recursively, globs expanded, files recognised by content (not
by extension), what was skipped and why, --jobs N with the same output in the same order, and the
folder-level hooks of the formats registry."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import types
from pathlib import Path

import pytest

from ckptool.scanset import ScanOptions, Target, expand, scan_paths

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EVIL = b"cposix\nsystem\n(Vecho pwned\ntR."


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A repository-like tree: weights under misleading names, a payload, and things to skip."""
    root = tmp_path / "repo"
    (root / "models" / "v1").mkdir(parents=True)
    (root / "data").mkdir()
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".venv").mkdir()
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", root / "models" / "v1" / "weights.bin")  # torch zip as .bin
    shutil.copyfile(FIXTURES / "tiny_vgg.safetensors", root / "models" / "export.dat")  # safetensors as .dat
    shutil.copyfile(FIXTURES / "tiny_vgg_legacy.pth", root / "models" / "old_checkpoint")  # no extension
    (root / "data" / "cache").write_bytes(EVIL)  # a protocol-0 pickle with no extension
    (root / "README.md").write_text("# weights\n")
    (root / "notes.pth").write_text("not really a checkpoint\n")  # extension lies the other way
    (root / "blob.gz").write_bytes(gzip.compress(b"x" * 100))
    (root / "empty.bin").write_bytes(b"")
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", root / ".git" / "objects" / "w.pth")
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", root / ".venv" / "w.pth")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", outside / "w.pth")
    os.symlink(outside, root / "linked")
    return root


def test_folder_is_walked_by_content(cli, tree: Path) -> None:
    r = cli("scan", tree)
    assert r.exit_code == 1  # the pickle in data/cache
    out = r.stdout
    for rel in ("models/v1/weights.bin", "models/export.dat", "models/old_checkpoint"):
        assert f"{tree / rel}: ok" in out
    assert f"{tree / 'data' / 'cache'}: FINDINGS (1)" in out and "posix.system" in out
    assert f"(a gzip file): {tree / 'blob.gz'}" in out
    assert f"(empty file): {tree / 'empty.bin'}" in out
    assert f"(version-control or cache folder): {tree / '.git'}" in out
    assert f"(a Python virtual environment): {tree / '.venv'}" in out
    assert f"(symlink to a folder (not followed)): {tree / 'linked'}" in out
    assert str(tree / "notes.pth") in out and str(tree / "README.md") in out
    assert "w.pth" not in out  # nothing from .git, .venv or the symlinked folder
    assert out.splitlines()[-1] == "scanned 4 files: 3 clean, 1 with findings, 0 could not be scanned, 7 skipped"


def test_json_lists_skipped_with_reasons(cli, tree: Path) -> None:
    r = cli("scan", "--json", tree)
    obj = json.loads(r.stdout)
    assert [Path(f["path"]).name for f in obj["files"]] == ["cache", "export.dat", "old_checkpoint", "weights.bin"]
    skipped = {Path(s["path"]).name: s["reason"] for s in obj["skipped"]}
    assert skipped["blob.gz"] == "a gzip file" and skipped["empty.bin"] == "empty file"
    assert skipped["notes.pth"].startswith("not a checkpoint ckptool recognises")
    assert set(skipped) == {"blob.gz", "empty.bin", "notes.pth", "README.md", ".git", ".venv", "linked"}


def test_jobs_same_output_same_order(cli, tree: Path) -> None:
    one = cli("scan", "--json", tree)
    two = cli("scan", "--json", "--jobs", "2", tree)
    assert one.exit_code == two.exit_code == 1
    assert json.loads(one.stdout) == json.loads(two.stdout)
    text1, text2 = cli("scan", tree).stdout, cli("scan", "-j", "2", tree).stdout
    assert text1 == text2


def test_jobs_in_the_installed_script(script, tree: Path) -> None:
    r = script("scan", "--jobs", "2", "--json", tree / "models", tree / "data")
    assert r.returncode == 1, r.stderr
    names = [Path(f["path"]).name for f in json.loads(r.stdout)["files"]]
    assert names == ["export.dat", "old_checkpoint", "weights.bin", "cache"]  # argument order, then sorted


def test_globs(cli, tree: Path) -> None:
    r = cli("scan", "--json", str(tree / "**" / "*.bin"))
    obj = json.loads(r.stdout)
    assert [Path(f["path"]).name for f in obj["files"]] == ["weights.bin"]
    assert [Path(s["path"]).name for s in obj["skipped"]] == ["empty.bin"]
    assert r.exit_code == 0
    none = cli("scan", str(tree / "*.onnx"))
    assert none.exit_code == 2 and "no file matches this pattern" in none.stderr


def test_explicit_file_that_is_no_weight_file_is_still_an_error(cli, tree: Path) -> None:
    r = cli("scan", tree / "notes.pth")
    assert r.exit_code == 2 and r.stdout == "" and "not a checkpoint ckptool recognises" in r.stderr


def test_folder_with_nothing_to_scan(cli, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello\n")
    r = cli("scan", tmp_path / "docs", "--no-policy")  # a warning (tests/test_scanset_empty.py: the policy)
    assert r.exit_code == 0 and "[no-weight-files] warning: holds no weight file" in r.stdout
    assert "all 1 of its files were skipped" in r.stdout and "a.txt" in r.stdout


def test_each_file_once(tree: Path) -> None:
    items, _ = expand([tree / "models", tree / "models" / "export.dat", str(tree / "models" / "*.dat")])
    files = [t.path for t in items if isinstance(t, Target) and not t.folder]
    assert len(files) == 3 and len(set(files)) == 3


def test_folder_hooks_through_the_registry(cli, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered format with a folder-level hook gets every walked folder it claims; its findings are a
    report named by the folder (the walker names no format)."""
    from ckptool.formats.sniff import FORMATS

    seen = []

    def scan_folder(ctx) -> None:  # type: ignore[no-untyped-def]
        seen.append(ctx.path)
        ctx.set_format("fake-folder")
        ctx.find("index-missing-shard", "shard 2 of 2 is missing", "model.index.json")

    fake = types.SimpleNamespace(
        NAME="fake-folder",
        detect=lambda head, size: False,
        detect_folder=lambda loc: loc.name.endswith("v1"),
        scan_folder=scan_folder,
    )
    monkeypatch.setitem(FORMATS, "fake-folder", fake)
    r = cli("scan", "--json", tree / "models")
    files = json.loads(r.stdout)["files"]
    folder = [f for f in files if f["format"] == "fake-folder"]
    assert len(folder) == 1 and folder[0]["path"] == str(tree / "models" / "v1")
    assert folder[0]["findings"][0]["kind"] == "index-missing-shard" and r.exit_code == 1
    assert [f["path"] for f in files].index(folder[0]["path"]) < [f["path"] for f in files].index(
        str(tree / "models" / "v1" / "weights.bin")
    )


def test_library(tree: Path) -> None:
    run = scan_paths([tree], ScanOptions(values=False), jobs=2)
    assert len(run.reports) == 4 and not run.failures
    assert sum(not r.safe for r in run.reports) == 1


def test_dcp_folder_scanned_through_its_metadata(cli, tmp_path: Path) -> None:
    """A torch.distributed.checkpoint folder: .metadata (a dot-file) is scanned, with every storage file it
    names; the .distcp files are not scanned as files of their own (they are archives back to back)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.randn(4, 4), "b": torch.zeros(4)}, checkpoint_id=str(tmp_path / "ck"), no_dist=True)
    r = cli("scan", "--json", tmp_path)
    assert r.exit_code == 0, r.stdout + r.stderr
    obj = json.loads(r.stdout)
    assert [(Path(f["path"]).name, f["format"]) for f in obj["files"]] == [(".metadata", "dcp")]
    assert [Path(s["path"]).name for s in obj["skipped"]] == ["__0_0.distcp"]
    assert "part of the dcp checkpoint" in obj["skipped"][0]["reason"]
