"""A byte range of another Source as a Source of its own (torch-free).

A torch.distributed.checkpoint ``.distcp`` file holds one complete ``torch.save`` archive per tensor chunk,
back to back; :class:`SliceSource` is one of them, so the torch zip reader reads it as if it were a file:
offsets are relative to the slice, reads never leave it, and closing it leaves the parent open (its owner
closes that).
"""

from __future__ import annotations

import io
from typing import IO, TYPE_CHECKING, Any

from ..errors import CorruptFileError

if TYPE_CHECKING:
    from . import Source


class SliceSource:
    """Bytes [offset, offset + length) of ``parent``; ``name`` is what errors call it."""

    def __init__(self, parent: Source, offset: int, length: int, *, name: str | None = None):
        if offset < 0 or length < 0 or offset + length > parent.size:
            raise CorruptFileError(
                f"bytes [{offset}, {offset + length}) are outside the file ({parent.size} bytes)", path=parent.name
            )
        self.parent = parent
        self.offset = offset
        self.length = length
        self.name = name or f"{parent.name}@{offset}"

    @property
    def size(self) -> int:
        return self.length

    def _check(self, offset: int, n: int) -> None:
        if offset < 0 or n < 0 or offset + n > self.length:
            raise CorruptFileError(
                f"needs bytes up to {offset + n} but the slice at byte {self.offset} holds {self.length}",
                path=self.name,
            )

    def read_into(self, offset: int, view: memoryview) -> None:
        self._check(offset, len(view))
        self.parent.read_into(self.offset + offset, view)

    def read(self, offset: int, n: int) -> bytes:
        buf = bytearray(n)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def view(self, offset: int, n: int, *, writable: bool = False) -> memoryview | None:
        self._check(offset, n)
        return self.parent.view(self.offset + offset, n, writable=writable)

    def buffer(self) -> Any:
        return memoryview(self.parent.buffer())[self.offset : self.offset + self.length]

    def fileobj(self) -> IO[bytes]:
        return io.BufferedReader(_SliceIO(self), buffer_size=1 << 16)

    def close(self) -> None:
        pass  # the parent belongs to whoever opened it

    def __enter__(self) -> SliceSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SliceIO(io.RawIOBase):
    """A seekable read-only file object over a SliceSource (for :mod:`zipfile`)."""

    def __init__(self, src: SliceSource):
        self._src = src
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._src.size}[whence]
        if base + pos < 0:
            raise OSError("negative seek position")
        self._pos = base + pos
        return self._pos

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = max(0, min(len(mv), self._src.size - self._pos))
        if n:
            self._src.read_into(self._pos, mv[:n])
            self._pos += n
        return n
