"""CLI test helpers and fixtures (a pytest plugin, loaded by tests/conftest.py): the installed script on a real
pseudo-terminal and in shell pipelines, and files whose names, paths and contents are full of ``[...]`` (what rich would read as markup)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
_ESC = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[=>78]")


def ckptool_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("ckptool")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ckptool"]


@dataclass
class TtyResult:
    returncode: int
    raw: str  # with escape codes
    text: str  # escape codes removed, \r\n -> \n

    def __str__(self) -> str:  # shown in assertion messages
        return f"exit {self.returncode}\n{self.text}"


TESTS = ROOT / "tests"


def run_tty(*args: str | os.PathLike[str], cols: int = 200, timeout: float = 180) -> TtyResult:
    """Run the installed ``ckptool`` with stdin, stdout and stderr on one pseudo-terminal of ``cols`` columns
    (``tests/`` on PYTHONPATH, for the ``onnx_fixtures:TinyVGG`` architecture)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "CKPTOOL_DEBUG")}
    env["TERM"] = "xterm-256color"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    p = subprocess.Popen(
        [*ckptool_cmd(), *map(str, args)], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    break
        else:
            p.kill()
            raise AssertionError(f"ckptool {args} did not finish in {timeout} s")
    finally:
        os.close(master)
    rc = p.wait(timeout=30)
    raw = b"".join(chunks).decode("utf-8", "replace")
    text = _ESC.sub("", raw).replace("\r\n", "\n").replace("\r", "\n")
    return TtyResult(rc, raw, text)


@pytest.fixture
def tty() -> Callable[..., TtyResult]:
    return run_tty


def run_pipeline(shell: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``bash -o pipefail -c shell``, with ``$CKPTOOL`` the installed script (as GitHub Actions runs steps)."""
    env = {**os.environ, "CKPTOOL": " ".join(ckptool_cmd())}
    env.pop("CKPTOOL_DEBUG", None)
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def pipeline() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_pipeline


def strict_json(text: str) -> object:
    """``json.loads`` that rejects NaN, Infinity and -Infinity, and more than one value."""

    def reject(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


# ---------------------------------------------------------------------------------------------------
# files with brackets
# ---------------------------------------------------------------------------------------------------
def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file written by hand (any names, any values), little-endian, offsets contiguous."""
    codes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("float16"): "F16"}
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs, off = [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return path


def evil_pickle(path: Path) -> Path:
    """A bare pickle that would call os.system (never run: ckptool never unpickles)."""
    # protocol 2: \x80\x02 c posix\nsystem\n X 'true' \x85 R .
    path.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    return path


@dataclass
class Brackets:
    dir: Path
    pth: Path  # tiny_vgg.pth as run[v2].pth in a folder named d[x]
    st: Path  # a safetensors file with tensor names a[/]b and blk[0].weight and bracketed metadata
    nan: Path  # a safetensors file with NaN values, named n[1].safetensors
    evil: Path  # a pickle referencing posix.system, named evil[1].pth


@pytest.fixture
def brackets(tmp_path: Path) -> Brackets:
    d = tmp_path / "d[x]"
    d.mkdir()
    pth = d / "run[v2].pth"
    shutil.copy(FIXTURES / "tiny_vgg.pth", pth)
    st = write_safetensors(
        d / "w[bold red]x.safetensors",
        {
            "a[/]b": np.arange(6, dtype=np.float32).reshape(2, 3),
            "blk[0].weight": np.ones((4, 3), np.float32),
            "[bold]x[/bold]": np.zeros(2, np.float32),
        },
        metadata={"note": "[red]not markup[/red]", "format": "pt"},
    )
    nan = write_safetensors(d / "n[1].safetensors", {"w[0]": np.array([1.0, np.nan, 2.0], np.float32)})
    return Brackets(dir=d, pth=pth, st=st, nan=nan, evil=evil_pickle(d / "evil[1].pth"))
