"""``--download`` on the value commands: each remote file fetched once (one plain GET, counted in nginx's access
log), into a private temp folder that is gone when the command ends, whichever way it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cli.clihelp import ckptool_cmd
from sources.remote_servers import Hostile, Nginx


@pytest.fixture
def tmpdir_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp folder the downloads go to (in-process: tempfile's cached choice)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _left(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_export_download_is_one_get_and_the_same_output(cli, nginx: Nginx, served: Path, tmpdir_: Path) -> None:
    out_stream, out_dl = tmpdir_.parent / "a.safetensors", tmpdir_.parent / "b.safetensors"
    assert cli("export", f"{nginx.url}/model.pth", "--safetensors", out_stream).exit_code == 0
    mark = nginx.mark()
    r = cli("export", "--json", "--download", f"{nginx.url}/model.pth", "--safetensors", out_dl)
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    size = (served / "model.pth").stat().st_size
    assert [(h.uri, h.range, h.status, h.nbytes) for h in hits] == [("/model.pth", "-", 200, size)]
    d = json.loads(r.stdout)
    assert (d["requests"], d["bytes_fetched"]) == (1, size)
    assert out_dl.read_bytes() == out_stream.read_bytes()
    assert _left(tmpdir_) == []  # the copy is gone


def test_download_fetched_line_counts_the_one_request(cli, nginx: Nginx, served: Path, tmpdir_: Path) -> None:
    r = cli("scan", "--download", f"{nginx.url}/model.safetensors")
    assert r.exit_code == 0, r.output + r.stderr
    from ckptool.sources.remote import human

    size = (served / "model.safetensors").stat().st_size
    assert r.stderr.strip().splitlines()[-1] == f"fetched {human(size)} in 1 request"
    assert "tmp" not in r.stdout and str(tmpdir_) not in r.output  # output names the URL, never the copy
    assert nginx.url in r.stdout


@pytest.mark.parametrize("where", ["URL/sharded/", "hf://org/sharded"])
def test_a_sharded_model_downloads_each_file_once(
    cli, nginx: Nginx, served: Path, tmpdir_: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", nginx.url)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    url = where.replace("URL", nginx.url)
    mark = nginx.mark()
    r = cli("diff", "--download", url, served / "sharded")
    hits = [h for h in nginx.hits(mark) if h.status != 404]
    assert r.exit_code == 0, r.output + r.stderr
    assert "bit-identical" in r.stdout
    files = sorted(h.uri.rsplit("/", 1)[-1] for h in hits)
    assert files == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)] + ["model.safetensors.index.json"], hits
    assert all(h.range == "-" and h.status == 200 for h in hits), hits
    assert _left(tmpdir_) == []


def test_extract_and_onnx_external_data_download(cli, nginx: Nginx, served: Path, tmpdir_: Path) -> None:
    mark = nginx.mark()
    r = cli("diff", "--download", f"{nginx.url}/onnx/model.onnx", served / "onnx" / "model.onnx")
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert sorted(h.uri for h in hits) == ["/onnx/model.onnx", "/onnx/weights.bin"], hits
    out = tmpdir_.parent / "classifier.safetensors"
    r = cli("extract", "--download", f"{nginx.url}/legacy.pth", "-p", "classifier", "-o", out)
    assert r.exit_code == 0, r.output + r.stderr
    assert out.stat().st_size > 256 * 576 * 4
    assert _left(tmpdir_) == []


def test_errors_and_the_size_cap_leave_nothing(
    cli, nginx: Nginx, hostile: Hostile, tmpdir_: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = cli("scan", "--download", f"{nginx.url}/missing.pth")
    assert r.exit_code == 2
    assert "not found on the server (HTTP 404)" in r.stderr
    r = cli("scan", "--download", f"{hostile.url}/liewhole/model.pth")  # announces 1000 bytes it never sends
    assert r.exit_code == 2
    assert "bytes it announced" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _left(tmpdir_) == []
    before = len(hostile.requests)
    monkeypatch.setenv("CKPTOOL_DOWNLOAD_MAX", str(1 << 30))
    t = time.monotonic()
    r = cli("scan", "--download", f"{hostile.url}/huge/model.pth")  # 16 GB announced: refused unread
    assert r.exit_code == 2
    assert "--download: the file is 16 GB, more than the 1.0 GB the download may take" in r.stderr, r.stderr
    assert len(hostile.requests) == before + 1 and time.monotonic() - t < 10
    monkeypatch.setenv("CKPTOOL_DOWNLOAD_MAX", "100000")
    r = cli("export", "--download", f"{nginx.url}/model.pth", "--safetensors", tmpdir_.parent / "x.safetensors")
    assert r.exit_code == 2
    assert "more than the 98 KB the download may take" in r.stderr, r.stderr
    assert "CKPTOOL_DOWNLOAD_MAX" in r.stderr
    assert not (tmpdir_.parent / "x.safetensors").exists()
    assert _left(tmpdir_) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_download_removes_the_copy(hostile: Hostile, tmp_path: Path, sig: int) -> None:
    """The server sends 1 MB and stalls; the signal arrives while the copy is half written."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.Popen(
        [*ckptool_cmd(), "scan", "--download", f"{hostile.url}/slow/model.pth"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(f.is_file() for f in tmp.rglob("*")):  # the copy is open: the body is coming (1 MB, then nothing)
            time.sleep(0.5)
            break
        time.sleep(0.05)
    else:
        p.kill()
        pytest.fail("the download never started")
    assert len(_left(tmp)) >= 1  # the private folder and the partial copy exist
    p.send_signal(sig)
    rc = p.wait(timeout=30)
    assert rc == (130 if sig == signal.SIGINT else 143), p.stderr.read() if p.stderr else ""
    assert _left(tmp) == []


def test_download_on_a_terminal(tty, nginx: Nginx, served: Path) -> None:
    """On a pseudo-terminal: the report for the URL, then the one fetched line (one request: the download)."""
    from ckptool.sources.remote import human

    res = tty("scan", "--download", f"{nginx.url}/model.safetensors")
    assert res.returncode == 0, res
    assert f"{nginx.url}/model.safetensors" in res.text
    last = [ln for ln in res.text.splitlines() if ln.strip()][-1]
    assert last == f"fetched {human((served / 'model.safetensors').stat().st_size)} in 1 request", res.text
