"""The light install: `pip install ckptool` (no extras) runs every torch-free command, and a command that needs
an extra says which one, with exit 2 and no traceback.

The core-only venv is built once per test session from PyPI (about a minute), from a copy of the package
sources (so the worktree gets no build/ folder).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ckptool._extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def test_extras_message_lists_match_pyproject() -> None:
    """The "install the extra" message names the packages pyproject.toml declares."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    for name, reqs in EXTRAS.items():
        assert tuple(extras[name]) == reqs, name
    core = {r.split(">")[0].split("<")[0].split("=")[0] for r in meta["dependencies"]}
    assert core == {"typer", "rich", "numpy"}
    assert "ckptool[all]" in extras["dev"]


def _venv(tmp_path_factory: pytest.TempPathFactory, name: str, extras: str = "") -> Path:
    """A venv holding ckptool installed from a copy of its sources, with ``extras`` ("" or "[onnx]")."""
    base = tmp_path_factory.mktemp(name)
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ckptool", src / "ckptool", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir", f"{src}{extras}"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if pip.returncode != 0:
        pytest.fail(f"pip install of ckptool{extras} failed:\n{pip.stdout}\n{pip.stderr}")
    return venv


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ckptool and its core dependencies only (pip install <sources>, no extras)."""
    return _venv(tmp_path_factory, "core_install")


@pytest.fixture(scope="session")
def onnx_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ckptool with the ``onnx`` extra (onnxruntime, Pillow), still without torch."""
    return _venv(tmp_path_factory, "onnx_install", "[onnx]")


def _sparse_vgg16_bn(path: Path) -> Path:
    """A full-size vgg16_bn safetensors file (553 MB of zeros) as a sparse file: a real header, no disk use."""
    from ckptool.arch.vgg import vgg_spec

    header: dict[str, object] = {}
    offset = 0
    for key, shape in vgg_spec("vgg16_bn").state_dict_shapes().items():
        dtype, size = ("I64", 8) if key.endswith("num_batches_tracked") else ("F32", 4)
        n = size
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def _run(venv: Path, *args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CKPTOOL_DEBUG", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "ckptool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_core_install_has_no_torch(core_venv: Path) -> None:
    py = str(core_venv / "bin" / "python")
    for mod in ("torch", "onnx", "onnxruntime", "onnxscript", "PIL", "safetensors"):
        r = subprocess.run([py, "-c", f"import {mod}"], capture_output=True, text=True)
        assert r.returncode != 0, f"{mod} is importable in the core-only venv"
    r = subprocess.run(
        [py, "-c", "import ckptool, typer, rich, numpy; print(ckptool.__version__)"], capture_output=True
    )
    assert r.returncode == 0, r.stderr


def test_torch_free_commands_run_in_core_install(core_venv: Path, tmp_path: Path) -> None:
    big = _sparse_vgg16_bn(tmp_path / "vgg16_bn.safetensors")
    pth, st = FIXTURES / "tiny_vgg.pth", FIXTURES / "tiny_vgg.safetensors"

    r = _run(core_venv, "inspect", big, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "features.0.weight" in r.stdout and "classifier.6.bias" in r.stdout

    r = _run(core_venv, "layers", big, "--arch", "vgg16_bn", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "features.43" in r.stdout and "classifier.6" in r.stdout

    r = _run(core_venv, "check", big, "--arch", "vgg16_bn", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run(core_venv, "check", pth, "--arch", "vgg16_bn", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # a tiny VGG does not fit vgg16_bn: a finding, not a crash

    r = _run(core_venv, "diff", pth, st, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bit-identical" in r.stdout

    r = _run(core_venv, "scan", pth, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ": ok" in r.stdout

    r = _run(
        core_venv, "extract", pth, "--prefix", "features", "--output", tmp_path / "features.safetensors", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "features.safetensors").stat().st_size > 0

    r = _run(core_venv, "export", pth, "--safetensors", tmp_path / "a.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(core_venv, "export", st, "--pth", tmp_path / "b.pth", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(core_venv, "diff", tmp_path / "a.safetensors", tmp_path / "b.pth", cwd=tmp_path)
    assert r.returncode == 0 and "bit-identical" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("export", "{pth}", "--onnx", "{out}/m.onnx", "--arch", "vgg11_bn"),
        ("parity", "{pth}", "{onnx}", "--arch", "vgg11_bn"),
        ("predict", "{pth}", "{img}", "--arch", "vgg11_bn"),
    ],
    ids=["export-onnx", "parity", "predict"],
)
def test_missing_extra_is_one_line_exit_2(core_venv: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")  # never decoded: the missing extra is reported first
    fill = {"pth": FIXTURES / "tiny_vgg.pth", "onnx": FIXTURES / "tiny_mlp.onnx", "out": tmp_path, "img": img}
    r = _run(core_venv, *(a.format(**fill) for a in args), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert "needs torch, which is not installed" in lines[0]
    assert "'torch' extra" in lines[0] and "pip install torch" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


def test_predict_on_onnx_names_the_onnx_extra(core_venv: Path, tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")  # never decoded: the extra is missing before that
    r = _run(core_venv, "predict", FIXTURES / "tiny_mlp.onnx", img, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "'onnx' extra" in r.stderr


def test_onnx_extra_predicts_without_torch(onnx_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip install 'ckptool[onnx]'` classifies images with an ONNX model; torch is not even installed."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from onnx_fixtures import TINY, calibrated, save, state_dict
    from PIL import Image

    import ckptool

    model = tmp_path / "tiny.onnx"
    pth = save(state_dict(calibrated(TINY, 10)), tmp_path / "tiny.pth")
    assert ckptool.export_onnx(pth, model, arch=TINY).written
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "img.png")
    (tmp_path / "labels.txt").write_text("".join(f"class{i}\n" for i in range(10)))
    r = _run(
        onnx_venv, "predict", model, tmp_path / "img.png", "--labels", tmp_path / "labels.txt", "--json", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["backend"] == "onnxruntime" and len(out["predictions"][0]["top"]) == 5
    want = ckptool.predict(model, tmp_path / "img.png", labels=tmp_path / "labels.txt")
    assert [c["index"] for c in out["predictions"][0]["top"]] == [c.index for c in want.predictions[0].top]
    py = str(onnx_venv / "bin" / "python")
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([py, "-c", "import onnxruntime, PIL"], capture_output=True).returncode == 0
