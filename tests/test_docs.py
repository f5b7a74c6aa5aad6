"""The examples in README.md and docs/ are executed: every ```console block's `$ ckptool ...` lines run (in
order, per page, in one scratch folder) and their output must be what the page shows.

In a shown output, a line `...` stands for any number of lines, a line ending in ` ...` for any line that
starts with the text before it (numbers that depend on the CPU), and timings (`0.32 s`, `4.4s`) are not
compared. A page says which generated files it needs with an HTML comment:
`<!-- docs-test: vgg16_bn -->` (full-size vgg16_bn.pth and vgg16_bn_legacy.pth), `<!-- docs-test: dcp -->` (the 2-rank DCP folder `dcp`
and `consolidated.safetensors`), `<!-- docs-test: images -->`
(photo.jpg, scan.png). `fixtures/` is the repository's. Commands run through bash (pipes work; stdout and
stderr are shown together, as on a terminal) with the venv's `ckptool` first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)
NEEDS = re.compile(r"<!--\s*docs-test:\s*([\w, -]+?)\s*-->")
TIME = re.compile(r"\b\d+(?:\.\d+)? ?s\b")


@dataclass
class Step:
    command: str
    expected: list[str]


def steps(text: str) -> list[Step]:
    out: list[Step] = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append(Step(line[2:], []))
            elif out:
                out[-1].expected.append(line)
            else:
                raise AssertionError(f"console block output before any `$ ` command: {line!r}")
    return out


def normalise(line: str) -> str:
    return TIME.sub("<t>", line.rstrip())


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` (with ``...`` lines and ``prefix ...`` lines) against ``actual``, both normalised."""
    memo: dict[tuple[int, int], bool] = {}

    def m(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(expected):
            r = j == len(actual)
        elif expected[i] == "...":
            r = any(m(i + 1, k) for k in range(j, len(actual) + 1))
        elif j == len(actual):
            r = False
        elif expected[i].endswith(" ..."):
            r = actual[j].startswith(expected[i][:-4]) and m(i + 1, j + 1)
        else:
            r = expected[i] == actual[j] and m(i + 1, j + 1)
        memo[i, j] = r
        return r

    return m(0, 0)


def test_matcher() -> None:
    assert matches(["a", "...", "z"], ["a", "b", "c", "z"]) and matches(["a", "...", "z"], ["a", "z"])
    assert not matches(["a", "z"], ["a", "b", "z"]) and not matches(["a"], ["a", "b"])
    assert matches(["max abs ..."], ["max abs 1e-6"]) and not matches(["max abs ..."], ["min abs 1e-6"])
    assert normalise("time: 0.32 s  ") == normalise("time: 1.5 s") and normalise("load 4.4s,") == "load <t>,"
    assert normalise("4 samples") == "4 samples"  # counts are compared
    assert steps("```console\n$ ckptool x\nout\n$ echo $?\n1\n```\n") == [
        Step("ckptool x", ["out"]),
        Step("echo $?", ["1"]),
    ]


def _pages_with_examples() -> list[Path]:
    return [p for p in PAGES if steps(p.read_text())]


@pytest.fixture
def workdir(tmp_path: Path, request: pytest.FixtureRequest):
    def make(needs: set[str]) -> Path:
        (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
        if "vgg16_bn" in needs:
            files = request.getfixturevalue("vgg16_bn_files")
            (tmp_path / "vgg16_bn.pth").symlink_to(files["zip"])
            (tmp_path / "vgg16_bn_legacy.pth").symlink_to(files["legacy"])
        if "dcp" in needs:  # the 2-rank torch.distributed.checkpoint run, and its consolidated state
            run_dir = request.getfixturevalue("dcp_run")
            (tmp_path / "dcp").symlink_to(run_dir / "dcp")
            (tmp_path / "consolidated.safetensors").symlink_to(run_dir / "consolidated.safetensors")
        if "images" in needs:
            from PIL import Image

            photo = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
            photo.save(tmp_path / "photo.jpg")
            photo.convert("L").save(tmp_path / "scan.png")
        return tmp_path

    return make


def run(command: str, cwd: Path) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTOOL_")}
    env.update(PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""), COLUMNS="100", TERM="dumb")
    env["PYTHONPATH"] = str(ROOT / "tests") + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    return r.returncode, r.stdout.replace(str(cwd) + os.sep, "").splitlines()


@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run_as_shown(page: Path, workdir) -> None:
    text = page.read_text()
    needs = {n.strip() for m in NEEDS.findall(text) for n in m.split(",")}
    cwd = workdir(needs)
    rc = 0
    for step in steps(text):
        if step.command == "echo $?":
            actual = [str(rc)]
        else:
            rc, actual = run(step.command, cwd)
        exp = [normalise(x) for x in step.expected]
        got = [normalise(x) for x in actual]
        assert matches(exp, got), (
            f"{page.relative_to(ROOT)}: `$ {step.command}` no longer prints what the page shows\n"
            + "--- shown\n"
            + "\n".join(step.expected)
            + "\n--- printed\n"
            + "\n".join(actual)
        )


def test_every_command_has_a_page() -> None:
    from ckptool.cli.app import app

    names = {c.name for c in app.registered_commands}
    pages = {p.stem for p in (ROOT / "docs" / "commands").glob("*.md")}
    assert names and names <= pages, sorted(names - pages)
    nav = (ROOT / "mkdocs.yml").read_text()
    for p in (ROOT / "docs").rglob("*.md"):
        if "schemas" not in p.parts:
            assert str(p.relative_to(ROOT / "docs")) in nav, f"{p} is not in mkdocs.yml's nav"


def test_readme_is_short_and_its_commands_install_what_the_tests_need() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_000
    assert "python -m pip install torch==2.13.0 && python -m pip install -e '.[dev]'" in readme
    assert "python -m pytest -q" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "mkdocs build --strict" in ci and "'.[dev]'" in ci
    assert "ckptool==" not in readme and "ckptool==" not in (ROOT / ".pre-commit-hooks.yaml").read_text()


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
