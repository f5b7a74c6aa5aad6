"""The rest of the human output: help, -V, ONNX and safetensors metadata in inspect, plain tables with long
names, and the small fixes of issue 9 (suffix warnings, --only matching nothing, nested --key, --part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli.clihelp import Brackets, write_safetensors

from ckptool.cli.app import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"


def test_version_short_and_long(cli) -> None:
    from ckptool import __version__

    for flag in ("-V", "--version"):
        r = cli(flag)
        assert r.exit_code == 0 and r.stdout.strip() == f"ckptool {__version__}"


def test_command_listing_is_whole_sentences(cli) -> None:
    r = cli("--help")
    assert r.exit_code == 0
    listing = r.stdout.split("Commands:")[1].strip().splitlines()
    assert [ln.split()[0] for ln in listing] == [name for name, _, _ in COMMANDS]
    for ln in listing:
        assert ln.rstrip()[-1] in ".?" and not ln.rstrip().endswith("..."), ln


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_usage_names_arguments_in_capitals(cli, name: str) -> None:
    r = cli(name, "--help")
    assert r.exit_code == 0
    usage = r.stdout.splitlines()[0]
    assert usage.startswith(f"Usage: ckptool {name} [OPTIONS]") and "{" not in usage and "}" not in usage, usage


def test_inspect_onnx_shows_the_graph(cli) -> None:
    r = cli("inspect", FIXTURES / "tiny_mlp.onnx")
    assert r.exit_code == 0
    out = r.stdout
    assert "inputs: input [1, 4] float32" in out and "outputs: logits [1, 3] float32" in out
    assert "opset: ai.onnx 17" in out and "producer: pytorch 2.13.0" in out and "nodes: 3" in out
    assert "state_dict:" not in out and "(root)" not in out


def test_inspect_shows_safetensors_metadata(cli, brackets: Brackets) -> None:
    r = cli("inspect", brackets.st)
    assert r.exit_code == 0
    assert "metadata: 2 entries (safetensors __metadata__)" in r.stdout
    assert "  note: [red]not markup[/red]" in r.stdout and "  format: pt" in r.stdout


def test_plain_table_with_a_long_name_stays_usable(cli, tmp_path: Path) -> None:
    long = "encoder." + ".".join(f"block{i}" for i in range(50)) + ".weight"
    names = {long: np.ones(3, np.float32), **{f"layer{i}.bias": np.ones(2, np.float32) for i in range(5)}}
    st = write_safetensors(tmp_path / "long.safetensors", names)
    r = cli("inspect", st)
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    row = next(ln for ln in lines if ln.startswith(long))
    assert "[3]" in row and "float32" in row  # the long row is whole
    others = [ln for ln in lines if ln and not ln.startswith(long) and not ln.startswith("file:")]
    assert max(map(len, others)) < 100, max(others, key=len)  # every other line keeps its width


def test_export_warns_when_the_suffix_names_another_format(cli, tmp_path: Path) -> None:
    pth = FIXTURES / "tiny_vgg.pth"
    r = cli("export", pth, "--safetensors", tmp_path / "out.pth")
    assert r.exit_code == 0
    assert "warning:" in r.stderr and "suffix .pth" in r.stderr and "--pth" in r.stderr
    r = cli("export", pth, "--pth", tmp_path / "out.safetensors")
    assert r.exit_code == 0 and "warning:" in r.stderr and "--safetensors" in r.stderr
    r = cli("export", pth, "--safetensors", tmp_path / "fine.safetensors")
    assert r.exit_code == 0 and r.stderr == ""


def test_diff_only_matching_nothing_is_a_usage_error_said_once(cli) -> None:
    pth = FIXTURES / "tiny_vgg.pth"
    r = cli("diff", pth, pth, "--only", "nothing.*")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--only 'nothing.*' selects no tensor" in r.stderr
    assert cli("diff", pth, pth, "--only", "features.*").exit_code == 0


def test_nested_key_says_where_the_tensors_are(cli) -> None:
    r = cli("inspect", FIXTURES / "tiny_train.ckpt", "--key", "optimizer_states")
    assert r.exit_code == 2
    assert "holds no tensors directly: its 2 tensors are nested deeper" in r.stderr
    assert "--key optimizer_states.0" in r.stderr


def test_export_and_parity_never_suggest_part() -> None:
    from ckptool.cli.export import without_part
    from ckptool.errors import WeightsMismatchError

    e = WeightsMismatchError(
        "the weights do not fit vgg11_bn: the file holds only 'features' (no classifier weights): a backbone-only "
        "file? check it with --part features",
        path="f.pth",
        hint="ckptool check f.pth --arch vgg11_bn shows the full report",
    )
    fixed = without_part(e)
    assert "--part" not in fixed.render() and "use --features-only" in fixed.message and fixed.path == "f.pth"
