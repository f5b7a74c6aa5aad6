"""The one checkpoint model every format reader returns (torch-free).

A :class:`Checkpoint` lists :class:`TensorInfo` records: name, dtype, shape, strides, and where the bytes
live (:class:`StorageInfo` / :class:`ByteSource`). Nothing here reads tensor bytes until a caller asks
for values with :meth:`Checkpoint.read_bytes` or :meth:`Checkpoint.iter_chunks`.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import dtypes
from .errors import CorruptFileError, KeyNotFoundError


@dataclass(frozen=True)
class ByteSource:
    """Where a storage's bytes sit on disk."""

    path: str  # the file that holds the bytes (the checkpoint itself, or ONNX external data)
    offset: int  # absolute offset of the first byte in ``path``
    nbytes: int  # how many bytes are there
    member: str | None = None  # zip member name, for torch zip archives
    compressed: bool = False  # a zip member that is not ZIP_STORED: bytes must be inflated
    encoding: str = "raw"  # "raw" little-endian bytes, or an ONNX typed-field encoding


@dataclass(frozen=True)
class StorageInfo:
    key: str
    dtype: str  # element type of the storage
    numel: int  # elements of ``dtype``
    location: str  # "cpu", "cuda:0", ... as written in the file; never used to allocate anything
    source: ByteSource | None

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.lookup(self.dtype).itemsize


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    storage: StorageInfo | None = None
    storage_offset: int = 0  # in elements of ``dtype``
    stride: tuple[int, ...] | None = None  # None: C-contiguous
    is_parameter: bool = False
    requires_grad: bool = False
    constant: bool = False  # ONNX: the value of a Constant node (named after its output), not an initializer

    @property
    def itemsize(self) -> int:
        return dtypes.lookup(self.dtype).itemsize

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def contiguous_stride(self) -> tuple[int, ...]:
        out, acc = [], 1
        for dim in reversed(self.shape):
            out.append(acc)
            acc *= max(dim, 1)
        return tuple(reversed(out))

    @property
    def is_contiguous(self) -> bool:
        if self.stride is None or self.numel <= 1:
            return True
        return all(
            st == cs for st, cs, d in zip(self.stride, self.contiguous_stride, self.shape, strict=True) if d != 1
        )

    def span(self) -> tuple[int, int]:
        """Element range [first, last+1) of the storage that this tensor touches."""
        if self.numel == 0:
            return (self.storage_offset, self.storage_offset)
        stride = self.stride if self.stride is not None else self.contiguous_stride
        lo = hi = self.storage_offset
        for d, st in zip(self.shape, stride, strict=True):
            if st >= 0:
                hi += (d - 1) * st
            else:
                lo += (d - 1) * st
        return (lo, hi + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "nbytes": self.nbytes,
            **({"constant": True} if self.constant else {}),
        }


