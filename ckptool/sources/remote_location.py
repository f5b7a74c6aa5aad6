"""A URL as a :class:`~ckptool.sources.Location`: a remote file, or a remote folder (a URL ending in ``/``, or
``hf://ORG/REPO/`` and its sub-folders), whose members resolve against it and never outside it.

* ``hf://ORG/REPO`` (no file) is the repo's index or single weight file (:func:`~.remote.resolve_hf`).
* A folder is listed with the Hub's tree API for ``hf://`` (``/api/{models|datasets}/REPO/tree/REV/PATH``),
  ``fs.ls`` for fsspec URLs; a plain http(s) server lists nothing, so its folder offers the
  :data:`~.remote.HF_CANDIDATES` that exist (one request each).
* :meth:`RemoteLocation.exists` opens the member (its first request is the member's first read, kept for
  the read that follows); :meth:`RemoteLocation.prefetch` opens many members concurrently (a sharded model:
  one header read per shard, in parallel).
* Names that output shows are redacted (:func:`~.remote.redact`); the URLs with their credentials stay here.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..errors import CkptError, UnreadableError
from . import remote
from .location import check_relative

CONCURRENCY = 8  # member opens in flight at once


class RemoteLocation:
    def __init__(self, url: str):
        self._hf = url.lower().startswith("hf://")
        if self._hf:
            p = remote.parse_hf(url)
            if not p.path and not url.endswith("/"):
                p = remote.resolve_hf(url)  # the repo: its index or weight file
            self._hfp = p
            self.url = str(p) + ("/" if url.endswith("/") and p.path else "")
            self._is_folder = not p.path or url.endswith("/")
        else:
            self.url = url
            self._is_folder = urlsplit(url).path.endswith("/")
        self.name = remote.redact(self.url) if not self._hf else self.url
        self._secret: dict[str, str] = {}  # display name -> URL with credentials

    def __repr__(self) -> str:
        return f"<RemoteLocation {self.name!r}{' (folder)' if self._is_folder else ''}>"

    @property
    def is_folder(self) -> bool:
        return self._is_folder

    @property
    def folder(self) -> str:
        return self.name if self._is_folder else self.name.rsplit("/", 1)[0]

    # -- names -------------------------------------------------------------------------------------------------
    def _member_url(self, norm: str) -> str:
        if self._hf:
            p = self._hfp
            base = p.path.rstrip("/") if self._is_folder else (p.path.rsplit("/", 1)[0] if "/" in p.path else "")
            return str(remote.HfPath(p.kind, p.repo, p.revision, f"{base}/{norm}" if base else norm))
        sp = urlsplit(self.url)
        folder = sp.path if self._is_folder else sp.path.rsplit("/", 1)[0] + "/"
        path = folder.rstrip("/") + "/" + "/".join(quote(unquote(x)) for x in norm.split("/"))
        return urlunsplit((sp.scheme, sp.netloc, path, sp.query, ""))

    def resolve(self, rel: str) -> str:
        norm = check_relative(rel, where=self.name)
        secret = self._member_url(norm)
        shown = remote.redact(secret) if not self._hf else secret
        self._secret[shown] = secret
        return shown

    def exists(self, rel: str) -> bool:
        full = self.resolve(rel)
        try:
            remote.open_url(self._secret[full]).close()
        except UnreadableError as e:
            if "HTTP 404" in e.message or e.message.startswith("not found"):
                return False
            raise
        return True

    def names(self) -> list[str]:
        if not self._is_folder:
            folder = self._member_url("x").rsplit("/", 1)[0] + "/"
            return RemoteLocation(folder).names()
        if self._hf:
            listed = self._hf_tree()
            if listed is not None:
                return listed
        elif not self.url.lower().startswith(("http://", "https://")):
            f = remote.FsspecFile(self.url)
            try:
                entries = f.fs.ls(f.path, detail=True)
            except Exception as e:
                raise UnreadableError(f"cannot list the folder ({type(e).__name__})", path=self.name) from None
            remote.STATS.add(requests=1)
            return sorted(
                str(x["name"]).rstrip("/").rsplit("/", 1)[-1]
                for x in entries
                if x.get("type") == "file" and not str(x["name"]).rsplit("/", 1)[-1].startswith(".")
            )
        found = []  # a plain web server lists nothing: the conventional names that exist
        for cand in remote.HF_CANDIDATES:
            if self.exists(cand):
                found.append(cand)
                if not cand.endswith(".index.json"):
                    break
        return found

    def _hf_tree(self) -> list[str] | None:
        listed = remote.hf_tree(self._hfp, self._hfp.path)
        if listed is None:
            return None
        out = []
        for it in listed:
            if it.get("type") == "file" and isinstance(it.get("path"), str):
                name = it["path"].rsplit("/", 1)[-1]
                if not name.startswith("."):
                    out.append(name)
        return sorted(out)

    # -- opening -----------------------------------------------------------------------------------------------
    def open(self, rel: str | None = None) -> Any:
        if rel is None:
            if self._is_folder:
                raise UnreadableError("is a folder: name a file in it", path=self.name)
            return remote.open_url(self.url, allow_empty=False)
        full = self.resolve(rel)
        return remote.open_url(self._secret[full], allow_empty=False)

    def open_path(self, full: str) -> Any:
        return remote.open_url(self._secret.get(full, full))

    def prefetch(self, rels: list[str]) -> None:
        """Open these members now, concurrently (their first reads): what a sharded model's shards need."""
        urls = []
        for rel in rels:
            try:
                urls.append(self._secret[self.resolve(rel)])
            except CkptError:
                continue  # the reader reports it, in order

        def one(u: str) -> None:
            with contextlib.suppress(CkptError):  # reported when the reader gets there, in order
                remote.open_url(u).close()

        if len(urls) > 1:
            with ThreadPoolExecutor(min(CONCURRENCY, len(urls))) as pool:
                list(pool.map(one, urls))


def open_remote_location(url: str) -> RemoteLocation:
    return RemoteLocation(url)
