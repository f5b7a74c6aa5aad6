"""Hostile HTTP servers: each misbehaviour gives one clear line and exit 2, or the correct output, in
bounded time and memory; credentials never appear."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sources.remote_servers import Hostile

from ckptool.sources import remote

PEAK = (
    "import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'ckptool', *sys.argv[1:]]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def _ckptool(*args: str, timeout: float = 60, peak: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process; ``peak``: its peak RSS (KB) is the last line of stdout."""
    cmd = [sys.executable, "-c", PEAK, *args] if peak else [sys.executable, "-m", "ckptool", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _one_line(r: object) -> str:
    err = r.stderr.strip()  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_honest_server_is_the_local_dump(cli, hostile: Hostile, served: Path) -> None:
    r = cli("inspect", "--plain", f"{hostile.url}/ok/model.pth")
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == cli("inspect", "--plain", served / "model.pth").stdout


def test_a_server_ignoring_range_on_a_small_file_gives_the_right_answer(cli, hostile: Hostile, served: Path) -> None:
    r = cli("inspect", "--plain", f"{hostile.url}/norange/model.pth")
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == cli("inspect", "--plain", served / "model.pth").stdout


@pytest.mark.parametrize("kind", ["huge", "nolength"])
def test_a_server_ignoring_range_with_16_gb_is_refused_in_bounded_memory(hostile: Hostile, kind: str) -> None:
    t0 = time.monotonic()
    r = _ckptool("inspect", f"{hostile.url}/{kind}/model.pth", peak=True)
    dt = time.monotonic() - t0
    assert r.returncode == 2, r.stdout + r.stderr
    err = _one_line(r)
    assert "ignores Range requests" in err and "refused" in err, err
    assert dt < 30
    peak_mb = int(r.stdout.split()[-1]) / 1024  # ckptool's own peak RSS (ru_maxrss is in KB)
    assert peak_mb < 300, peak_mb  # the 16 MB cap, not 16 GB


@pytest.mark.parametrize(
    ("kind", "text"),
    [("lie", "the server's Content-Length (66536) disagrees with its Content-Range (65536 bytes)"),
     ("liewhole", "the server sent 2821106 of the 2822106 bytes it announced")],
)  # fmt: skip
def test_a_lying_content_length_is_one_line(cli, hostile: Hostile, served: Path, kind: str, text: str) -> None:
    assert (served / "model.pth").stat().st_size == 2821106
    r = cli("inspect", f"{hostile.url}/{kind}/model.pth")
    assert r.exit_code == 2
    assert _one_line(r) == f"ckptool: error: {hostile.url}/{kind}/model.pth: {text}"


def test_a_server_sending_fewer_bytes_than_asked_is_asked_again(cli, hostile: Hostile, served: Path) -> None:
    r = cli("inspect", "--json", f"{hostile.url}/short/model.pth")
    assert r.exit_code == 0, r.output + r.stderr
    d = json.loads(r.stdout)
    local = json.loads(cli("inspect", "--json", served / "model.pth").stdout)
    assert d["tensors"] == local["tensors"]
    assert d["requests"] > 3  # the price of 1000-byte answers


def test_a_redirect_to_another_host_drops_the_credentials(cli, hostile: Hostile, served: Path) -> None:
    other = hostile.other_server  # type: ignore[attr-defined]
    other.requests.clear()
    host = hostile.url.split("://", 1)[1]
    r = cli("inspect", "--plain", f"http://user:hunter2@{host}/redirect/model.pth")
    assert r.exit_code == 0, r.output + r.stderr
    assert r.stdout == cli("inspect", "--plain", served / "model.pth").stdout
    assert "hunter2" not in r.output + r.stderr
    assert other.requests, "the redirect was not followed"
    assert all("Authorization" not in h for _, h in other.requests), other.requests
    first = [h for p, h in hostile.requests if p.startswith("/redirect/")][-1]
    assert first.get("Authorization", "").startswith("Basic ")  # ...which the first host did get


def test_hf_token_goes_to_the_endpoint_and_never_to_output(cli, hostile: Hostile, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"{hostile.url}/404")
    monkeypatch.setenv("HF_TOKEN", "hf_s3cr3tT0ken")
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the token from the environment
    r = cli("inspect", "--json", "hf://org/model/model.safetensors")
    assert r.exit_code == 2
    assert "hf_s3cr3tT0ken" not in r.output + r.stderr
    assert json.loads(r.stdout)["error"]["path"] == "hf://org/model/model.safetensors"
    assert hostile.requests[-1][1].get("Authorization") == "Bearer hf_s3cr3tT0ken"


def test_a_hanging_server_is_bounded_by_timeout(hostile: Hostile) -> None:
    t0 = time.monotonic()
    r = _ckptool("inspect", "--timeout", "1", f"{hostile.url}/hang/model.pth")
    dt = time.monotonic() - t0
    assert r.returncode == 2
    err = _one_line(r)
    assert "within 1 s (--timeout)" in err, err
    assert dt < 15


@pytest.mark.parametrize(
    ("status", "text"),
    [("404", "not found on the server (HTTP 404)"),
     ("401", "the server asks for credentials (HTTP 401) (give them in the URL: https://USER:PASSWORD@host/...)"),
     ("403", "access denied by the server (HTTP 403) (check the credentials or the URL's signature)")],
)  # fmt: skip
def test_http_errors_are_one_line(cli, hostile: Hostile, status: str, text: str) -> None:
    for cmd in ("inspect", "scan", "layers"):
        r = cli(cmd, f"{hostile.url}/{status}/model.pth")
        assert r.exit_code == 2, (cmd, r.output)
        err = _one_line(r)
        if cmd == "scan":  # scan names the file once more in its report line
            assert f"{hostile.url}/{status}/model.pth: {text}" in err, err
        else:
            assert err == f"ckptool: error: {hostile.url}/{status}/model.pth: {text}", err


def test_connection_refused_is_one_line(cli) -> None:
    from sources.remote_servers import free_port

    r = cli("inspect", f"http://127.0.0.1:{free_port()}/model.pth")
    assert r.exit_code == 2
    assert "cannot connect" in _one_line(r)


def test_redact() -> None:
    assert remote.redact("https://u:p@h.example/a/b.pth?X-Amz-Signature=abc&x=1") == (
        "https://h.example/a/b.pth?X-Amz-Signature=***&x=***"
    )
    assert remote.redact("http://h:8080/f") == "http://h:8080/f"
