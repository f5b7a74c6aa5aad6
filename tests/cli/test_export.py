"""The `ckptool export` command line for the tensor targets (--safetensors, --pth): option handling,
rendering, --json, progress, exit codes. The writers themselves are tested with the writer tests; the ONNX
target in tests/convert/test_onnx_export.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptool.cli import _output as output


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("export_cli")
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict(
        (k, torch.randn(s, generator=g))
        for k, s in (("features.0.weight", (8, 3, 3, 3)), ("features.0.bias", (8,)), ("fc.weight", (4, 8)))
    )
    torch.save(sd, d / "plain.pth")
    ema = OrderedDict((k, v * 2) for k, v in sd.items())
    torch.save({"epoch": 3, "state_dict": sd, "ema": ema}, d / "train.ckpt")
    return {"plain": d / "plain.pth", "train": d / "train.ckpt", "sd": sd, "ema": ema}  # type: ignore[dict-item]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_text_and_json(src: dict, tmp_path: Path, cli) -> None:
    out = tmp_path / "m.safetensors"
    r = cli("export", src["plain"], "--safetensors", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out} (safetensors): 3 tensors")
    assert "bit-exact" in r.stdout and r.stderr == ""
    assert _equal(load_file(out), src["sd"])
    r = cli("export", src["plain"], "--safetensors", out, "--force", "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["format"] == "safetensors" and d["tensors"] == 3 and d["verified"] is True
    r = cli("export", src["plain"], "--safetensors", out, "--force", "--no-verify", "--json")
    assert json.loads(r.stdout)["verified"] is False


def test_pth(src: dict, tmp_path: Path, cli) -> None:
    out = tmp_path / "m.pth"
    r = cli("export", src["plain"], "--pth", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "torch-zip"
    assert _equal(torch.load(out, weights_only=True), src["sd"])


def test_key_selects_the_state_dict(src: dict, tmp_path: Path, cli) -> None:
    r = cli("export", src["train"], "--safetensors", tmp_path / "a.safetensors", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["state_dict_key"] == "state_dict"
    assert _equal(load_file(tmp_path / "a.safetensors"), src["sd"])
    r = cli("export", src["train"], "--safetensors", tmp_path / "b.safetensors", "--key", "ema")
    assert r.exit_code == 0, r.stderr
    assert _equal(load_file(tmp_path / "b.safetensors"), src["ema"])
    r = cli("export", src["train"], "--safetensors", tmp_path / "c.safetensors", "--key", "nope")
    assert r.exit_code == 2 and "nope" in r.stderr and not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ([], "choose one output"),
        (["--safetensors", "a.safetensors", "--pth", "b.pth"], "(got --safetensors, --pth)"),
        (["--safetensors", "a.safetensors", "--arch", "vgg16_bn"], "--arch only applies to --onnx"),
        (["--pth", "a.pth", "--opset", "18", "--atol", "1"], "--opset, --atol only apply to --onnx"),
        (["--safetensors", "a.safetensors", "--features-only"], "--features-only only applies to --onnx"),
    ],
)
def test_usage_errors(src: dict, tmp_path: Path, cli, args: list[str], msg: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("export", src["plain"], *args)
    assert r.exit_code == 2 and msg in r.stderr and r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_input(src: dict, tmp_path: Path, cli) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    r = cli("export", src["plain"], "--safetensors", out)
    assert r.exit_code == 2 and "--force" in r.stderr and out.read_bytes() == b"keep me"
    r = cli("export", src["plain"], "--pth", src["plain"], "--force")
    assert r.exit_code == 2 and src["plain"].stat().st_size > 0


def test_progress_bar_waits_and_needs_a_terminal(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(output, "stderr_is_tty", lambda: False)
    bar = output.ProgressBar("x")
    clock[0] += 5
    bar(10, 100)
    assert bar.progress is None  # not a terminal: never
    monkeypatch.setattr(output, "stderr_is_tty", lambda: True)
    bar = output.ProgressBar("x")
    bar(10, 100)
    assert bar.progress is None  # under a second: not yet
    clock[0] += 0.5
    bar(50, 100)
    assert bar.progress is None
    clock[0] += 0.6
    bar(60, 100)
    assert bar.progress is not None  # over a second and not done: shown
    bar(100, 100)
    bar.close()
    assert bar.progress is None


def test_script_and_help(src: dict, tmp_path: Path, script) -> None:
    out = tmp_path / "s.safetensors"
    r = script("export", src["plain"], "--safetensors", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and "wrote" in r.stdout  # piped: no progress bar, no colours
    assert _equal(load_file(out), src["sd"])
    r = script("export", "--help")
    assert r.returncode == 0
    for opt in ("--safetensors", "--pth", "--onnx", "--arch", "--input-shape", "--opset", "--features-only",
                "--external-data", "--no-verify", "--atol", "--rtol", "--force", "--key", "--json"):  # fmt: skip
        assert opt in r.stdout, opt
    r = script("--help")
    assert "export" in r.stdout and "parity" in r.stdout


def test_safetensors_export_never_imports_torch(src: dict, tmp_path: Path) -> None:
    code = (
        "import sys\nfrom ckptool.cli.app import app\n"
        f"try:\n    app(['export', {str(src['plain'])!r}, '--safetensors', {str(tmp_path / 'x.safetensors')!r}])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.safetensors").exists()
