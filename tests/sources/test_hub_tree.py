"""``hf://ORG/REPO`` (no file) lists the repo with the Hub's tree API and opens what transformers would: the
safetensors file, else its index, else the pickles. Against a local server speaking the API paths
huggingface_hub uses (``/api/models/{repo}/tree/{rev}``, paged) and ``/{repo}/resolve/{rev}/{file}``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sources.remote_servers import Hub


@pytest.fixture
def on_hub(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> Hub:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    return hub


def test_a_sharded_repo_is_listed_once_then_the_index_and_each_shard(cli, on_hub: Hub, served: Path) -> None:
    local = cli("inspect", "--plain", served / "sharded")
    mark = on_hub.mark()
    r = cli("inspect", "--plain", "hf://org/sharded")
    hits = on_hub.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == local.stdout
    assert hits[0].uri == "/api/models/org/sharded/tree/main" and hits[0].status == 200
    assert all(h.status in (200, 206) for h in hits), hits  # nothing probed, nothing missed
    files = sorted(h.uri.rsplit("/", 1)[-1] for h in hits[1:])
    assert files == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)] + ["model.safetensors.index.json"], hits


def test_a_single_file_repo(cli, on_hub: Hub, served: Path) -> None:
    mark = on_hub.mark()
    r = cli("inspect", "--plain", "hf://org/binonly")
    hits = on_hub.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == cli("inspect", "--plain", served / "model.pth").stdout
    assert [h.uri for h in hits][:2] == [
        "/api/models/org/binonly/tree/main",
        "/org/binonly/resolve/main/pytorch_model.bin",
    ]
    assert {h.uri for h in hits[1:]} == {"/org/binonly/resolve/main/pytorch_model.bin"}


def test_safetensors_wins_over_the_pickle(cli, on_hub: Hub, served: Path) -> None:
    """org/model holds model.safetensors and pytorch_model.bin: transformers loads the safetensors file (its
    from_pretrained tries model.safetensors first), and so does ckptool; the pickle is never fetched."""
    mark = on_hub.mark()
    r = cli("inspect", "--json", "hf://org/model@v1")
    hits = on_hub.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    d = json.loads(r.stdout)
    assert d["format"] == "safetensors" and d["path"] == "hf://org/model@v1/model.safetensors"
    assert [h.uri for h in hits] == ["/api/models/org/model/tree/v1", "/org/model/resolve/v1/model.safetensors"]
    assert d["requests"] == 2


def test_missing_repo_revision_and_weights_are_one_line(cli, on_hub: Hub) -> None:
    for url, msg in (
        ("hf://org/missing", "hf://org/missing: no such repo on the Hub, or it is private or gated"),
        ("hf://org/model@nope", "hf://org/model@nope: the repo has no revision 'nope'"),
        ("hf://org/nothing", "hf://org/nothing: the repo holds none of model.safetensors, "),
    ):
        r = cli("inspect", url)
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert lines[0].startswith(f"ckptool: error: {msg}"), r.stderr
        assert len([ln for ln in lines if ln.startswith("ckptool: error")]) == 1
    r = cli("inspect", "--json", "hf://org/missing")
    assert json.loads(r.stdout)["error"]["hint"].startswith("check the name")


def test_the_listing_follows_its_pages(cli, on_hub: Hub, served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(on_hub, "page", 1)  # one entry a page: the index is on page 4
    mark = on_hub.mark()
    r = cli("inspect", "--plain", "hf://org/sharded")
    hits = on_hub.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == cli("inspect", "--plain", served / "sharded").stdout
    pages = [h.uri for h in hits if h.uri.startswith("/api/")]
    assert pages == ["/api/models/org/sharded/tree/main"] + [
        f"/api/models/org/sharded/tree/main?cursor={k}" for k in (1, 2, 3)
    ]


def test_a_repo_folder_is_listed_by_the_tree_api(cli, on_hub: Hub, served: Path) -> None:
    mark = on_hub.mark()
    r = cli("inspect", "--plain", "hf://org/sharded/")
    hits = on_hub.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == cli("inspect", "--plain", served / "sharded").stdout
    assert hits[0].uri == "/api/models/org/sharded/tree/main"
    assert all(h.status != 404 for h in hits), hits
