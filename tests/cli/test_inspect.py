"""`ckptool inspect` from the CLI: CliRunner and the installed script, on full-size and fixture files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from proc import run_script

TORCH_PRINT = (
    "import sys, torch\nsd = torch.load(sys.argv[1], weights_only=True)\nfor k, v in sd.items(): print(k, v.size())"
)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_plain_is_byte_identical_to_torch_printing(vgg16_bn_files: dict[str, Path], fmt: str) -> None:
    path = vgg16_bn_files[fmt]
    theirs = subprocess.run(
        [sys.executable, "-c", TORCH_PRINT, str(path)], capture_output=True, text=True, check=True
    ).stdout
    r = run_script("inspect", "--plain", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == theirs
    assert r.stdout.splitlines()[0] == "features.0.weight torch.Size([64, 3, 3, 3])"
    assert r.stdout.splitlines()[-2] == "classifier.6.weight torch.Size([1000, 4096])"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_json_matches_torch_load(vgg16_bn_files: dict[str, Path], fmt: str, cli) -> None:
    path = vgg16_bn_files[fmt]
    r = cli("inspect", "--json", path)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    sd = torch.load(path, weights_only=True, mmap=fmt == "zip")
    assert d["format"] == ("torch-zip" if fmt == "zip" else "torch-legacy")
    assert d["state_dict_key"] is None
    assert [t["name"] for t in d["tensors"]] == list(sd)
    for t in d["tensors"]:
        v = sd[t["name"]]
        assert t["shape"] == list(v.shape)
        assert t["dtype"] == str(v.dtype).removeprefix("torch.")
        assert t["numel"] == v.numel()
        assert t["nbytes"] == v.numel() * v.element_size()
    assert d["total_numel"] == sum(v.numel() for v in sd.values())
    assert d["total_bytes"] == sum(v.numel() * v.element_size() for v in sd.values())
    params = sum(
        v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == 138_365_992
    if fmt == "legacy":  # like torchvision's 2017 file
        assert not any(t["name"].endswith("num_batches_tracked") for t in d["tensors"])


def test_inspect_stays_small_and_never_imports_torch(vgg16_bn_files: dict[str, Path]) -> None:
    """Header-only: a 553 MB file is listed without mapping its tensor pages in, and torch is never imported."""
    code = (
        "import sys\n"
        "from ckptool.cli.app import app\n"
        "try:\n    app([sys.argv[1], '--json', sys.argv[2]])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        # VmHWM is this process image's own peak RSS (ru_maxrss would include the forking pytest's)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "sys.stderr.write(hwm)\n"
    )
    for fmt in ("zip", "legacy"):
        r = subprocess.run(
            [sys.executable, "-c", code, "inspect", str(vgg16_bn_files[fmt])], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        rss_mib = int(r.stderr.strip().splitlines()[-1]) / 1024
        assert rss_mib < 100, f"{fmt}: peak RSS {rss_mib:.0f} MiB for a 553 MB file: tensor bytes were read"


def test_default_output_piped_is_a_plain_table_with_summary(fixtures_dir: Path, cli) -> None:
    r = cli("inspect", fixtures_dir / "tiny_train.ckpt")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "shape", "dtype", "numel", "size"]
    assert lines[1].split()[:3] == ["model.features.0.weight", "[8,", "3,"]
    assert "format: torch-zip" in r.stdout
    assert "state_dict: state_dict" in r.stdout
    assert "tensors: 20" in r.stdout
    assert "epoch: 7" in r.stdout
    assert "optimizer_states: 1 entry, 2 tensors" in r.stdout
    assert "\x1b[" not in r.stdout  # no terminal escapes when piped
    assert r.stderr == ""


def test_filter_and_key(fixtures_dir: Path, cli) -> None:
    r = cli("inspect", "--json", "--filter", "features.*.weight", fixtures_dir / "tiny_vgg.pth")
    d = json.loads(r.stdout)
    names = [t["name"] for t in d["tensors"]]
    assert names == ["features.0.weight", "features.1.weight", "features.4.weight", "features.5.weight"]
    assert d["tensors_in_file"] == 20
    assert d["total_numel"] == sum(t["numel"] for t in d["tensors"])
    r = cli("inspect", "--plain", "--key", "optimizer_states.0.state.0", fixtures_dir / "tiny_train.ckpt")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["step torch.Size([])", "exp_avg torch.Size([4])"]


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("tiny_vgg.pth", "torch-zip"),
        ("tiny_vgg_legacy.pth", "torch-legacy"),
        ("tiny_vgg.safetensors", "safetensors"),
        ("tiny_mlp.onnx", "onnx"),
        ("tiny_vgg_dp.pth", "torch-zip"),
    ],
)
def test_every_fixture_format_through_the_installed_script(fixtures_dir: Path, name: str, fmt: str) -> None:
    r = run_script("inspect", "--json", fixtures_dir / name)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == fmt


def test_sniffs_content_not_extension(fixtures_dir: Path, tmp_path: Path, cli) -> None:
    odd = tmp_path / "weights.onnx"  # a safetensors file with a misleading name
    odd.write_bytes((fixtures_dir / "tiny_vgg.safetensors").read_bytes())
    d = json.loads(cli("inspect", "--json", odd).stdout)
    assert d["format"] == "safetensors"


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, None])
def test_bad_input_one_line_exit_2_no_traceback(tmp_path: Path, content: bytes | None) -> None:
    p = tmp_path / "bad.pth"
    if content is not None:
        p.write_bytes(content)
    r = run_script("inspect", p)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(p) in r.stderr and "Traceback" not in r.stderr


def test_directory_and_unsafe_pickle(tmp_path: Path) -> None:
    r = run_script("inspect", tmp_path)
    assert r.returncode == 2 and "directory" in r.stderr
    canary = tmp_path / "canary"
    evil = tmp_path / "evil.pth"
    payload = (
        b"\x80\x02cposix\nsystem\nq\x00X"
        + len(f"touch {canary}").to_bytes(4, "little")
        + f"touch {canary}".encode()
        + b"\x85R."
    )
    import torch.serialization  # noqa: F401  - a legacy file around the payload

    evil.write_bytes(payload)
    r = run_script("inspect", evil)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not canary.exists()


def test_debug_env_shows_traceback(tmp_path: Path) -> None:
    p = tmp_path / "bad.pth"
    p.write_bytes(b"garbage" * 10)
    r = run_script("inspect", p, env={"CKPTOOL_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_python_dash_m_and_version() -> None:
    r = subprocess.run([sys.executable, "-m", "ckptool", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ckptool ")
