from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptool.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for full-size generated checkpoints (built once, shared by tests)."""
    return tmp_path_factory.mktemp("big")


@pytest.fixture(scope="session")
def vgg16_bn_files(big_dir: Path) -> dict[str, Path]:
    """Full-size vgg16_bn (138,365,992 parameters) in zip format and in legacy format without
    num_batches_tracked (like torchvision's vgg16_bn-6c64b313.pth)."""
    from factory import save, vgg_state_dict

    sd = vgg_state_dict("vgg16_bn")
    out = {"zip": save(sd, big_dir / "vgg16_bn.pth", "zip")}
    legacy = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    from collections import OrderedDict

    out["legacy"] = save(OrderedDict(legacy), big_dir / "vgg16_bn_legacy.pth", "legacy")
    return out


class Cli:
    """Runs the CLI through typer's CliRunner (in-process) or the installed `ckptool` script."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str | os.PathLike[str], env: dict[str, str] | None = None):
        return self.runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


def run_script(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("ckptool")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ckptool"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def script() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_script
