"""The HTTP servers the remote-source tests and bench/bench_remote.py run on 127.0.0.1.

* :class:`Nginx`: the real thing (Debian's nginx), serving a folder with ``Range`` and multi-range support,
  plus the Hub's ``/{repo}/resolve/{revision}/{file}`` layout for ``hf://`` through ``HF_ENDPOINT``. Requests
  and bytes are counted from its access log.
* :class:`Hostile`: a small threaded server the tests own, one misbehaviour per path prefix.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hit:
    method: str
    uri: str
    range: str
    status: int
    nbytes: int


CONF = """
worker_processes 1;
{user}
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format ck '$request_method "$request_uri" "$http_range" $status $body_bytes_sent';
    access_log {tmp}/access.log ck;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location ~ ^/(?<repo>[^/]+/[^/]+|[^/]+)/resolve/(?<rev>[^/]+)/(?<file>.+)$ {{
            alias {root}/hub/$repo/$rev/$file;
        }}
        location /private/ {{
            auth_basic "private";
            auth_basic_user_file {tmp}/htpasswd;
        }}
    }}
}}
"""


class Nginx:
    """nginx on 127.0.0.1 serving ``root``; ``hits()`` reads the access log (one :class:`Hit` per request)."""

    def __init__(self, root: Path, tmp: Path):
        assert NGINX is not None
        self.root, self.tmp = root, tmp
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        # user "secret", password "hunter2" (apr1 hash made with openssl passwd -apr1 -salt ckptool hunter2)
        (tmp / "htpasswd").write_text("secret:$apr1$ckptool$UiTguOCe8Rol1pRl6N/V/0\n")
        conf = tmp / "nginx.conf"
        user = "user root root;" if os.geteuid() == 0 else ""
        conf.write_text(CONF.format(tmp=tmp, root=root, port=self.port, user=user))
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> Path:
        return self.tmp / "access.log"

    def mark(self) -> int:
        """The access log's length now: :meth:`hits` after it are what came since."""
        p = self.log()
        time.sleep(0.05)
        return p.stat().st_size if p.exists() else 0

    def hits(self, since: int = 0) -> list[Hit]:
        time.sleep(0.1)  # nginx writes the log line as the request ends
        p = self.log()
        if not p.exists():
            return []
        out = []
        with open(p, "rb") as f:
            f.seek(since)
            for line in f.read().decode().splitlines():
                m = re.fullmatch(r'(\S+) "(.*)" "(.*)" (\d+) (\d+)', line)
                if m:
                    out.append(Hit(m.group(1), m.group(2), m.group(3), int(m.group(4)), int(m.group(5))))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ---------------------------------------------------------------------------------------------------
