"""Every command on a real pseudo-terminal (the rich branch CliRunner never takes): text from files, paths,
shapes and findings in ``[...]`` appear verbatim, never eaten as markup, and nothing crashes on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cli.clihelp import Brackets, TtyResult

Tty = Callable[..., TtyResult]


def test_inspect_shows_bracketed_names_paths_and_metadata(tty: Tty, brackets: Brackets) -> None:
    r = tty("inspect", brackets.st)
    assert r.returncode == 0, r
    for s in ("a[/]b", "blk[0].weight", "[bold]x[/bold]", "w[bold red]x.safetensors", "[red]not markup[/red]"):
        assert s in r.text, (s, r.text)
    assert "\x1b[" in r.raw  # it really took the rich branch (styles), and still kept the text
    assert "MarkupError" not in r.text and "internal error" not in r.text
    r = tty("inspect", brackets.pth)
    assert r.returncode == 0 and "run[v2].pth" in r.text and "d[x]" in r.text, r


def test_an_error_on_stderr_is_verbatim(tty: Tty, brackets: Brackets) -> None:
    r = tty("inspect", brackets.dir / "missing[v3].pth")
    assert r.returncode == 2, r
    assert "ckptool: error: " in r.text and "missing[v3].pth" in r.text and "Traceback" not in r.text


def test_layers(tty: Tty, brackets: Brackets) -> None:
    r = tty("layers", brackets.st)
    assert r.returncode == 0, r
    assert "blk[0]" in r.text, r


def test_check_lists_bracketed_keys(tty: Tty, brackets: Brackets) -> None:
    r = tty("check", brackets.st, "--arch", "vgg11")
    assert r.returncode == 1, r
    assert "w[bold red]x.safetensors" in r.text and "a[/]b" in r.text and "blk[0].weight" in r.text, r


def test_archs(tty: Tty) -> None:
    r = tty("archs")
    assert r.returncode == 0, r
    assert "vgg16_bn" in r.text and "module.path:callable" in r.text and "torchvision:<builder>" in r.text


def test_scan_keeps_its_tags(tty: Tty, brackets: Brackets) -> None:
    r = tty("scan", brackets.evil)
    assert r.returncode == 1, r
    assert "[dangerous-global]" in r.text and "evil[1].pth" in r.text and "posix.system" in r.text, r
    r = tty("scan", brackets.nan)
    assert r.returncode == 1, r
    assert "[nan]" in r.text and "w[0]" in r.text and "n[1].safetensors" in r.text, r


def test_diff(tty: Tty, brackets: Brackets) -> None:
    r = tty("diff", brackets.pth, brackets.st)
    assert r.returncode == 1, r
    assert "run[v2].pth" in r.text and "a[/]b" in r.text and "[bold]x[/bold]" in r.text, r


def test_extract_and_export_safetensors(tty: Tty, brackets: Brackets) -> None:
    out = brackets.dir / "f[1].safetensors"
    r = tty("extract", brackets.pth, "--prefix", "features", "-o", out)
    assert r.returncode == 0, r
    assert "f[1].safetensors" in r.text and out.exists(), r
    out = brackets.dir / "o[2].safetensors"
    r = tty("export", brackets.pth, "--safetensors", out)
    assert r.returncode == 0, r
    assert "o[2].safetensors" in r.text and "run[v2].pth" in r.text, r


def test_labels(tty: Tty) -> None:
    r = tty("labels")
    assert r.returncode == 0, r
    lines = [ln for ln in r.text.splitlines() if ln.strip()]
    assert lines[0] == "tench" and lines[-1] == "toilet tissue" and len(lines) == 1000


# ---------------------------------------------------------------------------------------------------
# torch: export --onnx, parity, predict on the tiny VGG
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnx_fixtures import TINY, calibrated, save, state_dict

    from ckptool.convert.onnx_export import export_onnx
    from ckptool.formats import open_checkpoint

    d = tmp_path_factory.mktemp("tty") / "m[1]"
    d.mkdir()
    ckp = save(state_dict(calibrated(TINY, 10)), d / "tiny[v2].pth")
    om = d / "tiny[v2].onnx"
    assert export_onnx(open_checkpoint(ckp), om, arch=TINY).passed
    return {"dir": d, "pth": ckp, "onnx": om}


def test_export_onnx_shows_shapes(tty: Tty, tiny_onnx: dict[str, Path], tmp_path: Path) -> None:
    from onnx_fixtures import TINY

    out = tmp_path / "e[3].onnx"
    r = tty("export", tiny_onnx["pth"], "--onnx", out, "--arch", TINY)
    assert r.returncode == 0, r
    assert "[batch, 3, 32, 32]" in r.text and "[batch, 10]" in r.text and "e[3].onnx" in r.text, r
    # progress: each phase shows on the terminal (a transient spinner on stderr), then is erased
    for phase in ("loading torch", "exporting with torch.onnx", "onnx.checker", "parity: torch vs onnxruntime"):
        assert phase in r.raw, phase


def test_parity(tty: Tty, tiny_onnx: dict[str, Path]) -> None:
    from onnx_fixtures import TINY

    r = tty("parity", tiny_onnx["pth"], tiny_onnx["onnx"], "--arch", TINY, "--samples", "1")
    assert r.returncode == 0, r
    assert "tiny[v2].onnx" in r.text and "[2, 3, 32, 32]" in r.text and "parity passed" in r.text, r
    assert "1 sample," in r.text and "1 samples" not in r.text, r
    assert "through torch and onnxruntime" in r.raw  # the progress line


def test_predict(tty: Tty, tiny_onnx: dict[str, Path]) -> None:
    from PIL import Image

    deep = tiny_onnx["dir"] / ("a-folder-name-longer-than-the-table-is-wide-" * 2)
    deep.mkdir(exist_ok=True)
    img = deep / "img[1].png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    labels = tiny_onnx["dir"] / "labels[en].txt"
    labels.write_text("".join(f"[class {i}]\n" for i in range(10)))
    r = tty("predict", tiny_onnx["onnx"], img, "--labels", labels, "--size", "32", "--top", "10")
    assert r.returncode == 0, r
    assert "img[1].png" in r.text and "[class 0]" in r.text and "[class 9]" in r.text, r
    assert str(img) in r.text.splitlines(), r  # the image's path is one line, never folded to the table's width


def test_narrow_terminal_folds_a_long_name(tty: Tty, brackets: Brackets) -> None:
    import numpy as np
    from cli.clihelp import write_safetensors

    long = "encoder." + ".".join(f"block{i}" for i in range(50)) + ".weight"  # ~360 characters
    assert len(long) > 300
    st = write_safetensors(
        brackets.dir / "long.safetensors", {long: np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    )
    r = tty("inspect", st, cols=80)
    assert r.returncode == 0, r
    table = [ln for ln in r.text.splitlines() if ln[:1] in "┏┃┡│└"]
    assert len(table) > 5 and max(len(ln) for ln in table) <= 80, r  # the table fits; summary lines soft-wrap
    first_col = "".join(ln.split("│")[1].strip() for ln in r.text.splitlines() if ln.count("│") >= 3)
    assert long in first_col  # folded over several lines of the name column, every character kept
