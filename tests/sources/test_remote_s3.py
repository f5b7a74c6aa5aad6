"""``s3://`` through fsspec/s3fs against moto's S3 server: the same dump as the local file in a few ranged GETs
(counted in moto's request log), scan --no-values reads no tensor bytes, values stream, credentials never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sources.remote_servers import MotoS3

# HEAD (size) + the first 64 KB, then what the format needs: a zip's tail and one GET per group of local headers
# (S3 answers one range per request: no multi-range), a legacy file's storage counts
BUDGET = {"model.safetensors": (2, 64 << 10), "model.pth": (24, 512 << 10), "legacy.pth": (20, 512 << 10)}


@pytest.fixture
def s3(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.config.conf.pop("s3", None)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem made before the endpoint was set
    return moto_s3


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_inspect_is_the_local_dump_in_a_few_gets(cli, s3: MotoS3, served: Path, name: str) -> None:
    local = cli("inspect", "--plain", served / name)
    mark = s3.mark()
    r = cli("inspect", "--plain", f"s3://weights/{name}")
    hits = s3.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == local.stdout
    requests, nbytes = BUDGET[name]
    assert hits[0].method == "HEAD" and all(h.method == "GET" and h.status == 206 for h in hits[1:]), hits
    assert all(h.uri == f"/weights/{name}" for h in hits), hits
    assert 2 <= len(hits) <= requests, hits
    d = json.loads(cli("inspect", "--json", f"s3://weights/{name}").stdout)
    assert d["requests"] == len(hits)  # ckptool counts what moto saw
    assert d["bytes_fetched"] <= nbytes  # moto logs no bytes: ckptool's count, under the budget
    assert d["bytes_fetched"] < (served / name).stat().st_size / 4


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_scan_no_values_costs_no_more_than_inspect(cli, s3: MotoS3, name: str) -> None:
    i = json.loads(cli("inspect", "--json", f"s3://weights/{name}").stdout)
    mark = s3.mark()
    r = cli("scan", "--no-values", "--json", f"s3://weights/{name}")
    hits = s3.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    d = json.loads(r.stdout)
    assert d["requests"] == len(hits) <= i["requests"]
    assert d["bytes_fetched"] <= i["bytes_fetched"]


def test_scan_flags_a_malicious_pickle_on_s3(cli, s3: MotoS3) -> None:
    r = cli("scan", "--no-values", "--json", "s3://weights/evil.pth")
    assert r.exit_code == 1, r.output + r.stderr
    (f,) = json.loads(r.stdout)["files"]
    assert not f["safe"] and any("system" in g["name"] for g in f["globals"])


def test_values_stream_from_s3(cli, s3: MotoS3, served: Path, tmp_path: Path) -> None:
    header = json.loads(cli("inspect", "--json", "s3://weights/model.pth").stdout)["requests"]
    mark = s3.mark()
    r = cli("diff", "s3://weights/model.pth", served / "model.safetensors")
    hits = s3.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert "bit-identical" in r.stdout
    assert len(hits) <= header + 3, hits  # the values in runs (2 MB, then 4 MB...), not one GET per chunk
    out = tmp_path / "o.safetensors"
    r = cli("export", "--download", "s3://weights/legacy.pth", "--safetensors", out)
    assert r.exit_code == 0, r.output + r.stderr
    assert cli("diff", out, served / "legacy.pth").exit_code == 0


def test_credentials_never_shown(cli, s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("inspect", "s3://weights/missing.pth")
    assert r.exit_code == 2
    assert r.stderr.strip() == "ckptool: error: s3://weights/missing.pth: not found", r.stderr
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-0123")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    for cmd in (["inspect"], ["scan", "--json"]):
        r = cli(*cmd, "s3://weights/model.safetensors")
        text = r.output + r.stderr
        for secret in ("a-wrong-secret-0123", s3.env["AWS_ACCESS_KEY_ID"], "testing-secret-never-shown"):
            assert secret not in text
