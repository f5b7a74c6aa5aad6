"""``scan --jobs N`` over URLs: what the worker processes fetched is the command's ``bytes_fetched`` /
``requests`` (counted at nginx), and their ``--download`` copies are gone when the command ends."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from sources.remote_servers import Nginx

NAMES = ("model.pth", "legacy.pth", "model.safetensors")


@pytest.mark.parametrize("values", [False, True])
def test_jobs_report_what_the_workers_fetched(cli, nginx: Nginx, values: bool) -> None:
    urls = [f"{nginx.url}/{n}" for n in NAMES]
    mark = nginx.mark()
    r = cli("scan", "--jobs", "2", "--json", *([] if values else ["--no-values"]), *urls)
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    d = json.loads(r.stdout)
    assert [f["path"] for f in d["files"]] == urls
    assert d["requests"] == len(hits) >= 3
    assert d["bytes_fetched"] == sum(h.nbytes for h in hits)
    assert {h.uri for h in hits} == {f"/{n}" for n in NAMES}
    one = cli("scan", "--json", *([] if values else ["--no-values"]), *urls)  # the same in one process
    assert json.loads(one.stdout)["requests"] == d["requests"]


def test_jobs_fetched_line_and_downloads(cli, nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    urls = [f"{nginx.url}/{n}" for n in NAMES]
    mark = nginx.mark()
    r = cli("scan", "--jobs", "2", "--download", *urls)
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert sorted((h.uri, h.range, h.status) for h in hits) == sorted((f"/{n}", "-", 200) for n in NAMES)
    from ckptool.sources.remote import human

    total = sum(h.nbytes for h in hits)
    assert r.stderr.strip().splitlines()[-1] == f"fetched {human(total)} in 3 requests"
    assert list(tmp_path.iterdir()) == []  # every worker removed its copies
