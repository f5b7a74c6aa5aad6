"""Remote files as a :class:`~ckptool.sources.Source`: HTTP(S) range reads, ``hf://`` and any fsspec URL.

Header walks read a few small ranges of a file that may be gigabytes: a torch zip's central directory at
its end and ``data.pkl`` at its start, a legacy file's pickles at its start, a safetensors header. A
:class:`RemoteSource` fetches only those ranges and keeps them in an extent cache; :meth:`RemoteSource.buffer`
is a lazy, sliceable view over it (the formats slice it as they slice a memory map), and
:meth:`RemoteSource.prefetch` lets a format ask for many small ranges it already knows (every local zip
header, every legacy storage's element count) in one round trip: one multi-range request when the server
answers with ``multipart/byteranges``, else one merged range per gap. Tensor bytes (reads of
:data:`STREAM_MIN` or more, and any read just past the last run) go in **runs**, never through the header
cache: one request reads [offset, offset + window) whole; the reads that follow are served from it; a run that
follows the last one doubles the window, a jump starts again small; the last runs are kept up to
:data:`RUN_MEMORY` bytes, so storages read a little out of file order (a safetensors export writes names in
sorted order, a legacy file stores its storages by key) cost no new request.

**Why these numbers** (measured with ``bench/bench_remote.py`` against a local nginx, vgg16_bn 553 MB):

* The first request reads the first :data:`HEAD_BLOCK` (64 KB) and learns the size from ``Content-Range``: it
  holds the safetensors header, the legacy pickles and a torch zip's ``data.pkl`` of every model we measured.
* A zip's end is read once, :data:`TAIL_BLOCK` (64 KB: the EOCD's comment may be 64 KB, and the central
  directory of ~100 members is ~10 KB), as a suffix range.
* Other misses round to :data:`BLOCK` (64 KB) blocks; a larger block only adds bytes (the budget is 512 KB),
  a smaller one adds requests.
* Runs (``bench/bench_remote.py --sweep``, ``scan URL`` of vgg16_bn): windows 2 MB doubling to 16 MB with
  16 MB kept take 75 requests for the zip and 66 for the legacy file at 75 / 87 MiB peak RSS; a 4 MB cap takes
  2-4x the requests, a 64 MB cap 29 / 49 requests but 266 / 235 MiB and no faster (each run is read whole before
  it serves a byte); 64 MB kept saves 6 % of the legacy bytes for 1.6x the memory. On a 2.8 MB zip of 97
  tensors of 147 KB, the values went from 18 requests to 5.

**HTTP is served by the standard library, not fsspec's HTTPFileSystem:** that needs aiohttp, and its
``cat_file(path, start, end)`` reads whatever body the server sends (``await r.read()``) even when the server
ignored ``Range`` and sends 15 GB. Here every body is read against a cap, a ``200`` to a range request is
refused (unless the whole file is smaller than :data:`MAX_WHOLE`), redirects to another host drop the
credentials, and every socket operation has the timeout. Other schemes (``s3://``, ``gs://``, ...) go through
fsspec's ``cat_file``/``cat_ranges``, which read exactly the ranges asked for.

Credentials (URL userinfo, tokens, query-string signatures) never reach a message: :func:`redact` is the
only form of a URL that :attr:`RemoteSource.name` and errors carry.
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import io
import os
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from ..errors import CorruptFileError, UnreadableError, UsageError

HEAD_BLOCK = 64 << 10
TAIL_BLOCK = 64 << 10
BLOCK = 64 << 10
STREAM_MIN = 32 << 10  # reads this large (tensor bytes) bypass the header cache and go through runs
STREAM_SKIP = 1 << 20  # a read this close past the last run starts the next, larger run (a gap this small is skipped)
STREAM_FIRST = 2 << 20  # a run's first window...
STREAM_WINDOW = 16 << 20  # ...doubled while reads follow on, up to this: the largest request
RUN_MEMORY = 16 << 20  # runs kept for the reads that come back (the oldest dropped first)
MAX_WHOLE = 16 << 20  # a server that ignores Range: read a file up to this size whole, refuse a larger one
CACHE_LIMIT = 256 << 20  # header bytes kept; a pickle larger than this is re-fetched, not kept
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 30.0
MERGE_GAP = 4 << 10
MAX_RANGE_HEADER = 4000  # characters of one Range header (nginx's default line limit is 8 KB)  # prefetched ranges closer than this are fetched as one

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(path: object) -> bool:
    """Whether a path string is a URL ckptool opens remotely (``file://`` is not: it is a local path)."""
    if not isinstance(path, str):
        return False
    m = _URL.match(path)
    return m is not None and m.group(1).lower() != "file"


def redact(url: str) -> str:
    """The URL as messages may show it: no ``user:password@``, every query value replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(f"{kv.split('=', 1)[0]}=***" if "=" in kv else "***" for kv in parts.query.split("&") if kv)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# ---------------------------------------------------------------------------------------------------
# settings and what it cost
# ---------------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Requests sent and body bytes received by every remote source of this process (reset per command)."""

    requests: int = 0
    bytes_fetched: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, requests: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_fetched += nbytes

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.bytes_fetched = 0
        forget()


STATS = Stats()
_settings: dict[str, float] = {}


def set_timeout(seconds: float | None) -> None:
    """The timeout of every socket operation (connect, each read) of remote sources opened after this."""
    if seconds is None:
        _settings.pop("timeout", None)
    else:
        _settings["timeout"] = float(seconds)


def settings() -> dict[str, Any]:
    """What :func:`set_timeout` and :func:`set_download` set, for a worker process (:func:`apply_settings`)."""
    return {"timeout": _settings.get("timeout"), "download": DOWNLOADS.on}


def apply_settings(conf: dict[str, Any]) -> None:
    set_timeout(conf.get("timeout"))
    set_download(bool(conf.get("download")))


def timeout() -> float:
    if "timeout" in _settings:
        return _settings["timeout"]
    env = os.environ.get("CKPTOOL_TIMEOUT", "")
    try:
        return float(env) if env else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


def human(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v >= 10 else f"{v:.1f} {unit}"
    return f"{n} B"


def summary() -> str | None:
    """``fetched 212 KB in 3 requests``, or None when nothing remote was read."""
    if not STATS.requests:
        return None
    r = STATS.requests
    return f"fetched {human(STATS.bytes_fetched)} in {r} request{'s' if r != 1 else ''}"


# ---------------------------------------------------------------------------------------------------
# --download: each remote file fetched once, whole, into a private temp folder, read locally
# ---------------------------------------------------------------------------------------------------
DOWNLOAD_CHUNK = 4 << 20
DOWNLOAD_MARGIN = 256 << 20  # left free on the temp folder's disk


class _Downloads:
    """This process's downloads: one private folder (0700, made on first use), one file per URL."""

    def __init__(self) -> None:
        self.on = False
        self.dir: str | None = None
        self.pid = 0
        self.files: dict[str, str] = {}
        self.locks: dict[str, threading.Lock] = {}
        self.lock = threading.Lock()
        self.registered = False

    def folder(self) -> str:
        with self.lock:
            if self.dir is None or self.pid != os.getpid():  # a worker process makes (and removes) its own
                import tempfile

                self.dir, self.pid, self.files = tempfile.mkdtemp(prefix="ckptool-download-"), os.getpid(), {}
                if not self.registered:  # the library's callers: removed at exit at the latest
                    import atexit

                    atexit.register(self.cleanup)
                    self.registered = True
            return self.dir

    def cleanup(self) -> None:
        with self.lock:
            if self.dir is not None and self.pid == os.getpid():
                import shutil

                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir, self.files, self.locks = None, {}, {}


DOWNLOADS = _Downloads()


def set_download(on: bool) -> None:
    """``--download``: remote files opened after this are fetched whole once and read from a local copy."""
    DOWNLOADS.on = bool(on)


def downloading() -> bool:
    return DOWNLOADS.on


def cleanup_downloads() -> None:
    """Remove this process's downloaded copies (the CLI calls it when a command ends, however it ends)."""
    DOWNLOADS.cleanup()


def download_cap(folder: str) -> int:
    """The most a download may write: ``CKPTOOL_DOWNLOAD_MAX`` bytes if set, and never more than the free space
    of the temp folder's disk less :data:`DOWNLOAD_MARGIN`."""
    import shutil

    free = max(shutil.disk_usage(folder).free - DOWNLOAD_MARGIN, 0)
    env = os.environ.get("CKPTOOL_DOWNLOAD_MAX", "").strip()
    if env.isdigit():
        return min(int(env), free)
    return free


def download(url: str) -> tuple[str, str]:
    """(local path, display name) of the URL's file, fetched whole on first use in this command (one request
    for http(s)/hf), streamed to the private folder against :func:`download_cap`; a failure leaves nothing."""
    f = open_remote_file(url)
    folder = DOWNLOADS.folder()
    with DOWNLOADS.lock:
        lock = DOWNLOADS.locks.setdefault(url, threading.Lock())
    with lock:
        done = DOWNLOADS.files.get(url)
        if done is not None:
            return done, f.name
        path = _local_name(folder, url)
        try:
            with open(path, "xb") as out:
                f.download(out, download_cap(folder))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        finally:
            f.close()
        DOWNLOADS.files[url] = path
        return path, f.name


def _local_name(folder: str, url: str) -> str:
    """Where a URL's copy goes: ``folder/HOST-HASH/its/path`` (files of one remote folder stay side by side,
    so an ONNX model finds its external data by its relative name); a second URL with the same path (another
    query) goes to a folder of its own."""
    import hashlib

    parts = urlsplit(url)
    host = hashlib.sha256(f"{parts.scheme}://{parts.netloc}".encode()).hexdigest()[:12]
    names = [re.sub(r"[^A-Za-z0-9@._-]", "_", unquote(x))[-120:] for x in parts.path.split("/")]
    names = [x for x in names if x not in ("", ".", "..")] or ["file"]
    path = os.path.join(folder, host, *names)
    n = 0
    while os.path.lexists(path):
        n += 1
        path = os.path.join(folder, f"{host}-{n}", *names)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return path


def _too_big(name: str, n: int, cap: int) -> UnreadableError:
    return UnreadableError(
        f"--download: the file is {human(n)}, more than the {human(cap)} the download may take",
        path=name,
        hint="free disk space in the temp folder (TMPDIR), raise CKPTOOL_DOWNLOAD_MAX, or drop --download",
    )


# ---------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------
class _Response:
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str):
        self.conn, self.resp, self.url = conn, resp, url
        self.status = resp.status
        self.headers = resp.headers

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resp.close()
        with contextlib.suppress(Exception):
            self.conn.close()


class HttpFile:
    """One URL over HTTP(S): range GETs with a cap on every body, redirects followed with care."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, name: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"not an http(s) URL: {redact(url)}")
        self.headers = dict(headers or {})
        if parts.username is not None or parts.password is not None:
            import base64
            from urllib.parse import unquote

            cred = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
            url = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, parts.query, ""))
        self.url = url  # where requests go (after the first redirect: where it led)
        self.origin = _origin(url)
        self.name = name or redact(url)
        self.timeout = timeout()
        self.size = -1
        self.multi_ok = True
        self.error_code: str | None = None
        self.auth_hint = "give them in the URL: https://USER:PASSWORD@host/..."
        self._local = threading.local()

    # -- one request ------------------------------------------------------------------------------------------
    def _conn(self, url: str) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port)
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        conn = pool.get(key)
        if conn is None:
            conn = pool[key] = self._new(url)
        return conn

    def _drop(self, url: str) -> None:
        parts = urlsplit(url)
        pool = getattr(self._local, "pool", {})
        conn = pool.pop((parts.scheme, parts.hostname, parts.port), None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _new(self, url: str) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)

    def _get(self, range_header: str | None, *, own: bool = False) -> _Response:
        """GET ``self.url`` with a Range header, following redirects; the response is open (read it, close it).
        ``own``: on a connection of its own (a stream that stays open while other reads go on)."""
        url, headers = self.url, dict(self.headers)
        if range_header:
            headers["Range"] = range_header
        headers.setdefault("User-Agent", "ckptool")
        headers["Accept-Encoding"] = "identity"
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            resp = None
            for attempt in range(2):  # a kept-alive connection the server closed: retry once on a fresh one
                conn = self._new(url) if own else self._conn(url)
                try:
                    STATS.add(requests=1)
                    conn.request("GET", target, headers=headers)
                    resp = conn.getresponse()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                    self._drop(url)
                    if attempt:
                        raise self._error(f"the server closed the connection ({type(e).__name__})") from None
                except TimeoutError:
                    self._drop(url)
                    raise self._error(f"no answer within {self.timeout:g} s (--timeout)") from None
                except ssl.SSLError as e:
                    self._drop(url)
                    raise self._error(f"TLS error ({e.reason or type(e).__name__})") from None
                except (OSError, http.client.HTTPException) as e:
                    self._drop(url)
                    raise self._error(f"cannot connect ({_why(e)})") from None
            assert resp is not None
            if resp.status in (301, 302, 303, 307, 308):
                loc = resp.getheader("Location")
                _discard(resp)
                if resp.will_close:
                    self._drop(url)
                if not loc:
                    raise self._error(f"HTTP {resp.status} redirect without a Location")
                new = urljoin(url, loc)
                if urlsplit(new).scheme not in ("http", "https"):
                    raise self._error("redirected to a URL that is not http(s)")
                if urlsplit(url).scheme == "https" and urlsplit(new).scheme == "http":
                    raise self._error("redirected from https to plain http; refused")
                if _origin(new) != _origin(url):
                    headers.pop("Authorization", None)  # credentials stay with the host they were given for
                url = new
                continue
            if resp.status >= 400:
                self.error_code = resp.getheader("X-Error-Code")  # the Hub's reason (RepositoryNotFound, ...)
                _discard(resp)
                self._drop(url)
                raise self._status_error(resp.status)
            if url != self.url:
                self.url = url  # later ranges go straight to where the redirect led
                if _origin(url) != self.origin:
                    self.headers.pop("Authorization", None)
                    self.origin = _origin(url)
            return _Response(conn, resp, url)
        raise self._error(f"more than {MAX_REDIRECTS} redirects")

    def _error(self, message: str, hint: str | None = None) -> UnreadableError:
        return UnreadableError(message, path=self.name, hint=hint)

    def _status_error(self, status: int) -> UnreadableError:
        if status == 404:
            return self._error("not found on the server (HTTP 404)")
        if status == 401:
            return self._error("the server asks for credentials (HTTP 401)", hint=self.auth_hint)
        if status == 403:
            return self._error(
                "access denied by the server (HTTP 403)", hint="check the credentials or the URL's signature"
            )
        if status == 416:
            return self._error("the server refused the byte range (HTTP 416); is the file empty?")
        return self._error(f"the server answered HTTP {status}")

    def _read_body(self, r: _Response, n: int, announced: int | None) -> bytes:
        """Up to ``n`` body bytes, counted; a timeout, a short body or a broken connection closes the response
        and is one error (``announced``: the length the server promised, for the message)."""
        with self._body_errors(r, announced):
            data = r.resp.read(n)
        STATS.add(nbytes=len(data))
        return data

    def _readinto_body(self, r: _Response, view: memoryview, announced: int | None) -> int:
        """:meth:`_read_body` into a caller's buffer: the count read (0 at the end of the body)."""
        with self._body_errors(r, announced):
            k = r.resp.readinto(view)
        STATS.add(nbytes=k)
        return k

    @contextlib.contextmanager
    def _body_errors(self, r: _Response, announced: int | None) -> Iterator[None]:
        """One error, the response closed, for what can go wrong while a body streams."""
        try:
            yield
        except TimeoutError:
            r.close()
            self._drop(r.url)
            raise self._error(f"the server stopped sending within {self.timeout:g} s (--timeout)") from None
        except http.client.IncompleteRead as e:
            r.close()
            self._drop(r.url)
            raise self._error(f"the server sent {len(e.partial)} of the {announced} bytes it announced") from None
        except (OSError, http.client.HTTPException) as e:
            r.close()
            self._drop(r.url)
            raise self._error(f"the download broke off ({_why(e)})") from None

    def _read(self, r: _Response, n: int) -> bytes:
        """Exactly ``n`` body bytes (the caller checked the headers promise them)."""
        data = self._read_body(r, n, n)
        if len(data) != n:
            r.close()
            self._drop(r.url)
            raise self._error(f"the server sent {len(data)} of the {n} bytes it announced")
        return data

    def _finish(self, r: _Response) -> None:
        if r.resp.will_close or not r.resp.isclosed():
            r.close()
            self._drop(r.url)

    def _range_of(self, r: _Response) -> tuple[int, int, int]:
        """(start, end exclusive, total) from a 206 response's Content-Range."""
        cr = r.headers.get("Content-Range", "")
        m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", cr)
        if not m:
            r.close()
            self._drop(r.url)
            raise self._error("the server answered 206 without a valid Content-Range")
        start, last = int(m.group(1)), int(m.group(2))
        total = int(m.group(3)) if m.group(3) != "*" else -1
        if last < start or (total >= 0 and last >= total):
            r.close()
            self._drop(r.url)
            raise self._error(f"the server's Content-Range {cr.strip()!r} is impossible")
        self._check_total(total)
        return start, last + 1, total

    def _check_total(self, total: int) -> None:
        if total >= 0 and self.size >= 0 and total != self.size:
            raise self._error(f"the file changed on the server while ckptool read it ({self.size} bytes, now {total})")

    def _length(self, r: _Response) -> int | None:
        cl = r.headers.get("Content-Length")
        if cl is None or not cl.strip().isdigit():
            return None
        return int(cl)

    # -- what RemoteSource asks ------------------------------------------------------------------------------
    def open(self, head: int) -> tuple[int, bytes]:
        """The size and the first ``head`` bytes, in one request."""
        r = self._get(f"bytes=0-{head - 1}")
        if r.status == 206:
            start, end, total = self._range_of(r)
            if start != 0 or total < 0:
                r.close()
                raise self._error("the server's first range does not start at 0 or hides the file size")
            self.size = total
            data = self._body(r, end - start)
            return total, data
        if r.status == 200:  # the server ignored Range: the whole body is coming
            return self._whole(r)
        r.close()
        self._drop(r.url)
        raise self._error(f"the server answered HTTP {r.status} to a range request")

    def _whole(self, r: _Response) -> tuple[int, bytes]:
        length = self._length(r)
        hint = "download the file first (curl -o) and run ckptool on it"
        if length is not None and length > MAX_WHOLE:
            r.close()
            self._drop(r.url)
            raise self._error(
                f"the server ignores Range requests and would send the whole {human(length)} file; refused", hint=hint
            )
        data = self._read_body(r, MAX_WHOLE + 1, length)
        r.close()
        self._drop(r.url)
        if len(data) > MAX_WHOLE:
            raise self._error(
                f"the server ignores Range requests and sends more than {human(MAX_WHOLE)}; refused", hint=hint
            )
        if length is not None and len(data) != length:
            raise self._error(f"the server sent {len(data)} of the {length} bytes it announced")
        self.size = len(data)
        return len(data), data

    def _body(self, r: _Response, n: int) -> bytes:
        length = self._length(r)
        if length is not None and length != n:
            r.close()
            self._drop(r.url)
            raise self._error(f"the server's Content-Length ({length}) disagrees with its Content-Range ({n} bytes)")
        data = self._read(r, n)
        self._finish(r)
        return data

    def fetch(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """Bytes [start, end) as one or more (offset, bytes) pieces covering at least what was asked."""
        out: list[tuple[int, bytes]] = []
        pos = start
        while pos < end:
            r = self._get(f"bytes={pos}-{end - 1}")
            if r.status != 206:
                r.close()
                self._drop(r.url)
                raise self._error(
                    f"the server ignored the Range request (HTTP {r.status}) after honouring one",
                    hint="download the file first (curl -o) and run ckptool on it",
                )
            s, e, _total = self._range_of(r)
            if s > pos or e <= pos:
                r.close()
                self._drop(r.url)
                raise self._error(f"the server sent bytes {s}-{e} for a request of {pos}-{end}")
            out.append((s, self._body(r, e - s)))
            pos = e  # a server may send fewer bytes than asked: ask again for the rest
        return out

    def fetch_many(self, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """Several ranges in one multi-range request when the server speaks multipart/byteranges (several when
        the Range header would pass :data:`MAX_RANGE_HEADER` characters: servers cap header lines)."""
        out: list[tuple[int, bytes]] = []
        group: list[tuple[int, int]] = []
        length = 0
        for s, e in spans:
            item = len(f"{s}-{e - 1},")
            if group and length + item > MAX_RANGE_HEADER:
                out += self._fetch_group(group)
                group, length = [], 0
            group.append((s, e))
            length += item
        return out + (self._fetch_group(group) if group else [])

    def _fetch_group(self, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        if len(spans) == 1 or not self.multi_ok:
            return [p for s, e in spans for p in self.fetch(s, e)]
        spec = ",".join(f"{s}-{e - 1}" for s, e in spans)
        r = self._get(f"bytes={spec}")
        ctype = r.headers.get("Content-Type", "")
        if r.status == 206 and ctype.lower().startswith("multipart/byteranges"):
            m = re.search(r'boundary="?([^";]+)"?', ctype)
            length = self._length(r)
            cap = sum(e - s for s, e in spans) + 512 * len(spans) + 4096
            if not m or (length is not None and length > cap):
                r.close()
                self._drop(r.url)
                self.multi_ok = False
                return [p for s, e in spans for p in self.fetch(s, e)]
            body = self._read(r, length) if length is not None else self._read_capped(r, cap)
            self._finish(r)
            pieces = self._parts(body, m.group(1).encode())
            got = {s for s, _ in pieces}
            missing = [(s, e) for s, e in spans if not any(ps <= s and ps + len(d) >= e for ps, d in pieces)]
            del got
            return pieces + [p for s, e in missing for p in self.fetch(s, e)]
        if r.status == 206:  # one range back (a server may merge them): keep it, fetch what it lacks
            s, e, _total = self._range_of(r)
            first = [(s, self._body(r, e - s))]
            missing = [(a, b) for a, b in spans if not (s <= a and e >= b)]
            self.multi_ok = False
            return first + [p for a, b in missing for p in self.fetch(a, b)]
        r.close()  # 200: the whole file for a multi-range request; never read it
        self._drop(r.url)
        self.multi_ok = False
        return [p for s, e in spans for p in self.fetch(s, e)]

    def _read_capped(self, r: _Response, cap: int) -> bytes:
        try:
            data = r.resp.read(cap + 1)
        except (OSError, http.client.HTTPException) as e:
            r.close()
            self._drop(r.url)
            raise self._error(f"the download broke off ({_why(e)})") from None
        STATS.add(nbytes=len(data))
        if len(data) > cap:
            r.close()
            self._drop(r.url)
            raise self._error("the server's multi-range answer is larger than what was asked")
        return data

    def _parts(self, body: bytes, boundary: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for chunk in body.split(b"--" + boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, sep, rest = chunk.partition(b"\r\n\r\n")
            if not sep:
                continue
            m = re.search(rb"content-range:\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", head, re.IGNORECASE)
            if not m:
                raise self._error("a part of the server's multi-range answer has no Content-Range")
            s, e = int(m.group(1)), int(m.group(2)) + 1
            if m.group(3) != b"*":
                self._check_total(int(m.group(3)))
            data = rest[: e - s]
            if len(data) != e - s or e <= s:
                raise self._error("a part of the server's multi-range answer is shorter than its Content-Range")
            out.append((s, data))
        return out

    def download(self, out: IO[bytes], cap: int) -> int:
        """The whole file into ``out`` in one plain GET, never more than ``cap`` bytes (nor more than the server
        announced). Returns the size."""
        r = self._get(None, own=True)
        try:
            if r.status != 200:
                raise self._error(f"the server answered HTTP {r.status} to a plain GET")
            length = self._length(r)
            if length is not None and length > cap:
                raise _too_big(self.name, length, cap)
            limit = cap if length is None else length
            got = 0
            mv = memoryview(bytearray(DOWNLOAD_CHUNK))  # one reused buffer (a bytes object per read is 2x slower)
            while True:
                k = self._readinto_body(r, mv[: min(len(mv), limit - got + 1)], length)
                if not k:
                    break
                got += k
                if got > limit:
                    if length is None:
                        raise _too_big(self.name, got, cap)
                    raise self._error(f"the server sent more than the {length} bytes it announced")
                out.write(mv[:k])
            if length is not None and got != length:
                raise self._error(f"the server sent {got} of the {length} bytes it announced")
            self.size = got
            return got
        finally:
            r.close()

    def close(self) -> None:
        pool = getattr(self._local, "pool", {})
        for conn in pool.values():
            with contextlib.suppress(Exception):
                conn.close()
        pool.clear()


class _Run:
    """Bytes [start, end) of the file fetched in one request (tensor bytes), kept for the reads inside it."""

    def __init__(self, data: bytes, start: int):
        self.data, self.start, self.end = data, start, start + len(data)

    def copy(self, offset: int, view: memoryview) -> None:
        i = offset - self.start
        view[:] = self.data[i : i + len(view)]


def _scrub(text: str) -> str:
    """``text`` without the value of any credential in the environment (a library's message may quote one)."""
    for k, v in os.environ.items():
        if len(v) >= 6 and any(w in k.upper() for w in ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")):
            text = text.replace(v, "***")
    return text


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return (p.scheme, (p.hostname or "").lower(), p.port)


def _discard(resp: http.client.HTTPResponse) -> None:
    """Read away a small error or redirect body (bounded) so the connection can be reused."""
    with contextlib.suppress(Exception):
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) <= 64 << 10:
            resp.read(int(length))
        else:
            resp.close()


def _why(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or e or type(e).__name__)[:200]


# ---------------------------------------------------------------------------------------------------
# fsspec (s3://, gs://, and whatever else fsspec knows)
# ---------------------------------------------------------------------------------------------------
class FsspecFile:
    """A path on an fsspec filesystem: ``cat_file`` for a range, ``cat_ranges`` for many (concurrent)."""

    multi_ok = False

    def __init__(self, url: str):
        from .._extras import require

        scheme = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
        require("fsspec", extra="s3" if scheme in ("s3", "s3a") else "remote", what=f"reading {redact(url)}")
        import fsspec

        self.name = redact(url)
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url)
        except ImportError as e:
            mod = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(
                scheme, getattr(e, "name", None) or scheme
            )
            raise UsageError(
                f"{scheme}:// URLs need {mod}, which is not installed", path=self.name, hint=f"pip install {mod}"
            ) from None
        except ValueError as e:
            raise UsageError(f"fsspec does not know {scheme}:// ({e})", path=self.name) from None
        self.size = -1

    def _call(self, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except FileNotFoundError:
            raise UnreadableError("not found", path=self.name) from None
        except PermissionError:
            raise UnreadableError("access denied", path=self.name) from None
        except Exception as e:
            err = getattr(e, "response", None)
            code = err.get("Error", {}).get("Code") if isinstance(err, dict) else None
            why = f"{type(e).__name__}: {code}" if code else f"{type(e).__name__}: {_scrub(str(e))[:200]}"
            raise UnreadableError(f"cannot read ({why})", path=self.name) from None

    def open(self, head: int) -> tuple[int, bytes]:
        info = self._call(self.fs.info, self.path)
        STATS.add(requests=1)
        if info.get("type") == "directory":
            raise UnreadableError("is a directory, not a checkpoint file", path=self.name)
        self.size = int(info["size"])
        # keywords: s3fs's cat_file takes (path, version_id, start, end)
        data = self._call(self.fs.cat_file, self.path, start=0, end=min(head, self.size)) if self.size else b""
        STATS.add(requests=1 if self.size else 0, nbytes=len(data))
        return self.size, data

    def fetch(self, start: int, end: int) -> list[tuple[int, bytes]]:
        data = self._call(self.fs.cat_file, self.path, start=start, end=end)
        STATS.add(requests=1, nbytes=len(data))
        if len(data) != end - start:
            raise CorruptFileError(f"got {len(data)} of the {end - start} bytes asked at {start}", path=self.name)
        return [(start, data)]

    def fetch_many(self, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        n = len(spans)
        datas = self._call(self.fs.cat_ranges, [self.path] * n, [s for s, _ in spans], [e for _, e in spans])
        STATS.add(requests=n, nbytes=sum(len(d) for d in datas))
        return list(zip([s for s, _ in spans], datas, strict=True))

    def download(self, out: IO[bytes], cap: int) -> int:
        """The whole file into ``out``: one ranged read per :data:`STREAM_WINDOW`, never more than ``cap``."""
        size = int(self._call(self.fs.info, self.path)["size"])
        STATS.add(requests=1)
        if size > cap:
            raise _too_big(self.name, size, cap)
        for pos in range(0, size, STREAM_WINDOW):
            ((_s, data),) = self.fetch(pos, min(size, pos + STREAM_WINDOW))
            out.write(data)
        self.size = size
        return size

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# the Source
# ---------------------------------------------------------------------------------------------------
class RemoteSource:
    """A remote file as a Source: an extent cache over ranged reads (see the module docstring)."""

    def __init__(self, remote: Any, *, name: str | None = None, allow_empty: bool = True, shared: Any = None):
        self.remote = remote
        self.name = name or remote.name
        self._lock = threading.RLock()
        self._runs: list[_Run]  # tensor bytes read in runs, the latest last (shared with reopened sources)
        self._held: list[int]
        self._window: list[int]
        self._starts: list[int]
        self._data: list[bytes]
        if shared is not None:  # the same URL opened again in this command: its size and bytes are known
            self._size, self._starts, self._data = shared._size, shared._starts, shared._data
            self._cached = shared._cached
            self._runs, self._held, self._window = shared._runs, shared._held, shared._window
        else:
            self._starts, self._data, self._cached = [], [], 0
            self._runs, self._held, self._window = [], [0], [STREAM_FIRST]
            size, head = remote.open(HEAD_BLOCK)
            self._size = size
            if head:
                self._insert(0, head)
        if self._size == 0 and not allow_empty:
            raise CorruptFileError("file is empty", path=self.name)

    @property
    def size(self) -> int:
        return self._size

    # -- the extent cache --------------------------------------------------------------------------------------
    def _insert(self, start: int, data: bytes) -> None:
        """Keep [start, start+len) where the cache has no bytes yet (extents never overlap)."""
        end = start + len(data)
        for s, e in self._gaps(start, end):
            if self._cached + (e - s) > CACHE_LIMIT:
                return
            i = bisect.bisect_left(self._starts, s)
            self._starts.insert(i, s)
            self._data.insert(i, data[s - start : e - start])
            self._cached += e - s

    def _gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The sub-ranges of [start, end) the cache does not hold."""
        gaps, pos = [], start
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and pos < end:
            s = self._starts[i]
            e = s + len(self._data[i])
            if s >= end:
                break
            if e > pos:
                if s > pos:
                    gaps.append((pos, s))
                pos = max(pos, e)
            i += 1
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def _copy(self, offset: int, view: memoryview) -> bool:
        """Fill ``view`` from the cache if it holds every byte."""
        n, pos, end = len(view), offset, offset + len(view)
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return False
        while pos < end:
            if i >= len(self._starts):
                return False
            s = self._starts[i]
            d = self._data[i]
            if not (s <= pos < s + len(d)):
                return False
            k = min(end, s + len(d)) - pos
            view[pos - offset : pos - offset + k] = d[pos - s : pos - s + k]
            pos += k
            i += 1
        return n >= 0

    def _blocks(self, start: int, end: int) -> list[tuple[int, int]]:
        """The missing parts of [start, end), each widened to whole :data:`BLOCK` blocks."""
        out: list[tuple[int, int]] = []
        for s, e in self._gaps(start, end):
            s2 = s - s % BLOCK
            e2 = min(self._size, -(-e // BLOCK) * BLOCK)
            for gs, ge in self._gaps(s2, e2):  # do not fetch again what the widening covers
                if out and gs - out[-1][1] <= MERGE_GAP:
                    out[-1] = (out[-1][0], ge)
                else:
                    out.append((gs, ge))
        return out

    # -- Source ---------------------------------------------------------------------------------------------
    def read_into(self, offset: int, view: memoryview, *, exact: bool = False) -> None:
        """Fill ``view`` (tensor bytes: a miss starts or continues a run); ``exact``: a header read (see
        :meth:`_run`)."""
        n = len(view)
        if offset < 0 or offset + n > self._size:
            raise CorruptFileError(
                f"file ends at byte {self._size}, but {offset + n} bytes were expected (truncated?)", path=self.name
            )
        if n == 0:
            return
        with self._lock:
            if self._copy(offset, view):
                return
            while n:  # what the kept runs hold
                run = self._run_at(offset)
                if run is None:
                    break
                k = min(n, run.end - offset)
                run.copy(offset, view[:k])
                offset, view, n = offset + k, view[k:], n - k
            if not n:
                return
            last = self._runs[-1] if self._runs else None
            follows = last is not None and last.start <= offset <= last.end + STREAM_SKIP
            if n >= STREAM_MIN or (follows and not exact):
                self._run(offset, view, follows and not exact, exact)
                return
            self._fill(self._blocks(offset, offset + n))
            if not self._copy(offset, view):  # the cache is full: read it straight
                for s, d in self.remote.fetch(offset, offset + n):
                    k = min(len(d), offset + n - s)
                    view[s - offset : s - offset + k] = d[:k]

    def _fill(self, spans: list[tuple[int, int]]) -> None:
        if not spans:
            return
        pieces = self.remote.fetch_many(spans) if len(spans) > 1 else self.remote.fetch(*spans[0])
        for s, d in pieces:
            self._insert(s, d)

    def _run_at(self, offset: int) -> _Run | None:
        for run in reversed(self._runs):
            if run.start <= offset < run.end:
                return run
        return None

    def _run(self, offset: int, view: memoryview, follows: bool, exact: bool = False) -> None:
        """Read ``view`` at ``offset`` with one request over [offset, offset + window) and keep that run: the
        reads that follow are served from it. A run that follows the last one doubles the window (up to
        :data:`STREAM_WINDOW`); a jump starts again at :data:`STREAM_FIRST`; ``exact`` (a header read through
        :meth:`read`) reads what it asks in whole blocks, so a large pickle costs no more. Runs are kept up to
        :data:`RUN_MEMORY` bytes (the oldest go first), so reads that jump back a little cost nothing."""
        n = len(view)
        if exact:  # a header read (read(), buffer slices): what was asked, in whole blocks, no more
            window = -(-n // BLOCK) * BLOCK
        else:
            self._window[0] = max(min(self._window[0] * 2, STREAM_WINDOW), n) if follows else STREAM_FIRST
            window = self._window[0]
        if n > STREAM_WINDOW:  # one big read: straight into the caller's buffer, nothing kept
            for s, d in self.remote.fetch(offset, offset + n):
                k = min(len(d), offset + n - s)
                view[s - offset : s - offset + k] = d[:k]
            return
        end = min(self._size, offset + max(n, window))
        later = [r.start for r in self._runs if offset < r.start < end]
        if later and min(later) >= offset + n:  # never fetch again what a kept run holds
            end = min(later)
        pieces = self.remote.fetch(offset, end)
        for s, d in pieces:
            self._runs.append(_Run(d, s))
            self._held[0] += len(d)
        while self._held[0] > RUN_MEMORY and len(self._runs) > 1:
            self._held[0] -= len(self._runs.pop(0).data)
        pos = offset
        for s, d in pieces:
            k = min(len(d) - (pos - s), offset + n - pos)
            if k > 0:
                view[pos - offset : pos - offset + k] = d[pos - s : pos - s + k]
                pos += k

    def read(self, offset: int, n: int) -> bytes:
        buf = bytearray(n)
        self.read_into(offset, memoryview(buf), exact=True)  # the formats' header reads (a pickle, a directory)
        return bytes(buf)

    def view(self, offset: int, n: int, *, writable: bool = False) -> memoryview | None:
        return None

    def prefetch(self, spans: Iterable[tuple[int, int]]) -> None:
        """Fetch these (offset, length) ranges now, in as few requests as the server allows."""
        want = sorted((max(o, 0), min(o + n, self._size)) for o, n in spans if n > 0 and o < self._size)
        with self._lock:
            merged: list[tuple[int, int]] = []
            for s, e in want:
                for gs, ge in self._gaps(s, e):
                    if merged and gs - merged[-1][1] <= MERGE_GAP:
                        merged[-1] = (merged[-1][0], max(ge, merged[-1][1]))
                    else:
                        merged.append((gs, ge))
            self._fill(merged)

    def tail(self, n: int = TAIL_BLOCK) -> None:
        """Fetch the last ``n`` bytes now (a zip's end of central directory and the directory)."""
        self.prefetch([(max(self._size - n, 0), n)])

    def buffer(self) -> RemoteBuffer:
        return RemoteBuffer(self)

    def fileobj(self) -> IO[bytes]:
        return io.BufferedReader(_RawRemote(self), buffer_size=8 << 10)

    def close(self) -> None:
        self.remote.close()

    def __enter__(self) -> RemoteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteBuffer:
    """The whole remote file as a lazy read-only buffer: ``len()``, slices and indexes fetch what they touch.

    ``reader(pos)`` is a seekable file object at ``pos`` (what the unpickler walks a pickle with)."""

    def __init__(self, src: RemoteSource):
        self.src = src

    def __len__(self) -> int:
        return self.src.size

    def __getitem__(self, key: int | slice) -> Any:
        size = self.src.size
        if isinstance(key, slice):
            start, stop, step = key.indices(size)
            if step != 1:
                raise ValueError("RemoteBuffer slices take no step")
            return self.src.read(start, max(stop - start, 0))
        i = key + size if key < 0 else key
        if not 0 <= i < size:
            raise IndexError("index out of range")
        return self.src.read(i, 1)[0]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = self.src.size if end is None else min(end, self.src.size)
        pos = start
        while pos < end:
            k = min(end, pos + BLOCK + len(sub))
            i = self.src.read(pos, k - pos).find(sub)
            if i >= 0:
                return pos + i
            if k >= end:
                return -1
            pos = k - len(sub) + 1
        return -1

    def reader(self, pos: int = 0) -> IO[bytes]:
        f = _Clamped(_RawRemote(self.src), buffer_size=8 << 10)
        f.seek(min(max(pos, 0), self.src.size))
        return f


class _Clamped(io.BufferedReader):
    """``read(n)`` clamped to the bytes that exist before anything is allocated (a pickle may claim 2**60)."""

    def read(self, n: int | None = -1) -> bytes:
        left = self.raw.src.size - self.tell()  # type: ignore[attr-defined]
        return super().read(left if n is None or n < 0 else min(n, max(left, 0)))


class _RawRemote(io.RawIOBase):
    def __init__(self, src: RemoteSource):
        self.src = src
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.src.size}[whence]
        self.pos = max(base + offset, 0)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = max(0, min(len(mv), self.src.size - self.pos))
        if n:
            self.src.read_into(self.pos, mv[:n], exact=True)  # a pickle walked in place: a header read
            self.pos += n
        return n


# ---------------------------------------------------------------------------------------------------
# hf://
# ---------------------------------------------------------------------------------------------------
# what transformers' from_pretrained looks for, in its order: safetensors first (the single file, then the
# index), then the pickles (modeling_utils: SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, ...)
HF_CANDIDATES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_TREE_PAGES = 100  # pages of a tree listing followed (the Hub sends 1000 entries a page)


@dataclass(frozen=True)
class HfPath:
    kind: str  # "" (a model), "datasets" or "spaces"
    repo: str
    revision: str
    path: str

    def url(self, endpoint: str | None = None) -> str:
        base = (endpoint or hf_endpoint()).rstrip("/")
        prefix = f"{self.kind}/" if self.kind else ""
        return f"{base}/{prefix}{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(self.path)}"

    def __str__(self) -> str:
        prefix = f"{self.kind}/" if self.kind else ""
        rev = f"@{self.revision}" if self.revision != "main" else ""
        return f"hf://{prefix}{self.repo}{rev}" + (f"/{self.path}" if self.path else "")


def parse_hf(url: str) -> HfPath:
    """``hf://[datasets/|spaces/]ORG/NAME[@REV][/PATH]`` (a repo without an org: ``hf://NAME@REV/PATH``)."""
    rest = url.split("://", 1)[1].strip("/")
    kind = ""
    for k in ("datasets/", "spaces/", "models/"):
        if rest.startswith(k):
            kind, rest = ("" if k == "models/" else k.rstrip("/")), rest[len(k) :]
            break
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise UsageError(f"{url}: an hf:// URL names a repo: hf://ORG/NAME[@REV][/PATH]")
    if "@" in parts[0]:
        n = 1
    elif len(parts) >= 2:
        n = 2
    else:
        n = 1
    repo_parts = parts[:n]
    revision = "main"
    if "@" in repo_parts[-1]:
        name, revision = repo_parts[-1].split("@", 1)
        repo_parts[-1] = name
        revision = revision.replace("%2F", "/")
    path = "/".join(parts[n:])
    if any(p in ("..", ".") for p in parts[n:]):
        raise UsageError(f"{url}: the path inside the repo may not contain '..'")
    return HfPath(kind, "/".join(repo_parts), revision or "main", path)


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hf_token() -> str | None:
    """The token the user is logged in with: huggingface_hub's (when installed), else HF_TOKEN or the token file."""
    if os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        return None
    try:
        from huggingface_hub import get_token

        return get_token()
    except ImportError:
        pass
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    try:
        with open(os.path.join(home, "token"), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _hf_file(p: HfPath) -> HttpFile:
    tok = hf_token()
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    f = HttpFile(p.url(), headers=headers, name=str(p))
    f.auth_hint = "log in with `hf auth login` or set HF_TOKEN" if not tok else "the token has no access to this repo"
    return f


def hf_tree(p: HfPath, sub: str = "") -> list[dict[str, Any]] | None:
    """The entries of a repo folder from the Hub's tree API (``/api/{models|datasets|spaces}/REPO/tree/REV[/SUB]``,
    what huggingface_hub's ``list_repo_tree`` and ``HfFileSystem.ls`` call; pages followed by their ``Link``
    header), or None when the endpoint has no such API (a plain mirror of ``/resolve/`` URLs). A repo or
    revision the Hub does not know is one error."""
    import json

    kind = p.kind or "models"
    api = f"{hf_endpoint().rstrip('/')}/api/{kind}/{p.repo}/tree/{quote(p.revision, safe='')}"
    if sub.strip("/"):
        api += "/" + quote(sub.strip("/"))
    tok = hf_token()
    where = str(HfPath(p.kind, p.repo, p.revision, sub.strip("/")))
    out: list[dict[str, Any]] = []
    url: str | None = api
    for _page in range(HF_TREE_PAGES):
        if url is None:
            return out
        f = HttpFile(url, headers={"Authorization": f"Bearer {tok}"} if tok else {}, name=where)
        f.auth_hint = (
            "log in with `hf auth login` or set HF_TOKEN" if not tok else "the token has no access to this repo"
        )
        try:
            r = f._get(None)
            body = f._read_capped(r, 16 << 20)
            link = r.headers.get("Link", "")
            f._finish(r)
        except UnreadableError as e:
            code = f.error_code or ""
            if code == "RepositoryNotFound":
                raise UnreadableError(
                    "no such repo on the Hub, or it is private or gated",
                    path=where,
                    hint="check the name; for a private repo log in with `hf auth login` or set HF_TOKEN",
                ) from None
            if code == "RevisionNotFound":
                raise UnreadableError(f"the repo has no revision {p.revision!r}", path=where) from None
            if code == "EntryNotFound":
                raise UnreadableError("no such folder in the repo", path=where) from None
            if "HTTP 404" in e.message and not out:
                return None
            raise
        finally:
            f.close()
        try:
            items = json.loads(body)
        except ValueError:
            return out or None
        if not isinstance(items, list):
            return out or None
        out += [it for it in items if isinstance(it, dict)]
        m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
        url = urljoin(url, m.group(1)) if m else None
    raise UnreadableError(f"the repo lists more than {HF_TREE_PAGES} pages of files", path=where)


def resolve_hf(url: str) -> HfPath:
    """A file in a repo; ``hf://REPO`` picks its weight file or index: the repo's root is listed (one request to
    the tree API) and the first of :data:`HF_CANDIDATES` it holds wins. Without a tree API (a plain mirror),
    each candidate is tried in turn (each miss costs one request; the hit's first request is the file's own
    first read)."""
    p = parse_hf(url)
    if p.path:
        return p
    listed = hf_tree(p)
    if listed is not None:
        names = {it.get("path") for it in listed if it.get("type") == "file"}
        for cand in HF_CANDIDATES:
            if cand in names:
                return HfPath(p.kind, p.repo, p.revision, cand)
        raise UnreadableError(
            f"the repo holds none of {', '.join(HF_CANDIDATES)} at its root ({len(names)} files there); "
            f"name the file: {p}/FILE",
            path=str(p),
        )
    for cand in HF_CANDIDATES:
        q = HfPath(p.kind, p.repo, p.revision, cand)
        try:
            open_url(str(q)).close()  # kept for the read that follows (open_url shares it)
        except UnreadableError as e:
            if "HTTP 404" in e.message:
                continue
            raise
        return q
    raise UnreadableError(f"has none of {', '.join(HF_CANDIDATES)}; name the file: {p}/FILE", path=str(p))


# ---------------------------------------------------------------------------------------------------
# opening
# ---------------------------------------------------------------------------------------------------
def open_remote_file(url: str) -> Any:
    """The low-level remote file (HttpFile / FsspecFile) behind a URL."""
    scheme = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
    if scheme in ("http", "https"):
        return HttpFile(url)
    if scheme == "hf":
        return _hf_file(parse_hf(url))
    return FsspecFile(url)


_OPENED: dict[str, RemoteSource] = {}  # URL -> its first source in this command (see forget())
_MAX_OPENED = 4096  # shards of one model (sources, not their bytes: the cache holds headers only)
_OPEN_LOCK = threading.Lock()


def open_url(url: str, *, allow_empty: bool = True) -> Any:
    """A URL as a Source (a :class:`RemoteSource`; with :func:`set_download`, a
    :class:`~ckptool.sources.LocalFile` over the downloaded copy). Every failure is a
    :class:`~ckptool.errors.CkptError` naming the redacted URL.

    Opening a URL again in the same command (scan walks it, then reads it as a checkpoint; a checkpoint
    reopens its file for tensor bytes) shares the first source's size and cached bytes: no request is repeated.
    """
    if url.lower().startswith("hf://") and not parse_hf(url).path:
        url = str(resolve_hf(url))
    if DOWNLOADS.on:
        from .local import LocalFile

        path, name = download(url)
        local = LocalFile(path)
        local.name = name  # output and errors name the URL, never the temp copy
        if local.size == 0 and not allow_empty:
            local.close()
            raise CorruptFileError("file is empty", path=name)
        return local
    with _OPEN_LOCK:
        first = _OPENED.get(url)
    if first is not None:
        return RemoteSource(first.remote, name=first.name, allow_empty=allow_empty, shared=first)
    src = RemoteSource(open_remote_file(url), allow_empty=allow_empty)
    with _OPEN_LOCK:
        if len(_OPENED) >= _MAX_OPENED:
            _OPENED.clear()
        _OPENED[url] = src
    return src


def forget() -> None:
    """Forget the URLs opened so far (a new command: the files may have changed)."""
    _OPENED.clear()


def resolve_relative(base_url: str, location: str) -> str:
    """``location`` (an ONNX external-data path) against the URL of the file naming it; never outside its folder."""
    if is_url(location) or location.startswith("/") or "\\" in location:
        raise UsageError(f"external data location {location!r} is not a relative path")
    parts = [p for p in location.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UsageError(f"external data location {location!r} escapes the model's folder")
    if base_url.startswith("hf://"):
        p = parse_hf(base_url)
        folder = p.path.rsplit("/", 1)[0] if "/" in p.path else ""
        return str(HfPath(p.kind, p.repo, p.revision, "/".join([*([folder] if folder else []), *parts])))
    sp = urlsplit(base_url)
    folder = sp.path.rsplit("/", 1)[0]
    return urlunsplit((sp.scheme, sp.netloc, folder + "/" + "/".join(quote(p) for p in parts), sp.query, ""))
