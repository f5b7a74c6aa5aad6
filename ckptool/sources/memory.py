"""Bytes already in memory as a :class:`~ckptool.sources.Source` (tests, fuzzing, data a caller fetched)."""

from __future__ import annotations

import io
from typing import IO, Any

from ..errors import CorruptFileError


class MemorySource:
    def __init__(self, name: str, data: bytes | bytearray | memoryview):
        self.name = name
        self._data = bytes(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def read_into(self, offset: int, view: memoryview) -> None:
        n = len(view)
        if offset < 0 or offset + n > len(self._data):
            raise CorruptFileError(
                f"file ends at byte {len(self._data)}, but {offset + n} bytes were expected (truncated?)",
                path=self.name,
            )
        view[:] = self._data[offset : offset + n]

    def read(self, offset: int, n: int) -> bytes:
        buf = bytearray(n)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def view(self, offset: int, n: int, *, writable: bool = False) -> memoryview | None:
        if writable:
            return memoryview(bytearray(self._data[offset : offset + n]))
        return memoryview(self._data)[offset : offset + n]

    def buffer(self) -> Any:
        return self._data

    def fileobj(self) -> IO[bytes]:
        return io.BytesIO(self._data)

    def close(self) -> None:
        pass

    def __enter__(self) -> MemorySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
