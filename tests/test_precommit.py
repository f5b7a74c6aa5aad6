"""The pre-commit hooks in .pre-commit-hooks.yaml, run for real by pre-commit against temporary git
repositories, offline (the hooks use the installed ckptool: language system, nothing to download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptool.arch.vgg import vgg_spec

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / ".pre-commit-hooks.yaml"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _env(home: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # the ckptool script of this environment comes first
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update(
        PATH=bindir + os.pathsep + env.get("PATH", ""),
        PRE_COMMIT_HOME=str(home / "cache"),  # pre-commit's store: a fresh one, no network needed
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.invalid",
    )
    return env


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return r.stdout.strip()


def _pre_commit(cwd: Path, env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pre_commit", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _features_file(path: Path, arch: str, seed: int) -> Path:
    """A backbone-only state_dict (the article's `features`, prefix stripped), as `ckptool extract` writes."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in vgg_spec(arch).part("features").state_dict_shapes().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):  # a variance is positive (scan flags negative ones)
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.01
    torch.save(sd, path)
    return path


def _onnx_with_initializers(path: Path, pth: Path) -> Path:
    """An ONNX model whose initializers are a state_dict's tensors under their own names, as `ckptool export
    --onnx` writes them (torch's exporter drops num_batches_tracked)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = torch.load(pth, weights_only=True)
    inits = [numpy_helper.from_array(v.numpy(), k) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    out = helper.make_tensor_value_info(inits[0].name, TensorProto.FLOAT, list(inits[0].dims))
    onnx.save(helper.make_model(helper.make_graph([], "backbone", [], [out], inits)), str(path))
    return path


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("precommit")
    env = _env(base)
    hooks = base / "hooks"
    hooks.mkdir()
    # A hook repository is a git repository with the manifest at its root: the file of this checkout, committed
    # (try-repo and `rev:` read committed content, so a copy keeps the test independent of this tree's git state).
    shutil.copy(HOOKS, hooks / ".pre-commit-hooks.yaml")
    _git(hooks, env, "init", "-q")
    _git(hooks, env, "add", ".pre-commit-hooks.yaml")
    _git(hooks, env, "commit", "-q", "-m", "hooks")
    proj = base / "proj"
    proj.mkdir()
    _git(proj, env, "init", "-q")
    _features_file(proj / "backbone_vgg11_bn.pth", "vgg11_bn", 0)
    _features_file(proj / "backbone_vgg13_bn.PT", "vgg13_bn", 1)  # upper-case extension: still a weight file
    (proj / "notes.txt").write_text("not a weight file\n")
    shutil.copy(ROOT / "fixtures" / "tiny_mlp.onnx", proj / "model.onnx")
    _onnx_with_initializers(proj / "backbone_vgg11_bn.onnx", proj / "backbone_vgg11_bn.pth")
    return {"env": env, "hooks": hooks, "proj": proj, "rev": _git(hooks, env, "rev-parse", "HEAD")}


def test_manifest_is_valid() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(HOOKS)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_try_repo_check_identifies_backbones(repos: dict) -> None:
    """try-repo runs a hook with no args: check's --arch auto names each backbone file."""
    env, proj = repos["env"], repos["proj"]
    r = _pre_commit(
        proj, env, "try-repo", repos["hooks"], "ckptool-check", "--verbose",
        "--files", "backbone_vgg11_bn.pth", "backbone_vgg13_bn.PT", "notes.txt",
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert "ckptool check (weight files fit the architecture)" in out
    assert "backbone_vgg11_bn.pth" in out and "backbone_vgg13_bn.PT" in out
    assert "notes.txt" not in out  # not a weight file: never passed to the hook
    assert "vgg11_bn" in out and "vgg13_bn" in out
    assert r.returncode == 0, out


def _config(repos: dict, args: list[str]) -> None:
    cfg = repos["proj"] / ".pre-commit-config.yaml"
    arg_list = ", ".join(f'"{a}"' for a in args)
    cfg.write_text(
        f"repos:\n  - repo: {repos['hooks']}\n    rev: {repos['rev']}\n    hooks:\n"
        f"      - id: ckptool-check\n        args: [{arg_list}]\n"
    )


def test_check_hook_on_staged_files_with_args(repos: dict) -> None:
    """The way a project uses it: .pre-commit-config.yaml with args, `pre-commit run` on what is staged."""
    env, proj = repos["env"], repos["proj"]
    _config(repos, ["--arch=vgg11_bn", "--part=features"])
    _git(proj, env, "add", "backbone_vgg11_bn.pth", "notes.txt")
    r = _pre_commit(proj, env, "run", "--verbose")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Passed" in r.stdout and "backbone_vgg11_bn.pth" in r.stdout

    _git(proj, env, "add", "backbone_vgg13_bn.PT")  # a vgg13_bn backbone is not a vgg11_bn one
    r = _pre_commit(proj, env, "run", "--verbose")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Failed" in r.stdout and "exit code: 1" in r.stdout
    assert "backbone_vgg13_bn.PT" in r.stdout

    _config(repos, ["--arch=no_such_arch"])  # a usage error is exit 2, and the hook says so
    r = _pre_commit(proj, env, "run", "--files", "backbone_vgg11_bn.pth")
    assert r.returncode == 1
    assert "exit code: 2" in r.stdout and "unknown architecture" in r.stdout
    _git(proj, env, "reset", "-q")


class _Evil:
    """Pickles as a call to os.system (never executed: ckptool only reads the opcodes)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.canary}",))


def test_try_repo_scan(repos: dict) -> None:
    env, proj = repos["env"], repos["proj"]
    canary = proj.parent / "CANARY"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(canary)}, proj / "evil.pth")
    r = _pre_commit(
        proj, env, "try-repo", repos["hooks"], "ckptool-scan", "--verbose",
        "--files", "backbone_vgg11_bn.pth", "model.onnx", "notes.txt",
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "ckptool scan (weight files are safe to load)" in out and "Passed" in out
    assert "backbone_vgg11_bn.pth" in out and "model.onnx" in out and "notes.txt" not in out

    r = _pre_commit(
        proj, env, "try-repo", repos["hooks"], "ckptool-scan", "--verbose",
        "--files", "backbone_vgg11_bn.pth", "evil.pth",
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Failed" in out and "exit code: 1" in out
    assert "evil.pth" in out and "system" in out  # the dangerous global is named
    assert not canary.exists()  # nothing ran
    (proj / "evil.pth").unlink()


def test_non_weight_files_are_skipped_and_onnx_is_checked(repos: dict) -> None:
    """check skips text files; an ONNX file is checked by its initializers (a vgg11_bn backbone passes, an
    ONNX graph of another model fails)."""
    env, proj = repos["env"], repos["proj"]
    _config(repos, ["--arch=vgg11_bn", "--part=features"])
    r = _pre_commit(proj, env, "run", "--files", "notes.txt")
    assert r.returncode == 0
    assert "(no files to check)Skipped" in r.stdout
    r = _pre_commit(proj, env, "run", "--verbose", "--files", "notes.txt", "backbone_vgg11_bn.onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Passed" in r.stdout and "backbone_vgg11_bn.onnx" in r.stdout
    r = _pre_commit(proj, env, "run", "--verbose", "--files", "model.onnx")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Failed" in r.stdout and "model.onnx" in r.stdout
