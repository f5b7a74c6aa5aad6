"""TorchScript archives: ``scan`` never says "ok" (their code runs at torch.load / torch.jit.load, and ckptool
cannot vouch for it) and names the calls it can see in ``code/*.py``; ``inspect`` still lists the tensors.

The archives are scripted here and never loaded (the one with ``__setstate__`` would run it)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from proc import run_script

import ckptool
from ckptool.formats.torchscript import calls_in, describe


class Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


class WithSetstate(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.arange(6.0).reshape(2, 3))
        self.register_buffer("b", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.t() + self.b[:2]

    @torch.jit.export
    def __getstate__(self) -> list[torch.Tensor]:
        return [self.w, self.b]

    @torch.jit.export
    def __setstate__(self, state: list[torch.Tensor]) -> None:
        t = torch.from_file("/nonexistent/ckptool-canary", size=1)
        self.w = state[0]
        self.b = state[1] + t.sum() * 0


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    d = tmp_path_factory.mktemp("ts")
    out = {}
    for name, cls in (("plain", Plain), ("setstate", WithSetstate)):
        torch.manual_seed(0)
        m = cls()
        p = d / f"{name}.pt"
        torch.jit.script(m).save(str(p))
        out[name] = (p, {k: v.detach().clone() for k, v in m.state_dict().items()})
    return out


def _code(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return "".join(zf.read(n).decode() for n in zf.namelist() if n.endswith(".py"))


def test_the_archive_really_calls_from_file_in_setstate(archives) -> None:
    code = _code(archives["setstate"][0])
    assert "def __setstate__" in code and "torch.from_file(" in code


@pytest.mark.parametrize("name", ["plain", "setstate"])
def test_scan_never_says_ok(name: str, archives, cli) -> None:
    path = archives[name][0]
    r = cli("scan", "--json", path)
    assert r.exit_code == 1, r.stdout
    report = json.loads(r.stdout)["files"][0]
    kinds = [f["kind"] for f in report["findings"]]
    assert "torchscript-code" in kinds
    msg = next(f["message"] for f in report["findings"] if f["kind"] == "torchscript-code")
    assert "cannot vouch" in msg


def test_scan_names_setstate_and_from_file(archives) -> None:
    r = run_script("scan", archives["setstate"][0])
    assert r.returncode == 1
    assert "__setstate__ runs while the archive loads" in r.stdout
    assert "torch.from_file (maps a file by name)" in r.stdout
    assert " ok " not in r.stdout.splitlines()[0]


def test_plain_archive_lists_its_calls(archives) -> None:
    r = run_script("scan", archives["plain"][0])
    assert r.returncode == 1 and "torch.relu" in r.stdout


@pytest.mark.parametrize("name", ["plain", "setstate"])
def test_inspect_still_lists_the_tensors(name: str, archives) -> None:
    path, state = archives[name]
    with ckptool.open(path) as ck:
        assert ck.format == "torchscript"
        assert len(ck) == len(state)
        got = [ck.numpy(t) for t in ck.tensors]
        for want in state.values():  # a __setstate__ archive lists them by position in its state
            assert any(g.shape == tuple(want.shape) and (g == want.numpy()).all() for g in got)


def test_calls_in_reads_text_only() -> None:
    code = b"def __setstate__(self):\n  x = torch.from_file('f', None, 1)\n  y = ops.myns.run(x)\n  z = ops.aten.add(x, x)\n"
    hooks, calls = calls_in(code)
    assert hooks == ["__setstate__"] and calls == ["torch.from_file", "ops.myns.run", "ops.aten.add"]
    text = describe(hooks, calls)
    assert "custom operators ops.myns.run" in text and "calls ops.aten.add" in text
