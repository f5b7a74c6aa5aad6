"""torch zip-format writer (``--pth``): what ``torch.save(state_dict, OUT)`` writes, without torch.

The file is a zip of stored (uncompressed) records whose data start at 64-byte boundaries, exactly like
torch's own writer: ``<name>/data.pkl``, ``.format_version``, ``.storage_alignment``, ``byteorder``
(``little``), ``data/<key>`` for each storage, ``version`` and ``.data/serialization_id``; zip64 fields
where sizes or offsets need them. ``data.pkl`` is pickled by hand (protocol 2) with the opcodes
``torch.save`` emits: a ``collections.OrderedDict`` of tensors rebuilt by
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())``
(``_rebuild_tensor_v3`` with an untyped storage for dtypes without a typed storage class, e.g. uint16 and
float8), ``_rebuild_parameter`` for parameters, and persistent ids
``('storage', torch.<X>Storage, key, 'cpu', numel)``. It loads with ``torch.load(weights_only=True)``.

What is written: the selected state_dict as one flat OrderedDict (a training checkpoint's other entries,
such as the optimizer, are left out). Tensors that share a storage in the source share one in the output
(only the byte range they use is written), and views keep their offsets and strides, as ``torch.save``
would keep them; sources whose bytes need conversion (big-endian, compressed records, ONNX typed fields)
get one contiguous storage per tensor. Every storage is written as location ``cpu``.

The bit-exact check (on by default) re-reads the written file with ckptool's own zip reader and
restricted unpickler, checks every tensor's name, dtype, shape, stride and offset against the plan, and
compares each record's CRC-32 (computed from the source bytes while writing) with the bytes on disk.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import dtypes
from ..checkpoint import Checkpoint, StorageInfo, TensorInfo
from ..errors import CkptError, CorruptFileError
from ..sources import open_source
from .atomic import write_all
from .driver import ExportResult, Progress, Ticker, export, reopen_written, storage_id, verification_failed

ALIGN = 64
ZIP64_LIMIT = 0xFFFFFFFF  # sizes/offsets at or above this go to zip64 extra fields (tests lower it)


# -- the plan ---------------------------------------------------------------------------------------------


@dataclass
class _Storage:
    key: str  # record name under data/
    dtype: str  # element type of the tensors using it
    nbytes: int
    # where the bytes come from: a raw byte range [start, start + nbytes) of a source storage, or one tensor
    # through Checkpoint.iter_chunks
    source: StorageInfo | None = None
    start: int = 0
    tensor: TensorInfo | None = None
    crc: int = 0

    @property
    def numel(self) -> int:
        return self.nbytes // dtypes.lookup(self.dtype).itemsize


@dataclass
class _Entry:
    name: str
    t: TensorInfo
    storage: _Storage
    offset: int  # elements
    stride: tuple[int, ...]


@dataclass
class _Plan:
    entries: list[_Entry] = field(default_factory=list)
    storages: list[_Storage] = field(default_factory=list)


def plan(ck: Checkpoint, pairs: list[tuple[str, TensorInfo]]) -> _Plan:
    """Storages and tensor records for the output, in source order."""
    keys: list[tuple[Any, ...] | None] = []
    spans: dict[tuple[Any, ...], tuple[int, int]] = {}
    for _name, t in pairs:
        stride = t.stride if t.stride is not None else t.contiguous_stride
        if t.numel == 0 or any(s < 0 for s in stride) or t.storage is None or not ck.is_raw(t.storage):
            keys.append(None)  # its own contiguous storage, made by iter_chunks
            continue
        k = (*storage_id(t), t.dtype)
        lo, hi = t.span()
        if k in spans:
            lo, hi = min(lo, spans[k][0]), max(hi, spans[k][1])
        spans[k] = (lo, hi)
        keys.append(k)
    p = _Plan()
    made: dict[tuple[Any, ...], _Storage] = {}
    for (name, t), key in zip(pairs, keys, strict=True):
        if key is None:
            st = _Storage(str(len(p.storages)), t.dtype, t.nbytes, tensor=t)
            p.storages.append(st)
            p.entries.append(_Entry(name, t, st, 0, t.contiguous_stride))
            continue
        k = key
        lo, hi = spans[k]
        st_or_none = made.get(k)
        if st_or_none is None:
            assert t.storage is not None and t.storage.source is not None
            if lo < 0 or hi * t.itemsize > t.storage.source.nbytes:
                raise CorruptFileError(f"tensor {t.name!r} reaches outside its storage", path=ck.path)
            st_or_none = _Storage(
                str(len(p.storages)), t.dtype, (hi - lo) * t.itemsize, source=t.storage, start=lo * t.itemsize
            )
            p.storages.append(st_or_none)
            made[k] = st_or_none
        stride = t.stride if t.stride is not None else t.contiguous_stride
        p.entries.append(_Entry(name, t, st_or_none, t.storage_offset - lo, stride))
    return p


# -- data.pkl -----------------------------------------------------------------------------------------------


class _Pickler:
    """Just enough of pickle protocol 2 to write what torch.save writes, memoized the same way."""

    def __init__(self) -> None:
        self.buf = bytearray(b"\x80\x02")
        self.memo: dict[Any, int] = {}
        self._n = 0

    def _put(self, key: Any = None) -> None:
        i = self._n
        self._n += 1
        if key is not None:
            self.memo[key] = i
        self.buf += b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)

    def _get(self, key: Any) -> bool:
        i = self.memo.get(key)
        if i is None:
            return False
        self.buf += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        return True

    def glob(self, module: str, name: str) -> None:
        key = ("global", module, name)
        if not self._get(key):
            self.buf += b"c" + f"{module}\n{name}\n".encode("ascii")
            self._put(key)

    def put_str(self, s: str) -> None:
        key = ("str", s)
        if not self._get(key):
            b = s.encode("utf-8", "surrogatepass")
            self.buf += b"X" + struct.pack("<I", len(b)) + b
            self._put(key)

    def put_int(self, i: int) -> None:
        if 0 <= i < 256:
            self.buf += b"K" + bytes([i])
        elif 0 <= i < 65536:
            self.buf += b"M" + struct.pack("<H", i)
        elif -(2**31) <= i < 2**31:
            self.buf += b"J" + struct.pack("<i", i)
        else:
            n = (i.bit_length() + 8) // 8
            self.buf += b"\x8a" + bytes([n]) + i.to_bytes(n, "little", signed=True)

    def put_bool(self, b: bool) -> None:
        self.buf += b"\x88" if b else b"\x89"

    def int_tuple(self, items: tuple[int, ...]) -> None:
        if not items:
            self.buf += b")"
            return
        if len(items) > 3:
            self.buf += b"("
        for i in items:
            self.put_int(i)
        self.buf += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")
        self._put()

    def empty_ordered_dict(self) -> None:
        self.glob("collections", "OrderedDict")
        self.buf += b")R"
        self._put()

    def tensor(self, e: _Entry) -> None:
        dt = dtypes.lookup(e.t.dtype)
        v3 = dt.storage is None
        if e.t.is_parameter:
            self.glob("torch._utils", "_rebuild_parameter")
        self.glob("torch._utils", "_rebuild_tensor_v3" if v3 else "_rebuild_tensor_v2")
        self.buf += b"(("  # MARK (args), MARK (persistent id)
        self.put_str("storage")
        if v3:
            self.glob("torch.storage", "UntypedStorage")
        else:
            assert dt.storage is not None
            self.glob("torch", dt.storage)
        self.put_str(e.storage.key)
        self.put_str("cpu")
        self.put_int(e.storage.nbytes if v3 else e.storage.numel)
        self.buf += b"t"
        self._put()
        self.buf += b"Q"  # BINPERSID
        self.put_int(e.offset)
        self.int_tuple(e.t.shape)
        self.int_tuple(e.stride)
        self.put_bool(e.t.requires_grad and not e.t.is_parameter)
        self.empty_ordered_dict()
        if v3:
            self.glob("torch", dt.name)
        self.buf += b"t"
        self._put()
        self.buf += b"R"
        self._put()
        if e.t.is_parameter:
            self.put_bool(e.t.requires_grad)
            self.empty_ordered_dict()
            self.buf += b"\x87"
            self._put()
            self.buf += b"R"
            self._put()

    def state_dict(self, entries: list[_Entry]) -> bytes:
        self.empty_ordered_dict()
        for i in range(0, len(entries), 1000):  # pickle's batch size
            self.buf += b"("
            for e in entries[i : i + 1000]:
                self.put_str(e.name)
                self.tensor(e)
            self.buf += b"u"  # SETITEMS
        self.buf += b"."
        return bytes(self.buf)


# -- the zip ------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    name: bytes
    offset: int  # of the local header
    size: int
    crc: int = 0


class _ZipWriter:
    """Sequential writes of stored records on a raw file descriptor; torch's layout (64-byte aligned data)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.records: list[_Record] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.pos += write_all(self.fd, data)

    def begin(self, name: str, size: int, crc: int = 0) -> _Record:
        """Write a local header (CRC patched later by :meth:`end` if not known yet); data follows."""
        bname = name.encode("utf-8")
        rec = _Record(bname, self.pos, size, crc)
        zip64 = size >= ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        base = self.pos + 30 + len(bname) + len(extra) + 4
        pad = -base % ALIGN
        extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
        small = 0xFFFFFFFF if zip64 else size
        self.write(
            struct.pack(
                "<4sHHHHHIIIHH",
                b"PK\x03\x04",
                45 if zip64 else 20,
                0x0800,
                0,
                0,
                0,
                crc,
                small,
                small,
                len(bname),
                len(extra),
            )
            + bname
            + extra
        )
        assert self.pos % ALIGN == 0
        self.records.append(rec)
        return rec

    def end(self, rec: _Record, crc: int) -> None:
        rec.crc = crc
        os.lseek(self.fd, rec.offset + 14, os.SEEK_SET)
        write_all(self.fd, struct.pack("<I", crc))
        os.lseek(self.fd, self.pos, os.SEEK_SET)

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data), zlib.crc32(data))
        self.write(data)

    def finish(self) -> None:
        cd_start = self.pos
        for r in self.records:
            fields = []
            usize = r.size
            off = r.offset
            if usize >= ZIP64_LIMIT:
                fields += [usize, usize]
                usize = 0xFFFFFFFF
            if off >= ZIP64_LIMIT:
                fields.append(off)
                off = 0xFFFFFFFF
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            ver = 45 if fields else 20
            self.write(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    45,
                    ver,
                    0x0800,
                    0,
                    0,
                    0,
                    r.crc,
                    usize,
                    usize,
                    len(r.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    off,
                )
                + r.name
                + extra
            )
        cd_size = self.pos - cd_start
        n = len(self.records)
        eocd64 = self.pos
        # zip64 end of central directory record + locator (torch writes them always), then the classic record
        self.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
        self.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1))
        self.write(
            struct.pack(
                "<4sHHHHIIH",
                b"PK\x05\x06",
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                min(cd_size, 0xFFFFFFFF),
                min(cd_start, 0xFFFFFFFF),
                0,
            )
        )


