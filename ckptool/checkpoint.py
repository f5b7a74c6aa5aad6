"""The one checkpoint model every format reader returns (torch-free).

A :class:`Checkpoint` lists :class:`TensorInfo` records: name, dtype, shape, strides, and where the bytes
live (:class:`StorageInfo` / :class:`ByteSource`, with the :class:`Decoder` its format supplies for bytes
that are not raw). Nothing here reads tensor bytes until a caller asks for values with
:meth:`Checkpoint.read_bytes`, :meth:`Checkpoint.iter_chunks` or :meth:`Checkpoint.numpy`; bytes come
through :mod:`ckptool.sources`. This module imports no format.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from . import dtypes
from .errors import CorruptFileError, KeyNotFoundError
from .sources import CHUNK, Source, open_source


class Decoder(Protocol):
    """How a format's non-raw bytes decode (a deflated zip member, ONNX typed fields): supplied by the format."""

    def chunks(
        self, source: Source, where: ByteSource, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        """The decoded bytes [start, stop) of ``where``, streamed (views into ``buf`` are valid until the next)."""
        ...


# The three records below are slotted dataclasses whose fields are set once, by ``__init__``, and then only read
# (treat them as immutable; ``dataclasses.replace`` makes a changed copy). They are not ``frozen=True``: a frozen
# dataclass sets every field through ``object.__setattr__``, 0.43 us a call here against 0.02 us for a plain
# store, and a safetensors tensor builds 23 fields (10 us a tensor, 1 s at 100k tensors). Derived values
# (``numel``, ``nbytes``, ``itemsize``) are computed once in ``__init__``, never per access.
@dataclass(slots=True, unsafe_hash=True)
class ByteSource:
    """Where a storage's bytes sit, and the decoder its format supplies when they are not raw little-endian."""

    path: str  # the file that holds the bytes (the checkpoint itself, or ONNX external data)
    offset: int  # absolute offset of the first byte in ``path``
    nbytes: int  # how many bytes are there
    member: str | None = None  # zip member name, for torch zip archives
    compressed: bool = False  # a zip member that is not ZIP_STORED: bytes must be inflated
    encoding: str = "raw"  # "raw" little-endian bytes, or an ONNX typed-field encoding
    decoder: Decoder | None = None  # None: the bytes are the values (raw); else how to decode them
    crc32: int | None = None  # the record's CRC-32 (zip): checked whenever the whole record streams by


@dataclass(slots=True, unsafe_hash=True)
class StorageInfo:
    key: str
    dtype: str  # element type of the storage
    numel: int  # elements of ``dtype``
    location: str  # "cpu", "cuda:0", ... as written in the file; never used to allocate anything
    source: ByteSource | None
    nbytes: int = field(init=False, repr=False, compare=False)  # numel x the dtype's size

    def __init__(self, key: str, dtype: str, numel: int, location: str, source: ByteSource | None) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.location = location
        self.source = source
        size = _ITEMSIZE.get(dtype)
        self.nbytes = numel * (size if size is not None else dtypes.itemsize(dtype))


def contiguous_stride(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The C-contiguous strides (in elements) of ``shape``; a 0 dimension counts as 1, as torch does."""
    if len(shape) <= 1:
        return (1,) if shape else ()
    out, acc = [], 1
    for dim in reversed(shape):
        out.append(acc)
        acc *= max(dim, 1)
    out.reverse()
    return tuple(out)


@dataclass(slots=True, unsafe_hash=True)
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
    quantization: dict[str, Any] | None = None  # quantized tensors: scheme, scale, zero point (or axis, channels)
    # derived, computed once by __init__
    numel: int = field(init=False, repr=False, compare=False)  # product of ``shape``
    itemsize: int = field(init=False, repr=False, compare=False)  # bytes per element of ``dtype``
    nbytes: int = field(init=False, repr=False, compare=False)  # numel x itemsize: the tensor's own bytes

    def __init__(
        self,
        name: str,
        dtype: str,
        shape: tuple[int, ...],
        storage: StorageInfo | None = None,
        storage_offset: int = 0,
        stride: tuple[int, ...] | None = None,
        is_parameter: bool = False,
        requires_grad: bool = False,
        constant: bool = False,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.storage = storage
        self.storage_offset = storage_offset
        self.stride = stride
        self.is_parameter = is_parameter
        self.requires_grad = requires_grad
        self.constant = constant
        self.quantization = quantization
        size = _ITEMSIZE.get(dtype)
        if size is None:
            size = dtypes.itemsize(dtype)  # another spelling, or KeyError: unknown dtype
        self.itemsize = size
        n = self.numel = _prod(shape)
        self.nbytes = n * size

    @property
    def contiguous_stride(self) -> tuple[int, ...]:
        return contiguous_stride(self.shape)

    @property
    def is_contiguous(self) -> bool:
        if self.stride is None or self.numel <= 1:
            return True
        return all(
            st == cs for st, cs, d in zip(self.stride, contiguous_stride(self.shape), self.shape, strict=True) if d != 1
        )

    def span(self) -> tuple[int, int]:
        """Element range [first, last+1) of the storage that this tensor touches."""
        off = self.storage_offset
        if self.numel == 0:
            return (off, off)
        if self.stride is None:  # C-contiguous: the span is its own elements
            return (off, off + self.numel)
        lo = hi = off
        for d, st in zip(self.shape, self.stride, strict=True):
            if st >= 0:
                hi += (d - 1) * st
            else:
                lo += (d - 1) * st
        return (lo, hi + 1)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "nbytes": self.nbytes,
        }
        if self.constant:
            d["constant"] = True
        if self.quantization:
            d["quantization"] = self.quantization
        return d


_ITEMSIZE = dtypes.ITEMSIZE
_prod = math.prod


@dataclass(repr=False)
class Checkpoint:
    """What a reader found in a file: tensors of the located state_dict, plus a summary of the rest.

    ``ck["name"]`` is the :class:`TensorInfo` (a dict lookup), ``"name" in ck`` tests for one, and
    :meth:`numpy` returns a tensor's values. Bytes are read through :mod:`ckptool.sources` only when asked.
    """

    path: str
    format: str  # torch-zip | torch-legacy | torch-tar | safetensors | onnx | torchscript
    tensors: list[TensorInfo]
    state_dict_key: str | None = None
    extras: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    byteorder: str = "little"
    verify_crc: bool = True  # check each record's CRC-32 as its bytes stream (scan turns it off: it checks itself)
    root: Any = None  # the recorded object tree (torch formats): for --key and other lookups
    storages: dict[str, StorageInfo] = field(default_factory=dict)  # every storage in the file
    unlisted: dict[str, str] = field(default_factory=dict)  # entries the reader saw but cannot list: name -> why
    opener: Callable[[str], Source] = field(default=open_source)  # how a path in a ByteSource is opened
    # a checkpoint of several files (shards): ByteSource.path -> the file's name inside the checkpoint's folder,
    # in shard order; empty for a one-file checkpoint
    files: dict[str, str] = field(default_factory=dict)
    _sources: dict[str, Source] = field(default_factory=dict)
    _index: tuple[int, int, dict[str, TensorInfo]] | None = None
    # CRC-32 bookkeeping of zip records: (path, offset) -> name. A record is checked when it streams whole; a
    # ranged read (a slice, a view, a record longer than its storage) leaves it unchecked until
    # :meth:`verify_crcs` streams it whole (export does before it reports bit-exact).
    _crc_ok: set[tuple[str, int]] = field(default_factory=set)
    _crc_unchecked: dict[tuple[str, int], ByteSource] = field(default_factory=dict)

    # -- summaries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)

    def _by_name(self) -> dict[str, TensorInfo]:
        idx = self._index
        if idx is None or idx[0] != id(self.tensors) or idx[1] != len(self.tensors):  # ``tensors`` was replaced
            by: dict[str, TensorInfo] = {}
            for t in self.tensors:
                by.setdefault(t.name, t)
            idx = self._index = (id(self.tensors), len(self.tensors), by)
        return idx[2]

    def __getitem__(self, name: str) -> TensorInfo:
        t = self._by_name().get(name)
        if t is None:
            raise KeyNotFoundError(f"no tensor named {name!r}", path=self.path)
        return t

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name()

    def __repr__(self) -> str:
        where = f", state_dict {self.state_dict_key!r}" if self.state_dict_key else ""
        return (
            f"<Checkpoint {self.path!r} ({self.format}): {len(self.tensors)} tensors, "
            f"{self.total_numel:,} elements, {self.total_bytes:,} bytes{where}>"
        )

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def file_of(self, t: TensorInfo) -> str | None:
        """The name (inside the checkpoint's folder) of the file holding the tensor's bytes: its shard, for a
        checkpoint of several files; None for a one-file checkpoint."""
        names = self.files_of(t)
        return ", ".join(names) if names else None

    def files_of(self, t: TensorInfo) -> list[str]:
        """Every file holding part of the tensor's bytes, by name inside the checkpoint's folder: one shard, or
        several when its decoder gathers it from chunks in several files (a decoder with ``paths``: a DCP tensor
        written by several ranks); empty for a one-file checkpoint."""
        if not self.files or t.storage is None or t.storage.source is None:
            return []
        src = t.storage.source
        paths = getattr(src.decoder, "paths", None) or (src.path,)
        return [self.files.get(p, os.path.basename(p)) for p in paths]

    def _file_json(self, t: TensorInfo) -> str | list[str] | None:
        names = self.files_of(t)
        return names[0] if len(names) == 1 else (names or None)

    @property
    def total_numel(self) -> int:
        return sum([t.numel for t in self.tensors])

    @property
    def total_bytes(self) -> int:
        return sum([t.nbytes for t in self.tensors])

    def _storage_use(self) -> tuple[int, list[list[str]]]:
        """(:attr:`stored_bytes`, :meth:`shared_storages`), in one pass over the tensors. A storage is one
        (file, offset, key); the dicts are built in C, and only when two tensors name one storage are the
        groups made (most files share none)."""
        tensors = self.tensors
        try:
            keys = [(t.storage.source.path, t.storage.source.offset, t.storage.key) for t in tensors]  # type: ignore[union-attr]
            sizes = [t.storage.source.nbytes for t in tensors]  # type: ignore[union-attr]
            loose = 0
        except AttributeError:  # a tensor without a storage or bytes: counted by its own size
            with_bytes = [t for t in tensors if t.storage is not None and t.storage.source is not None]
            loose = sum([t.nbytes for t in tensors]) - sum([t.nbytes for t in with_bytes])
            tensors = with_bytes
            keys = [(t.storage.source.path, t.storage.source.offset, t.storage.key) for t in tensors]  # type: ignore[union-attr]
            sizes = [t.storage.source.nbytes for t in tensors]  # type: ignore[union-attr]
        size = dict(zip(keys, sizes, strict=True))  # bytes on disk per storage (the last tensor's word, as ever)
        stored = loose + sum(size.values())
        if len(size) == len(keys):
            return stored, []
        first: dict[tuple[str, int, str], int] = {}
        groups: dict[tuple[str, int, str], list[str]] = {}
        for i, k in enumerate(keys):
            j = first.setdefault(k, i)
            if j != i:
                g = groups.get(k)
                if g is None:
                    groups[k] = [tensors[j].name, tensors[i].name]
                else:
                    g.append(tensors[i].name)
        ordered = sorted(groups.items(), key=lambda kv: first[kv[0]])  # in the order of each storage's first tensor
        return stored, [g for _k, g in ordered]

    def shared_storages(self) -> list[list[str]]:
        """The tensors that share one storage (tied embeddings, views), one list per storage that more than one
        tensor uses, in tensor order."""
        return self._storage_use()[1]

    @property
    def stored_bytes(self) -> int:
        """Bytes the files hold for these tensors: each storage counted once, as stored (compressed or encoded
        bytes included). Less than :attr:`total_bytes` when tensors share storage; more when they view part of
        a larger one."""
        return self._storage_use()[0]

    @property
    def dtype_counts(self) -> dict[str, int]:
        return dict(Counter([t.dtype for t in self.tensors]))

    def to_dict(self) -> dict[str, Any]:
        tensors = [t.to_dict() for t in self.tensors]
        if self.files:
            for d, t in zip(tensors, self.tensors, strict=True):
                d["file"] = self._file_json(t)
        stored, shared = self._storage_use()
        return {
            "path": self.path,
            "format": self.format,
            "state_dict_key": self.state_dict_key,
            "tensors": tensors,
            "total_numel": self.total_numel,
            "total_bytes": self.total_bytes,
            "stored_bytes": stored,
            "shared_storages": shared,
            **({"files": list(self.files.values())} if self.files else {}),
            "dtypes": self.dtype_counts,
            "extras": self.extras,
            "metadata": self.metadata,
            "notes": self.notes,
        }

    # -- byte access: the one path ------------------------------------------------------------
    def close(self) -> None:
        for src in self._sources.values():
            src.close()
        self._sources.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def source(self, path: str) -> Source:
        """The open Source for a file named in a ByteSource (opened on first use, closed by :meth:`close`)."""
        src = self._sources.get(path)
        if src is None:
            src = self._sources[path] = self.opener(path)
        return src

    def is_raw(self, storage: StorageInfo) -> bool:
        """Are the storage's bytes its values as they are: undecoded, and little-endian (or single bytes)?
        The one place this is decided; everything that copies or views bytes in place asks here."""
        src = storage.source
        return (
            src is not None
            and src.decoder is None
            and not (self.byteorder == "big" and dtypes.itemsize(storage.dtype) > 1)
        )

    def raw_range(self, t: TensorInfo) -> tuple[str, int] | None:
        """(file, absolute offset) where the tensor's own bytes sit as one contiguous little-endian run, or None
        when they need work first (a strided view, big-endian bytes, a compressed zip record, ONNX typed fields)."""
        st = t.storage
        if st is None or not self.is_raw(st) or not t.is_contiguous:
            return None
        src = st.source
        assert src is not None
        start = t.storage_offset * t.itemsize
        if start < 0 or start + t.nbytes > src.nbytes:
            raise CorruptFileError(
                f"tensor {t.name!r} reaches byte {start + t.nbytes} of a storage that holds {src.nbytes}",
                path=self.path,
            )
        return src.path, src.offset + start

    def storage_chunks(
        self, storage: StorageInfo, start: int, stop: int, buf: bytearray
    ) -> Iterator[bytes | memoryview]:
        """The storage's bytes [start, stop) (offsets relative to the storage), as stored (no byte swap), streamed
        through ``buf``: a yielded view is valid until the next step."""
        where = storage.source
        if where is None:
            raise CorruptFileError(f"storage {storage.key!r} has no bytes in the file", path=self.path)
        limit = storage.nbytes if where.decoder is not None else where.nbytes  # decoded size / bytes on disk
        if start < 0 or stop > limit:
            raise CorruptFileError(
                f"storage {storage.key!r} needs bytes up to {stop} but holds {limit}", path=where.path
            )
        src = self.source(where.path)
        if where.crc32 is not None and not self.verify_crc:
            where = replace(where, crc32=None)
        rec, whole = (where.path, where.offset), False
        if where.crc32 is not None:  # is this read the whole record, through a decoder that checks the CRC?
            whole = start == 0 and stop >= where.nbytes and _checks_crc(where.decoder)
            if not whole and rec not in self._crc_ok:
                self._crc_unchecked.setdefault(rec, where)
        if where.decoder is not None:
            yield from where.decoder.chunks(src, where, start, stop, buf)
            if where.crc32 is not None and whole:
                self._crc_checked(rec)
            return
        if where.offset + stop > src.size:
            raise CorruptFileError(
                f"storage {storage.key!r} needs bytes up to {where.offset + stop} but the file has {src.size} "
                "(truncated?)",
                path=where.path,
            )
        yield from self._stored(src, where, start, stop, buf, storage.key)

    def _stored(
        self, src: Source, where: ByteSource, start: int, stop: int, buf: bytearray, label: object
    ) -> Iterator[memoryview]:
        """The stored bytes [start, stop) of ``where``, streamed through ``buf``. A read of the whole record checks
        its CRC-32 (CorruptFileError naming the record, or ``label``, on a mismatch) and books it as checked."""
        mv = memoryview(buf)
        pos = start
        crc = where.crc32 if start == 0 and stop == where.nbytes else None  # the whole record: check its CRC
        run = 0
        while pos < stop:
            k = min(len(buf), stop - pos)
            src.read_into(where.offset + pos, mv[:k])
            if crc is not None:
                run = zlib.crc32(mv[:k], run)
            yield mv[:k]
            pos += k
        if crc is not None:
            if run != crc:
                raise CorruptFileError(crc_mismatch(where.member or label, run, crc), path=where.path)
            self._crc_checked((where.path, where.offset))

    def _crc_checked(self, rec: tuple[str, int]) -> None:
        self._crc_ok.add(rec)
        self._crc_unchecked.pop(rec, None)

    @property
    def crc_unchecked(self) -> list[str]:
        """The zip records read so far only in part (a slice, a view, a remote range), whose CRC-32 was not
        checked: what a value read returned from them is not known to be what the archive was written with."""
        return [w.member or f"{w.path}@{w.offset}" for w in self._crc_unchecked.values()]

    def crc_unverified(self, tensors: list[TensorInfo]) -> list[str]:
        """The zip records behind ``tensors`` whose CRC-32 no read has checked yet (read in part, copied without
        a check, or not read at all)."""
        out: dict[tuple[str, int], str] = {}
        for t in tensors:
            w = t.storage.source if t.storage is not None else None
            if w is not None and w.crc32 is not None and (w.path, w.offset) not in self._crc_ok:
                out.setdefault((w.path, w.offset), w.member or f"{w.path}@{w.offset}")
        return list(out.values())

    def verify_crcs(self) -> list[str]:
        """Stream every record read only in part once, whole, and check its CRC-32 (CorruptFileError naming the
        record on a mismatch). Returns the records it checked. Export calls it before it reports bit-exact."""
        done = []
        for rec, where in list(self._crc_unchecked.items()):
            src = self.source(where.path)
            dec = where.decoder
            while dec is not None and not _checks_crc(dec):
                dec = getattr(dec, "inner", None)  # a view decoder (neg / conj bits) over the stored record
            whole = replace(where, decoder=dec)
            buf = bytearray(min(CHUNK, max(where.nbytes, 1)))
            if dec is not None:
                chunks = dec.chunks(src, whole, 0, whole.nbytes, buf)
            else:
                chunks = self._stored(src, whole, 0, whole.nbytes, buf, rec)
            for _ in chunks:
                pass
            self._crc_checked(rec)
            done.append(whole.member or f"{whole.path}@{whole.offset}")
        return done

    def storage_bytes(self, storage: StorageInfo, start: int = 0, stop: int | None = None) -> bytes:
        """Bytes [start, stop) of a storage (byte offsets relative to the storage), as stored."""
        src = storage.source
        if src is None:
            raise CorruptFileError(f"storage {storage.key!r} has no bytes in the file", path=self.path)
        stop = src.nbytes if stop is None else stop
        out = bytearray()
        for chunk in self.storage_chunks(storage, start, stop, bytearray(min(CHUNK, max(stop - start, 1)))):
            out += chunk
        return bytes(out)

    def read_bytes(self, t: TensorInfo) -> bytes:
        """The tensor's own elements, C-contiguous, little-endian."""
        out = bytearray()
        for chunk in self.iter_chunks(t, buf=bytearray(min(CHUNK, max(t.nbytes, 1)))):
            out += chunk
        return bytes(out)

    def iter_chunks(
        self, t: TensorInfo, chunk_bytes: int = CHUNK, buf: bytearray | None = None
    ) -> Iterator[bytes | memoryview]:
        """THE chunk iterator: the tensor's own elements in C order, little-endian, in chunks of about
        ``chunk_bytes`` (export, diff, scan, runtime, extract and the writers' verification all read here).

        With ``buf``, chunks are views into it, valid until the next step (no allocation per chunk); without,
        each chunk is its own ``bytes``. Contiguous raw bytes are read with ``readinto`` (see
        :mod:`ckptool.sources.local` for the measurement); big-endian files are swapped chunk by chunk;
        strided views gather the span of their storage that they touch.
        """
        if t.storage is None:
            raise CorruptFileError(f"tensor {t.name!r} has no storage", path=self.path)
        if t.nbytes == 0:
            return
        size = t.itemsize
        own = buf is None
        if buf is None:
            buf = bytearray(max(size, min(chunk_bytes, t.nbytes)))
        if len(buf) % size:
            buf = bytearray(max(size, len(buf) - len(buf) % size))
        swap = self.byteorder == "big" and size > 1
        if t.is_contiguous:
            start = t.storage_offset * size
            for chunk in self.storage_chunks(t.storage, start, start + t.nbytes, buf):
                if swap:
                    yield _swapped(chunk, size)
                else:
                    yield bytes(chunk) if own else chunk
            return
        import numpy as np

        lo, hi = t.span()
        raw = self.storage_bytes(t.storage, lo * size, hi * size)
        base = np.frombuffer(raw, dtype=np.dtype(f"V{size}"))
        stride = t.stride if t.stride is not None else t.contiguous_stride
        view = np.lib.stride_tricks.as_strided(
            base[t.storage_offset - lo :], shape=t.shape, strides=[s * size for s in stride], writeable=False
        )
        out = np.ascontiguousarray(view).tobytes()
        yield _swapped(out, size) if swap else out

    # -- values ---------------------------------------------------------------------------------
    def numpy(self, name: str | TensorInfo) -> Any:
        """The tensor's values as a new numpy array of its shape (never a view of the file).

        numpy has no bfloat16 or float8: bfloat16 comes back as float32 (exact: every bfloat16 is a float32),
        float8 variants as their uint8 bit patterns, and quantized types as their integer storage (qint8 ->
        int8, quint8 -> uint8, qint32 -> int32), without scale or zero point.
        """
        import numpy as np

        t = name if isinstance(name, TensorInfo) else self[name]
        data = self.read_bytes(t)
        kind = t.dtype
        if kind == "bfloat16":
            bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(t.shape)
        code = dtypes.lookup(kind).numpy or _NUMPY_FALLBACK.get(kind)
        if code is None:  # pragma: no cover - every table entry has one
            raise CorruptFileError(f"tensor {t.name!r}: no numpy type for {kind}", path=self.path)
        return np.frombuffer(data, dtype=code).reshape(t.shape).copy()

    value = numpy


_NUMPY_FALLBACK = {
    "float8_e4m3fn": "u1", "float8_e4m3fnuz": "u1", "float8_e5m2": "u1", "float8_e5m2fnuz": "u1",
    "qint8": "i1", "quint8": "u1", "qint32": "<i4",
}  # fmt: skip


def _swapped(chunk: bytes | memoryview, size: int) -> bytes:
    import numpy as np

    return np.frombuffer(chunk, dtype=np.uint8).reshape(-1, size)[:, ::-1].tobytes()


def crc_mismatch(record: object, got: int, want: int) -> str:
    """What every reader says of a zip record whose bytes do not match the CRC-32 its directory gives."""
    return (
        f"record {record!r}: CRC-32 is {got:08x} but the zip directory says {want:08x}: the record was modified or "
        "damaged"
    )


def _checks_crc(decoder: Decoder | None) -> bool:
    """Does a read through ``decoder`` check the record's CRC-32 when it streams the whole record? The raw path
    does (``storage_chunks``); a decoder says so with ``checks_crc = True`` (zip inflation); view decoders that
    read the stored bytes themselves (neg / conj bits) do not."""
    return decoder is None or bool(getattr(decoder, "checks_crc", False))
