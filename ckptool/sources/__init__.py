"""Where bytes come from: the one byte path of every reader and writer (torch-free).

A :class:`Source` is a read-only byte range store: its size, exact reads into a caller's buffer, bytes, a
zero-copy view when the bytes are local, a whole-file buffer for header walks, and a seekable file object
(for :mod:`zipfile`). Formats read through a Source, never through a path or a raw memory map, so a source
that is not a local file plugs in here without touching the formats.

A :class:`Location` (:mod:`.location`) is what the user typed (a file or a folder): it lists a folder and opens
the files in it as Sources, refusing names that escape it; :func:`open_location` picks one for a string.
:func:`open_source` opens a local file (:class:`LocalFile`) or a URL (:class:`~ckptool.sources.remote.RemoteSource`:
``http(s)://``, ``hf://``, any fsspec URL); :class:`MemorySource` serves bytes in memory. A source may also
have ``prefetch(spans)``: fetch these (offset, length) ranges now, in as few round trips as it can (a remote
source; local ones have nothing to gain). Formats that know many small ranges before they read them (every
zip local header, every legacy storage count) call :func:`prefetch`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any, Protocol

from .local import CHUNK, LocalFile
from .location import LocalLocation, Location, check_relative, open_location, open_source, register_scheme
from .memory import MemorySource

__all__ = [
    "CHUNK", "LocalFile", "LocalLocation", "Location", "MemorySource", "Source", "check_relative", "loaded_remote",
    "open_location", "open_source", "prefetch", "register_scheme",
]  # fmt: skip


def loaded_remote() -> Any:
    """The remote-source module (:mod:`.remote`) if this process has imported it, else None: then nothing was read
    from a URL, and there is nothing to count, reset or clean up (importing it, with http.client and ssl, to
    find that out cost every local command 25 ms)."""
    return sys.modules.get(__name__ + ".remote")


def _remote_location(url: str) -> Location:
    from .remote_location import RemoteLocation  # http.client, ssl: imported when a URL is used

    return RemoteLocation(url)


# the URL schemes the remote sources read (any other fsspec protocol: open_source(url) / the Python API)
for _prefix in ("http://", "https://", "hf://", "s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://"):
    register_scheme(_prefix, _remote_location)


def prefetch(src: Any, spans: Iterable[tuple[int, int]]) -> None:
    """Ask ``src`` for these (offset, length) ranges in one go, if it can (a remote source); else nothing."""
    fn = getattr(src, "prefetch", None)
    if fn is not None:
        fn(spans)


class Source(Protocol):
    """What a format reader, :class:`~ckptool.checkpoint.Checkpoint` and the writers need from where bytes are."""

    name: str  # the path (or URL) errors name

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes from ``offset``, or raise CorruptFileError (the source got shorter)."""

    def read(self, offset: int, n: int) -> bytes: ...

    def view(self, offset: int, n: int, *, writable: bool = False) -> memoryview | None:
        """The bytes without a copy (a memory map), or None when the source cannot map them. ``writable``:
        a private copy-on-write view (writes never reach the file)."""

    def buffer(self) -> Any:
        """The whole source as a sliceable, ``len()``-able read-only buffer (header walks)."""

    def fileobj(self) -> IO[bytes]:
        """A seekable binary file object over the source (for :mod:`zipfile`); closed by the caller."""

    def close(self) -> None: ...
