"""action.yml, the GitHub composite action: its steps' scripts run locally, as the runner runs them (bash
--noprofile --norc -eo pipefail, inputs and ${{ github.workspace }} substituted, a fake GITHUB_* environment in
a temporary folder). The install step really installs ckptool's core from a copy of this repository into a
fresh venv; the scan step writes SARIF, exposes the exit code as an output and fails per policy."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())


def test_action_shape() -> None:
    assert ACTION["runs"]["using"] == "composite"
    assert {"paths", "args", "sarif-file", "fail", "python"} <= set(ACTION["inputs"])
    assert ACTION["outputs"]["exit-code"]["value"] == "${{ steps.scan.outputs.exit-code }}"
    steps = ACTION["runs"]["steps"]
    assert all(s["shell"] == "bash" for s in steps)
    assert '"$GITHUB_ACTION_PATH"' in steps[0]["run"] and "pip install" in steps[0]["run"]
    assert "--format sarif" in steps[1]["run"] and steps[1]["id"] == "scan"


def _subst(text: str, inputs: dict[str, str], workspace: Path) -> str:
    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("inputs."):
            return inputs[expr[len("inputs.") :]]
        if expr == "github.workspace":
            return str(workspace)
        raise AssertionError(f"unexpected expression {expr}")

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def run_action(action_path: Path, workspace: Path, tmp: Path, **overrides: str) -> tuple[int, dict[str, str], str]:
    """Run every step; returns (exit status of the last step run, outputs, stdout). Stops at a failing step."""
    inputs = {k: str(v.get("default", "")) for k, v in ACTION["inputs"].items()}
    inputs.update(overrides)
    out_file, summary = tmp / "github_output", tmp / "step_summary"
    out_file.write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")},
        "GITHUB_ACTION_PATH": str(action_path),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_OUTPUT": str(out_file),
        "GITHUB_STEP_SUMMARY": str(summary),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    rc, stdout = 0, ""
    for i, step in enumerate(ACTION["runs"]["steps"]):
        script = tmp / f"step{i}.sh"
        script.write_text(_subst(step["run"], inputs, workspace))
        step_env = {**env, **{k: _subst(str(v), inputs, workspace) for k, v in step.get("env", {}).items()}}
        cwd = _subst(step.get("working-directory", str(workspace)), inputs, workspace)
        p = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        rc, stdout = p.returncode, stdout + p.stdout
        if rc != 0:
            break
    outputs = dict(line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line)
    return rc, outputs, stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(action path: a copy of this repository, python of a fresh venv) after the action's install step."""
    base = tmp_path_factory.mktemp("action")
    src = base / "ckptool-action"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "action.yml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ckptool", src / "ckptool", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    ws = base / "empty-ws"
    ws.mkdir()
    (ws / "w.safetensors").write_bytes((FIXTURES / "tiny_vgg.safetensors").read_bytes())
    rc, outputs, _ = run_action(src, ws, base, python=str(python))
    assert rc == 0 and outputs["exit-code"] == "0"
    where = subprocess.run(
        [str(python), "-c", "import ckptool; print(ckptool.__file__)"], capture_output=True, text=True, cwd=base
    )
    assert where.stdout.startswith(str(venv))  # installed into the venv, not the worktree's editable copy
    return src, python


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "weights").mkdir(parents=True)
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", ws / "weights" / "model.pth")
    (ws / "weights" / "evil.pkl").write_bytes(b"cposix\nsystem\n(Vecho pwned\ntR.")
    return ws


def test_findings_fail_the_step_and_sarif_is_written(installed, workspace: Path, tmp_path: Path) -> None:
    action, python = installed
    rc, outputs, stdout = run_action(action, workspace, tmp_path, python=str(python), paths="weights")
    assert rc == 1 and outputs["exit-code"] == "1" and outputs["sarif-file"] == "ckptool.sarif"
    sarif = json.loads((workspace / "ckptool.sarif").read_text())
    res = sarif["runs"][0]["results"]
    assert [r["ruleId"] for r in res] == ["dangerous-global"]
    assert res[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "weights/evil.pkl"
    assert "exit 1, 1 errors, 0 warnings" in stdout and "weights/evil.pkl" in stdout
    assert "exit 1" in (tmp_path / "step_summary").read_text()


def test_fail_false_keeps_the_exit_code_as_output(installed, workspace: Path, tmp_path: Path) -> None:
    action, python = installed
    rc, outputs, _ = run_action(action, workspace, tmp_path, python=str(python), fail="false", paths="weights")
    assert rc == 0 and outputs["exit-code"] == "1"


def test_policy_and_args(installed, workspace: Path, tmp_path: Path) -> None:
    action, python = installed
    (workspace / "weights" / "evil.pkl").unlink()
    (workspace / ".ckptool.toml").write_text('allowed-formats = ["safetensors"]\n')
    rc, outputs, _ = run_action(action, workspace, tmp_path, python=str(python), **{"sarif-file": "out.sarif"})
    assert rc == 1 and outputs["exit-code"] == "1"
    res = json.loads((workspace / "out.sarif").read_text())["runs"][0]["results"]
    assert [r["ruleId"] for r in res] == ["format-not-allowed"]
    rc, outputs, _ = run_action(action, workspace, tmp_path, python=str(python), args="--no-policy")
    assert rc == 0 and outputs["exit-code"] == "0"
    rc, outputs, _ = run_action(action, workspace, tmp_path, python=str(python), paths="'nothing/*.pth'")
    assert rc == 2 and outputs["exit-code"] == "2"