# the hostile server
# ---------------------------------------------------------------------------------------------------
class Hostile:
    """A threaded server over one file's bytes; the first path segment picks the misbehaviour:

    ``/ok/`` honours Range; ``/norange/`` ignores it (200 + the whole body); ``/huge/`` ignores it and claims
    (and streams) 16 GB; ``/lie/`` announces a Content-Length larger than what it sends (``/liewhole/``: with a 200); ``/short/`` answers
    each range with fewer bytes than asked (a valid, shorter Content-Range); ``/redirect/`` sends a 302 to
    ``other`` (another host: 127.0.0.2); ``/hang/`` accepts and never answers; ``/slow/`` sends 1 MB of a whole body, then stalls; ``/404/``, ``/401/``, ``/403/``.
    Every request's headers are kept in ``requests``.
    """

    def __init__(self, data: bytes, host: str = "127.0.0.1", other: str | None = None):
        self.data = data
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.other = other
        self.stop_event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, {k: v for k, v in self.headers.items()}))
                kind = self.path.strip("/").split("/")[0]
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    getattr(self, "h_" + kind.replace("-", "_"), self.h_404)()

            def _range(self) -> tuple[int, int] | None:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if not m:
                    return None
                size = len(outer.data)
                s = int(m.group(1))
                e = min(int(m.group(2)) + 1 if m.group(2) else size, size)
                return s, e

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def h_ok(self, cut: int | None = None) -> None:
                r = self._range()
                if r is None:
                    self._send(200, outer.data, {"Content-Length": str(len(outer.data))})
                    return
                s, e = r
                if cut is not None:
                    e = min(e, s + cut)
                self._send(206, outer.data[s:e], {
                    "Content-Length": str(e - s), "Content-Range": f"bytes {s}-{e - 1}/{len(outer.data)}",
                })  # fmt: skip

            def h_short(self) -> None:
                self.h_ok(cut=1000)

            def h_norange(self) -> None:
                self._send(200, outer.data, {"Content-Length": str(len(outer.data))})

            def h_huge(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(16 << 30))
                self.end_headers()
                chunk = b"\0" * (1 << 20)
                for _ in range(16 << 10):
                    if outer.stop_event.is_set():
                        return
                    self.wfile.write(chunk)

            def h_nolength(self) -> None:  # ignores Range, no Content-Length, streams until closed
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"\0" * (1 << 20)
                for _ in range(16 << 10):
                    if outer.stop_event.is_set():
                        return
                    self.wfile.write(chunk)

            def h_lie(self) -> None:
                r = self._range() or (0, len(outer.data))
                s, e = r
                body = outer.data[s:e]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {s}-{e - 1}/{len(outer.data)}")
                self.send_header("Content-Length", str(len(body) + 1000))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def h_liewhole(self) -> None:  # ignores Range, announces 1000 bytes more than it sends
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.data) + 1000))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(outer.data)
                self.close_connection = True

            def h_redirect(self) -> None:
                rest = self.path.split("/", 2)[2]
                self._send(302, b"", {"Location": f"{outer.other}/ok/{rest}", "Content-Length": "0"})

            def h_slow(self) -> None:  # a plain GET: announces the whole file, sends 1 MB, then stalls
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.data)))
                self.end_headers()
                self.wfile.write(outer.data[: 1 << 20])
                self.wfile.flush()
                outer.stop_event.wait(30)

            def h_hang(self) -> None:
                outer.stop_event.wait(30)

            def h_404(self) -> None:
                self._send(404, b"not here", {"Content-Length": "8"})

            def h_401(self) -> None:
                self._send(401, b"no", {"Content-Length": "2", "WWW-Authenticate": 'Basic realm="x"'})

            def h_403(self) -> None:
                self._send(403, b"no", {"Content-Length": "2"})

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


