"""The reader's allowlist: inert data classes recorded with a note, user-allowed globals, and what never is."""

from __future__ import annotations

import argparse
import fractions
import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

import ckptool
from ckptool import open_checkpoint
from ckptool.errors import UnsafePickleError, UsageError
from ckptool.scan import scan


def sd() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}


def save(path: Path, extra: object, fmt: str = "zip") -> Path:
    torch.save({"state_dict": sd(), "extra": extra}, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_namespace_checkpoint_reads_with_a_note(tmp_path: Path, fmt: str) -> None:
    args = argparse.Namespace(lr=0.1, arch="deit_tiny", output_dir=pathlib.PosixPath("/runs/a"))
    with open_checkpoint(save(tmp_path / "deit.pth", args, fmt)) as ck:
        assert ck.names() == ["w", "b"]
        assert ck.extras["extra"] == "argparse.Namespace"
        assert any("argparse.Namespace" in n and "pathlib.PosixPath" in n and "opaque" in n for n in ck.notes)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (pathlib.PurePosixPath("a/b"), "'a/b'"),
        (pathlib.PureWindowsPath("C:/x/y"), "'C:\\\\x\\\\y'"),
        (pathlib.PosixPath("/tmp/run"), "'/tmp/run'"),
        (type(np.dtype("float32")), "numpy.dtypes.Float32DType"),
        (np.dtype("float32"), "'f4'"),
        (np.float64(1.5), "1.5"),
        (np.float16(2), "2.0"),
        (np.arange(3), "numpy.ndarray"),
    ],
)
def test_inert_values_are_recorded(tmp_path: Path, value: object, shown: str) -> None:
    with open_checkpoint(save(tmp_path / "x.pth", value)) as ck:
        assert ck.names() == ["w", "b"]
        assert ck.extras["extra"] == shown


def test_namespace_checkpoint_inspects_exports_and_diffs(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = save(tmp_path / "run.pth", argparse.Namespace(epochs=3))
    r = cli("inspect", src, "--json")
    assert r.exit_code == 0 and any("argparse.Namespace" in n for n in json.loads(r.stdout)["notes"])
    out = tmp_path / "run.safetensors"
    assert cli("export", src, "--safetensors", out).exit_code == 0
    r = cli("diff", src, out)
    assert r.exit_code == 0 and "identical" in r.stdout


def test_unknown_global_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = save(tmp_path / "frac.pth", fractions.Fraction(1, 3))
    with pytest.raises(UnsafePickleError) as e:
        open_checkpoint(path)
    assert e.value.path == str(path) and str(path) in str(e.value)
    assert "--allow-global fractions.Fraction" in str(e.value)


def test_diff_refusal_says_which_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    good = save(tmp_path / "good.pth", 1)
    bad = save(tmp_path / "bad.pth", fractions.Fraction(1, 3))
    r = cli("diff", good, bad)
    assert r.exit_code == 2
    assert f"{bad}: refusing to unpickle" in r.stderr


def test_allow_globals_is_scoped(tmp_path: Path) -> None:
    path = save(tmp_path / "frac.pth", fractions.Fraction(1, 3))
    with ckptool.allow_globals("fractions.Fraction"):
        with open_checkpoint(path) as ck:
            assert ck.extras["extra"] == "fractions.Fraction"
            assert any("fractions.Fraction" in n for n in ck.notes)
    with pytest.raises(UnsafePickleError):
        open_checkpoint(path)
    with open_checkpoint(path, allow_globals=["fractions.Fraction"]) as ck:
        assert ck.names() == ["w", "b"]
    with pytest.raises(UnsafePickleError):
        open_checkpoint(path)


def test_cli_allow_global_on_reading_commands(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = save(tmp_path / "frac.pth", fractions.Fraction(1, 3))
    assert cli("inspect", path).exit_code == 2
    assert cli("inspect", path, "--allow-global", "fractions.Fraction").exit_code == 0
    assert cli("inspect", path).exit_code == 2  # scoped to the one command
    r = cli("scan", path, "--json")
    assert r.exit_code == 1
    r = cli("scan", path, "--json", "--allow-global", "fractions.Fraction")
    assert r.exit_code == 0, r.stdout
    out = tmp_path / "o.safetensors"
    assert cli("export", path, "--safetensors", out, "--allow-global", "fractions.Fraction").exit_code == 0
    r = cli("extract", path, "--prefix", "w", "-o", tmp_path / "e.safetensors", "--allow-global", "fractions.Fraction")
    assert r.exit_code in (0, 2) and "refusing" not in r.stderr
    for cmd in ("layers", "check", "diff", "parity", "predict"):
        help_text = cli(cmd, "--help").stdout
        assert "--allow-global" in help_text, cmd


@pytest.mark.parametrize(
    "name",
    ["os.system", "posix.system", "subprocess.Popen", "builtins.eval", "builtins.exec", "builtins.getattr",
     "builtins.__import__", "__builtin__.eval", "torch.load", "functools.partial", "copy_reg._reconstructor"],
)  # fmt: skip
def test_dangerous_globals_can_never_be_allowed(name: str, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="never be allowed"):
        with ckptool.allow_globals(name):
            pass  # pragma: no cover
    r = cli("inspect", save(tmp_path / "x.pth", 1), "--allow-global", name)
    assert r.exit_code == 2 and "never be allowed" in r.stderr


@pytest.mark.parametrize("name", ["nodot", "a..b", "", "1x.y", "a.b c"])
def test_malformed_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match=r"MODULE\.NAME"):
        with ckptool.allow_globals(name):
            pass  # pragma: no cover


def test_an_allowed_global_is_safe_for_scan_only_in_scope(tmp_path: Path) -> None:
    path = save(tmp_path / "frac.pth", fractions.Fraction(1, 3))
    assert not scan(path).safe
    with ckptool.allow_globals("fractions.Fraction"):
        report = scan(path)
    assert report.safe and report.values_checked