@dataclass
class Checkpoint:
    """What a reader found in a file: tensors of the located state_dict, plus a summary of the rest."""

    path: str
    format: str  # torch-zip | torch-legacy | safetensors | onnx | torchscript
    tensors: list[TensorInfo]
    state_dict_key: str | None = None
    extras: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    byteorder: str = "little"
    root: Any = None  # the recorded object tree (torch formats): for --key and other lookups
    storages: dict[str, StorageInfo] = field(default_factory=dict, repr=False)  # every storage in the file
    _maps: dict[str, mmap.mmap] = field(default_factory=dict, repr=False)
    _cache: tuple[tuple[str, str | None, int], bytes] | None = field(default=None, repr=False)

    # -- summaries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)

    def __getitem__(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyNotFoundError(f"no tensor named {name!r}", path=self.path)

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def total_numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def dtype_counts(self) -> dict[str, int]:
        return dict(Counter(t.dtype for t in self.tensors))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "state_dict_key": self.state_dict_key,
            "tensors": [t.to_dict() for t in self.tensors],
            "total_numel": self.total_numel,
            "total_bytes": self.total_bytes,
            "dtypes": self.dtype_counts,
            "extras": self.extras,
            "metadata": self.metadata,
            "notes": self.notes,
        }

    # -- byte access -------------------------------------------------------------------------
    def close(self) -> None:
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a caller still holds a view; it closes when released
                m.close()
        self._maps.clear()
        self._cache = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _map(self, path: str) -> mmap.mmap:
        m = self._maps.get(path)
        if m is None:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size == 0:
                    raise CorruptFileError("file is empty", path=path)
                m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = m
        return m

    def storage_bytes(self, storage: StorageInfo, start: int = 0, stop: int | None = None) -> memoryview | bytes:
        """Raw bytes [start, stop) of a storage (byte offsets relative to the storage)."""
        src = storage.source
        if src is None:
            raise CorruptFileError(f"storage {storage.key!r} has no bytes in the file", path=self.path)
        stop = src.nbytes if stop is None else stop
        if src.compressed or src.encoding != "raw":
            return self._decoded(storage, src)[start:stop]
        m = self._map(src.path)
        if src.offset + stop > len(m):
            raise CorruptFileError(
                f"storage {storage.key!r} needs bytes up to {src.offset + stop} but the file has {len(m)}",
                path=src.path,
            )
        return memoryview(m)[src.offset + start : src.offset + stop]

    def _decoded(self, storage: StorageInfo, src: ByteSource) -> bytes:
        """Bytes that are not raw on disk (a deflated zip member, ONNX typed fields), decoded once.

        Only the most recent storage is kept, so streaming a file of such storages costs one storage of memory
        instead of re-inflating from the start for every chunk."""
        key = (src.path, src.member, src.offset)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        need = storage.nbytes
        if src.compressed:
            import zipfile
            import zlib

            try:
                with zipfile.ZipFile(self.path) as zf, zf.open(src.member or "") as fh:
                    data = fh.read(need + 1)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
                raise CorruptFileError(f"cannot inflate {src.member!r} ({e})", path=self.path) from None
            if len(data) < need:
                raise CorruptFileError(f"{src.member!r} inflates to {len(data)} bytes, expected {need}", path=self.path)
        else:
            from .formats.onnx import decode_typed_field

            data = decode_typed_field(self._map(src.path), src, storage.dtype)
        self._cache = (key, data)
        return data

    def read_bytes(self, t: TensorInfo) -> bytes:
        """The tensor's own elements, C-contiguous, little-endian."""
        return b"".join(self.iter_chunks(t))

    def iter_chunks(self, t: TensorInfo, chunk_bytes: int = 16 << 20) -> Iterator[bytes | memoryview]:
        """Stream the tensor's own elements in C order (little-endian), in chunks of about ``chunk_bytes``."""
        if t.storage is None:
            raise CorruptFileError(f"tensor {t.name!r} has no storage", path=self.path)
        size = t.itemsize
        if t.nbytes == 0:
            return
        swap = self.byteorder == "big" and size > 1
        if t.is_contiguous and not swap:
            start = t.storage_offset * size
            stop = start + t.nbytes
            for pos in range(start, stop, chunk_bytes):
                yield self.storage_bytes(t.storage, pos, min(stop, pos + chunk_bytes))
            return
        import numpy as np

        lo, hi = t.span()
        raw = self.storage_bytes(t.storage, lo * size, hi * size)
        dt = np.dtype(f"V{size}")
        base = np.frombuffer(raw, dtype=dt)
        stride = t.stride if t.stride is not None else t.contiguous_stride
        view = np.lib.stride_tricks.as_strided(
            base[t.storage_offset - lo :], shape=t.shape, strides=[s * size for s in stride], writeable=False
        )
        out = np.ascontiguousarray(view)
        if swap:
            out = out.view(np.uint8).reshape(-1, size)[:, ::-1]
        yield out.tobytes()