class Hub:
    """The Hub's API as huggingface_hub calls it, over ``root/{org}/{name}/{revision}/...`` (the ``hub/`` folder
    the nginx fixture serves): ``/api/models/{repo}/revision/{rev}`` (``repo_info``), ``/api/models/{repo}/tree/
    {rev}[/{path}]`` (``list_repo_tree``, paged by a ``Link: <...>; rel="next"`` header, :attr:`page` entries a
    page) and ``/{repo}/resolve/{rev}/{path}`` with single ``Range`` requests. An unknown repo or revision is a
    404 with the Hub's ``X-Error-Code``. Every request is logged as a :class:`Hit`."""

    def __init__(self, root: Path, page: int = 1000):
        self.root, self.page = root, page
        self.log: list[Hit] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, unquote, urlsplit

                parts = urlsplit(self.path)
                path, query = unquote(parts.path), parse_qs(parts.query)
                status, body, headers = outer.answer(path, query, self.headers.get("Range"))
                # logged before the answer goes out: once the client has it, the test sees the hit
                outer.log.append(Hit("GET", self.path, self.headers.get("Range") or "-", status, len(body)))
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def mark(self) -> int:
        return len(self.log)

    def hits(self, since: int = 0) -> list[Hit]:
        return self.log[since:]

    def _repo(self, repo: str, rev: str) -> tuple[Path | None, str | None]:
        base = self.root / repo
        if not base.is_dir() or repo.count("/") != 1:
            return None, "RepositoryNotFound"
        if not (base / rev).is_dir():
            return None, "RevisionNotFound"
        return base / rev, None

    def answer(self, path: str, query: dict[str, list[str]], rng: str | None) -> tuple[int, bytes, dict[str, str]]:
        import json

        def missing(code: str) -> tuple[int, bytes, dict[str, str]]:
            return 404, json.dumps({"error": code}).encode(), {"X-Error-Code": code, "Content-Type": "application/json"}

        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        if m:
            repo, what, rev, sub = m.group(1), m.group(2), m.group(3), (m.group(4) or "").strip("/")
            folder, err = self._repo(repo, rev)
            if folder is None:
                return missing(err or "RepositoryNotFound")
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            if what == "revision":
                info = {
                    "id": repo,
                    "sha": "0" * 40,
                    "siblings": [{"rfilename": str(p.relative_to(folder))} for p in files],
                }
                return 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
            where = folder / sub
            if not where.is_dir():
                return missing("EntryNotFound")
            entries = [
                {"type": "directory" if p.is_dir() else "file", "oid": "0" * 40, "path": str(p.relative_to(folder)),
                 **({"size": p.stat().st_size} if p.is_file() else {})}
                for p in sorted(where.iterdir())
            ]  # fmt: skip
            start = int(query.get("cursor", ["0"])[0])
            page = entries[start : start + self.page]
            headers = {"Content-Type": "application/json"}
            if start + self.page < len(entries):
                headers["Link"] = f'<{self.url}{path}?cursor={start + self.page}>; rel="next"'
            return 200, json.dumps(page).encode(), headers
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            folder, err = self._repo(m.group(1), m.group(2))
            if folder is None:
                return missing(err or "RepositoryNotFound")
            f = folder / m.group(3)
            if not f.is_file():
                return missing("EntryNotFound")
            data = f.read_bytes()
            r = re.match(r"bytes=(\d+)-(\d*)", rng or "")
            if r is None:
                return 200, data, {}
            # several ranges: the first one only (a 206 without multipart; the client fetches the others)
            s, e = int(r.group(1)), min(int(r.group(2)) + 1 if r.group(2) else len(data), len(data))
            return 206, data[s:e], {"Content-Range": f"bytes {s}-{e - 1}/{len(data)}"}
        return missing("EntryNotFound")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MotoS3:
    """moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1 with the files of ``root`` in bucket ``weights``;
    :meth:`hits` are the requests its werkzeug log shows (method, path, status: S3 logs no byte counts)."""

    ENV: ClassVar[dict[str, str]] = {"AWS_ACCESS_KEY_ID": "AKIATESTINGKEY000001", "AWS_SECRET_ACCESS_KEY": "testing-secret-never-shown",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip

    def __init__(self, root: Path, names: list[str]):
        import logging

        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=True)
        self.server.start()
        self.lines: list[str] = []
        outer = self

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.lines.append(record.getMessage())

        self.handler = Keep()
        log = logging.getLogger("werkzeug")
        log.addHandler(self.handler)
        log.setLevel(logging.INFO)
        self.env = {**self.ENV, "AWS_ENDPOINT_URL": self.url}
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                          aws_access_key_id=self.ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.ENV["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        s3.create_bucket(Bucket="weights")
        for name in names:
            s3.upload_file(str(root / name), "weights", name)

    def mark(self) -> int:
        return len(self.lines)

    def hits(self, since: int = 0) -> list[Hit]:
        time.sleep(0.2)  # werkzeug logs a request after its answer has gone
        out = []
        for line in self.lines[since:]:
            m = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d+)', line)
            if m:
                out.append(Hit(m.group(1), m.group(2), "-", int(m.group(3)), -1))
        return out

    def stop(self) -> None:
        import logging

        logging.getLogger("werkzeug").removeHandler(self.handler)
        self.server.stop()
