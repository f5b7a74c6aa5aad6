"""Every command on a torch.distributed.checkpoint folder (and on its ``.metadata``), from the real 2-rank run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def _raw(t: Any) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("which", ["dcp", "dcp/.metadata"])
def test_inspect(cli: Any, dcp_run: Path, which: str) -> None:
    r = cli("inspect", dcp_run / which)
    assert r.exit_code == 0, r.output
    assert "format: dcp" in r.output
    assert "state_dict: model" in r.output
    assert "layers.0.mlp.up.weight" in r.output and "[4, 6]" in r.output
    assert "step: 1200" in r.output and "run_name: dcp-two-ranks" in r.output
    assert "3 tensors reassembled from chunks" in r.output
    j = json.loads(cli("inspect", "--json", dcp_run / which).output)
    assert j["format"] == "dcp" and j["metadata"]["files"] == ["__0_0.distcp", "__1_0.distcp"]
    assert {t["name"]: t["shape"] for t in j["tensors"]}["embed.weight"] == [10, 4]


def test_inspect_on_a_terminal(tty: Callable[..., Any], dcp_run: Path) -> None:
    r = tty("inspect", dcp_run / "dcp")
    assert r.returncode == 0, r
    assert "dcp" in r.text and "layers.0.attn.qkv.weight" in r.text and "bfloat16" in r.text


@pytest.mark.parametrize("other", ["consolidated.safetensors", "consolidated.pt"])
def test_diff_against_the_consolidated_state_says_identical(cli: Any, dcp_run: Path, other: str) -> None:
    r = cli("diff", dcp_run / "dcp", dcp_run / other)
    assert r.exit_code == 0, r.output
    assert "identical: all 9 tensors bit-identical" in r.output


def test_diff_sees_a_changed_chunk(cli: Any, dcp_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    full = load_file(dcp_run / "consolidated.safetensors")
    full["layers.0.mlp.up.weight"][3, 5] += 1  # in rank 1's column block
    save_file(full, tmp_path / "changed.safetensors")
    r = cli("diff", dcp_run / "dcp", tmp_path / "changed.safetensors")
    assert r.exit_code == 1, r.output
    assert "layers.0.mlp.up.weight" in r.output


def test_export_to_safetensors_is_bit_exact(cli: Any, dcp_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "model.safetensors"
    r = cli("export", dcp_run / "dcp", "--safetensors", out)
    assert r.exit_code == 0, r.output
    assert "bit-exact" in r.output
    got, want = load_file(out), load_file(dcp_run / "consolidated.safetensors")
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and _raw(got[k]) == _raw(v), k


def test_export_to_pth_loads_in_torch(cli: Any, dcp_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "model.pth"
    r = cli("export", dcp_run / "dcp/.metadata", "--pth", out)
    assert r.exit_code == 0, r.output
    got = torch.load(out, weights_only=True)
    for k, v in load_file(dcp_run / "consolidated.safetensors").items():
        assert torch.equal(got[k], v), k


def test_extract_a_prefix(cli: Any, dcp_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "layer0.safetensors"
    r = cli("extract", dcp_run / "dcp", "--prefix", "layers.0", "-o", out)
    assert r.exit_code == 0, r.output
    got = load_file(out)
    want = load_file(dcp_run / "consolidated.safetensors")
    assert sorted(got) == ["attn.qkv.weight", "mlp.gate", "mlp.up.weight"]
    assert all(torch.equal(got[k], want[f"layers.0.{k}"]) for k in got)


def test_layers_and_check(cli: Any, dcp_run: Path) -> None:
    r = cli("layers", dcp_run / "dcp")
    assert r.exit_code == 0, r.output
    assert "weight layers: 3" in r.output
    r = cli("check", dcp_run / "dcp")
    assert r.exit_code == 1, r.output  # no known family has these names: a finding, not a read error (2)
    assert "no known architecture matches" in r.output


def test_scan(cli: Any, dcp_run: Path) -> None:
    r = cli("scan", dcp_run / "dcp" / ".metadata")
    assert r.exit_code == 0, r.output
    assert "ok" in r.output and "(dcp;" in r.output
    j = json.loads(cli("scan", "--json", dcp_run / "dcp" / ".metadata").output)
    assert j["files"][0]["format"] == "dcp" and j["files"][0]["safe"] is True


def test_scan_the_folder(cli: Any, dcp_run: Path) -> None:
    r = cli("scan", dcp_run / "dcp")
    assert r.exit_code == 0, r.output
    assert "dcp/.metadata: ok" in r.output
    assert "part of the dcp checkpoint" in r.output  # the .distcp files are scanned through .metadata, not alone


def test_check_and_layers_name_a_family_in_a_dcp_folder(cli: Any, tmp_path: Path, real_state_dict: Any) -> None:
    """A single-process DCP (``no_dist=True``) of a real resnet18 training state: check identifies it."""
    import warnings

    import torch.distributed.checkpoint as tdcp

    sd = real_state_dict("resnet18", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tdcp.save({"model": dict(sd), "epoch": 3}, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    r = cli("check", tmp_path / "dcp")
    assert r.exit_code == 0, r.output
    assert "resnet18" in r.output
    r = cli("layers", tmp_path / "dcp", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["weight_layers"] == 18