def _archive_name(out: Path) -> str:
    stem = out.name.split(".")[0] if not out.name.startswith(".") else out.stem
    stem = "".join(c for c in stem if c.isprintable() and c not in "/\\")
    return stem or "archive"


def _storage_chunks(ck: Checkpoint, s: _Storage, buf: bytearray) -> Iterator[memoryview | bytes]:
    """The bytes of an output storage, through the checkpoint's one byte path."""
    if s.tensor is not None:
        return ck.iter_chunks(s.tensor, len(buf), buf=buf)
    assert s.source is not None
    return ck.storage_chunks(s.source, s.start, s.start + s.nbytes, buf)


@dataclass
class _Written:
    """The plan of one .pth file: its storages and records, data.pkl, the archive name."""

    p: _Plan
    arc: str
    pkl: bytes
    serialization_id: str
    metadata: dict[str, str]

    @property
    def tensors(self) -> int:
        return len(self.p.entries)

    @property
    def data_bytes(self) -> int:
        return sum(s.nbytes for s in self.p.storages)


class TorchZipWriter:
    format = "torch-zip"
    verify_method = "re-read the written file with ckptool's reader; compared every record's CRC-32 with the source's"

    def plan(
        self, ck: Checkpoint, pairs: list[tuple[str, TensorInfo]], out: Path, metadata: dict[str, str] | None
    ) -> _Written:
        p = plan(ck, pairs)
        arc = _archive_name(out)
        pkl = _Pickler().state_dict(p.entries)
        ident = hashlib.sha256(pkl + b"".join(struct.pack("<Q", s.nbytes) for s in p.storages)).digest()
        serialization_id = f"{int.from_bytes(ident[:16], 'big'):040d}"[:40]
        return _Written(p, arc, pkl, serialization_id, {"archive": arc})

    def write(self, ck: Checkpoint, w: _Written, fd: int, buf: bytearray, tick: Ticker) -> int:
        arc = w.arc
        z = _ZipWriter(fd)
        z.add(f"{arc}/data.pkl", w.pkl)
        z.add(f"{arc}/.format_version", b"1")
        z.add(f"{arc}/.storage_alignment", str(ALIGN).encode())
        z.add(f"{arc}/byteorder", b"little")
        for s in w.p.storages:
            rec = z.begin(f"{arc}/data/{s.key}", s.nbytes)
            crc = 0
            n = 0
            for chunk in _storage_chunks(ck, s, buf):
                crc = zlib.crc32(chunk, crc)
                z.write(chunk)
                n += len(chunk)
                tick(len(chunk))
            if n != s.nbytes:
                raise CorruptFileError(f"storage for {s.key!r} yielded {n} bytes, expected {s.nbytes}", path=ck.path)
            z.end(rec, crc)
            s.crc = crc
        z.add(f"{arc}/version", b"3\n")
        z.add(f"{arc}/.data/serialization_id", w.serialization_id.encode())
        z.finish()
        return z.pos

    def verify(self, ck: Checkpoint, w: _Written, tmp: str, buf: bytearray, tick: Ticker, out: Path) -> None:
        p = w.p

        def fail(msg: str) -> CkptError:
            return verification_failed(msg, out)

        names = [e.name for e in p.entries]
        with reopen_written(tmp, out, "torch-zip", names, ordered=True) as written, open_source(tmp) as back:
            got = {t.name: t for t in written.tensors}
            records: dict[str, tuple[int, int]] = {}
            for e in p.entries:
                t = got[e.name]
                st = t.storage
                stride = t.stride if t.stride is not None else t.contiguous_stride
                if (
                    st is None
                    or st.source is None
                    or t.dtype != e.t.dtype
                    or t.shape != e.t.shape
                    or stride != e.stride
                    or t.storage_offset != e.offset
                    or st.key != e.storage.key
                    or st.source.nbytes != e.storage.nbytes
                    or t.is_parameter != e.t.is_parameter
                ):
                    raise fail(f"tensor {e.name!r} does not read back as planned")
                records[st.key] = (st.source.offset, st.source.nbytes)
            mv = memoryview(buf)
            for s in p.storages:
                off, n = records[s.key]
                crc = 0
                done = 0
                while done < n:
                    k = min(len(buf), n - done)
                    back.read_into(off + done, mv[:k])
                    crc = zlib.crc32(mv[:k], crc)
                    done += k
                    tick(k)
                if crc != s.crc:
                    raise fail(f"storage record data/{s.key} differs from the source bytes (CRC-32 mismatch)")


WRITER = TorchZipWriter()


def export_pth(
    ck: Checkpoint,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    verify: bool = True,
    names: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write ``ck``'s tensors (or those in ``names``, renamed) as a torch zip-format ``.pth`` file.

    Torch-free, streamed (one 1 MB buffer), atomic (an existing ``out`` needs ``force``) and bit-exact
    checked unless ``verify=False``. ``progress(done, total)`` counts bytes written and, when verifying,
    bytes re-read (``total`` is twice the storage bytes then).
    """
    return export(WRITER, ck, out, force=force, verify=verify, names=names, progress=progress)
