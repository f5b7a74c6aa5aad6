"""safetensors writer: streamed, bit-exact, atomic, torch-free.

The header (names, dtypes, shapes, offsets) is planned from the Checkpoint alone; then each tensor's bytes
are copied from the source in output order. Contiguous little-endian bytes go file to file through one
reusable 1 MB buffer (``readinto`` + ``write``, never a memory map); views, storage
offsets, non-contiguous strides, big-endian legacy files, compressed zip records and ONNX typed fields go
through :meth:`Checkpoint.iter_chunks`, which yields exactly the tensor's own elements, C-contiguous and
little-endian. Tensors that share a storage are each written in full (safetensors has no aliasing); the
groups are reported in :attr:`ExportResult.shared`.

The bit-exact check (on by default) runs before the file is renamed into place: the written file is
parsed again by ckptool's strict safetensors reader (names, dtypes, shapes, contiguous offsets), and every
tensor's bytes in it are compared with the source tensor's bytes, read again from the source (a plain
``memcmp``, no hashing). Both reads come from the page cache, so the check costs about one memory pass
over each file and no extra resident memory.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, dtypes
from ..checkpoint import Checkpoint, TensorInfo
from ..errors import CkptError, CorruptFileError, KeyNotFoundError, UsageError
from ..io import (
    CHUNK,
    SourceReader,
    atomic_output,
    background_fsync,
    copy_range,
    iter_tensor_bytes,
    raw_location,
    reopen_written,
    verification_failed,
    write_all,
)

Progress = Callable[[int, int], None]
MAX_HEADER = 100_000_000  # the reference implementation's limit


@dataclass
class ExportResult:
    """What a writer did. ``bytes`` counts tensor data; ``file_bytes`` the whole output file."""

    out: str
    format: str  # "safetensors" | "torch-zip"
    source: str
    source_format: str
    state_dict_key: str | None
    tensors: int
    bytes: int
    file_bytes: int
    verified: bool
    verify_method: str | None
    skipped: int = 0  # source tensors left out by ``names``
    shared: list[list[str]] = field(default_factory=list)  # output names whose source tensors share a storage
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        check = "bit-exact" if self.verified else "not verified"
        return f"<ExportResult {os.path.basename(self.out)} ({self.format}): {self.tensors} tensors, {check}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "format": self.format,
            "source": self.source,
            "source_format": self.source_format,
            "state_dict_key": self.state_dict_key,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "file_bytes": self.file_bytes,
            "verified": self.verified,
            "verify_method": self.verify_method,
            "skipped": self.skipped,
            "shared": self.shared,
            "metadata": self.metadata,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }


# -- shared by both writers -------------------------------------------------------------------------------


def select(ck: Checkpoint, names: dict[str, str] | None) -> list[tuple[str, TensorInfo]]:
    """(output name, tensor) pairs in source order. ``names`` maps source name -> output name; tensors not
    in it are skipped. Raises on unknown source names, duplicate output names, or an empty selection."""
    by_name: dict[str, TensorInfo] = {}
    for t in ck.tensors:
        if t.name in by_name:
            raise CorruptFileError(f"two tensors are named {t.name!r}; cannot write both", path=ck.path)
        by_name[t.name] = t
    if names is None:
        pairs = [(t.name, t) for t in ck.tensors]
    else:
        missing = [k for k in names if k not in by_name]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise KeyNotFoundError(f"no tensor named {shown}", path=ck.path)
        pairs = [(names[t.name], t) for t in ck.tensors if t.name in names]
    seen: set[str] = set()
    for out_name, _t in pairs:
        if not isinstance(out_name, str) or not out_name:
            raise UsageError(f"output tensor name {out_name!r} is not a non-empty string")
        if out_name in seen:
            raise UsageError(f"two tensors would both be written as {out_name!r}")
        seen.add(out_name)
    if not pairs:
        raise UsageError("nothing to write: the selection holds no tensors", path=ck.path)
    for _out_name, t in pairs:
        if t.storage is None:
            raise CorruptFileError(f"tensor {t.name!r} has no data in the file", path=ck.path)
        dt = dtypes.lookup(t.dtype)
        if dt.name.startswith(("qint", "quint")):
            raise UsageError(
                f"tensor {t.name!r} is quantized ({dt.name}); ckptool does not convert quantized tensors", path=ck.path
            )
    return pairs


def storage_id(t: TensorInfo) -> tuple[Any, ...]:
    st = t.storage
    assert st is not None
    src = st.source
    return (st.key,) if src is None else (src.path, src.offset, st.key)


def shared_groups(pairs: list[tuple[str, TensorInfo]]) -> list[list[str]]:
    groups: dict[tuple[Any, ...], list[str]] = {}
    for out_name, t in pairs:
        groups.setdefault(storage_id(t), []).append(out_name)
    return [g for g in groups.values() if len(g) > 1]


def source_files(ck: Checkpoint) -> set[str]:
    """Every file the checkpoint's bytes come from (the inputs a writer must never overwrite)."""
    files = {ck.path}
    for t in ck.tensors:
        if t.storage is not None and t.storage.source is not None:
            files.add(t.storage.source.path)
    return files


class Ticker:
    """Adapts byte counts to the public ``progress(done, total)`` callback."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None:
            progress(0, total)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def wrap_write_error(e: OSError, out: str | os.PathLike[str]) -> CkptError:
    return CkptError(f"cannot write ({e.strerror or e})", path=os.fspath(out))


def compare_stream(
    ck: Checkpoint,
    t: TensorInfo,
    reader: SourceReader,
    buf: bytearray,
    out_path: str,
    out_offset: int,
    tick: Ticker,
    scratch: bytearray,
) -> int | None:
    """Compare the tensor's bytes (read again from the source) with ``out_path`` from ``out_offset``.

    Returns None when equal, else the first differing byte's offset inside the tensor. ``scratch`` is a
    reusable buffer of ``CHUNK`` bytes for the output side.
    """
    pos = 0
    for chunk in iter_tensor_bytes(ck, t, reader, buf):
        mv = memoryview(chunk).cast("B")
        for i in range(0, len(mv), CHUNK):
            part = mv[i : i + CHUNK]
            k = len(part)
            got = scratch if k == len(scratch) else bytearray(k)
            reader.read_into(out_path, out_offset + pos, memoryview(got))
            if got != part:  # bytearray == buffer is a memcmp
                j = next(x for x in range(k) if got[x] != part[x])
                return pos + j
            pos += k
            tick(k)
    if pos != t.nbytes:
        raise CorruptFileError(f"tensor {t.name!r}: the source yielded {pos} bytes, expected {t.nbytes}", path=ck.path)
    return None


# -- safetensors ----------------------------------------------------------------------------------------------


def _metadata(ck: Checkpoint, extra: dict[str, str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    if ck.format == "safetensors":  # keep what the source said about itself
        src_meta = ck.metadata.get("__metadata__") or {}
        meta.update({k: v for k, v in src_meta.items() if isinstance(k, str) and isinstance(v, str)})
    meta.update(
        {
            "format": "pt",
            "source": os.path.basename(ck.path),
            "source_format": ck.format,
            "converted_by": f"ckptool {__version__}",
        }
    )
    if ck.state_dict_key:
        meta["source_state_dict_key"] = ck.state_dict_key
    for k, v in (extra or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise UsageError(f"safetensors metadata must map strings to strings, got {k!r}: {v!r}")
        meta[k] = v
    return meta


def plan_header(
    pairs: list[tuple[str, TensorInfo]], meta: dict[str, str]
) -> tuple[bytes, list[tuple[str, TensorInfo, int]]]:
    """(the 8-byte length + JSON header, padded to 8 bytes; [(name, tensor, data offset)] in file order).

    Tensors are ordered by element size (largest first), then name, as the reference implementation
    does, so every tensor starts at a multiple of its element size.
    """
    order = sorted(pairs, key=lambda p: (-p[1].itemsize, p[0]))
    header: dict[str, Any] = {"__metadata__": meta}
    layout: list[tuple[str, TensorInfo, int]] = []
    off = 0
    for name, t in order:
        code = dtypes.lookup(t.dtype).safetensors
        if code is None:
            raise UsageError(
                f"tensor {t.name!r} is {t.dtype}, which safetensors cannot store",
                hint="export it with --pth instead, or convert the dtype first",
            )
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        layout.append((name, t, off))
        off += t.nbytes
    if "__metadata__" in {name for name, _ in pairs}:
        raise UsageError("a tensor named '__metadata__' cannot be stored in safetensors", hint="rename it")
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"a tensor name is not valid Unicode ({e.reason}); safetensors needs UTF-8 names") from None
    text += b" " * (-len(text) % 8)
    if len(text) > MAX_HEADER:
        raise UsageError(f"the safetensors header would be {len(text)} bytes, over the 100 MB limit")
    return struct.pack("<Q", len(text)) + text, layout


def export_safetensors(
    ck: Checkpoint,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    verify: bool = True,
    names: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write ``ck``'s tensors (or those in ``names``, renamed) to ``out`` as safetensors.

    Streamed (a few 1 MB buffers of tensor data in memory at most), torch-free, atomic (see
    :func:`ckptool.io.atomic_output`; an existing ``out`` needs ``force``), and bit-exact-checked unless
    ``verify=False``. ``metadata`` is added to the header's ``__metadata__`` after ckptool's own entries
    (``format: pt``, ``source``, ``source_format``, ``source_state_dict_key``, ``converted_by``).
    ``progress(done, total)`` is called as bytes are written and (when verifying) compared; ``total`` is
    the tensor bytes, twice when verifying.
    """
    t0 = time.perf_counter()
    pairs = select(ck, names)
    meta = _metadata(ck, metadata)
    head, layout = plan_header(pairs, meta)
    data_bytes = sum(t.nbytes for _, t, _ in layout)
    tick = Ticker(progress, data_bytes * (2 if verify else 1))
    buf = bytearray(CHUNK)
    out_path = Path(os.fspath(out))
    with SourceReader() as reader, atomic_output(out_path, force=force, protect=source_files(ck)) as fh:
        fd = fh.fileno()
        try:
            write_all(fd, head)
            for name, t, _off in layout:
                loc = raw_location(ck, t)
                if loc is not None:
                    copy_range(reader, loc[0], loc[1], t.nbytes, fd, buf, progress=tick)
                    continue
                n = 0
                for chunk in ck.iter_chunks(t, CHUNK):
                    n += write_all(fd, chunk)
                    tick(len(chunk))
                if n != t.nbytes:
                    raise CorruptFileError(
                        f"tensor {t.name!r} yielded {n} bytes, expected {t.nbytes} ({name})", path=ck.path
                    )
        except OSError as e:
            if isinstance(e, CkptError):  # pragma: no cover
                raise
            raise wrap_write_error(e, out_path) from None
        if verify:
            with background_fsync(fd):
                _verify(ck, fh.name, layout, reader, buf, tick, len(head), out_path)
    return ExportResult(
        out=str(out_path),
        format="safetensors",
        source=ck.path,
        source_format=ck.format,
        state_dict_key=ck.state_dict_key,
        tensors=len(layout),
        bytes=data_bytes,
        file_bytes=len(head) + data_bytes,
        verified=verify,
        verify_method="re-parsed the written header; compared every tensor's bytes with the source" if verify else None,
        skipped=len(ck.tensors) - len(pairs),
        shared=shared_groups(pairs),
        metadata=meta,
        seconds=time.perf_counter() - t0,
    )


def _verify(
    ck: Checkpoint,
    tmp: str,
    layout: list[tuple[str, TensorInfo, int]],
    reader: SourceReader,
    buf: bytearray,
    tick: Ticker,
    head_len: int,
    out: Path,
) -> None:
    def fail(msg: str) -> CkptError:
        return verification_failed(msg, out)

    with reopen_written(tmp, out, "safetensors", [n for n, _, _ in layout], ordered=False) as written:
        got = {t.name: t for t in written.tensors}
        scratch = bytearray(CHUNK)
        for name, t, off in layout:
            w = got[name]
            if w.dtype != t.dtype or w.shape != t.shape or w.storage is None or w.storage.source is None:
                raise fail(f"tensor {name!r} has the wrong dtype or shape in the output")
            start = w.storage.source.offset
            if start != head_len + off:
                raise fail(f"tensor {name!r} is not where it was written")
            bad = compare_stream(ck, t, reader, buf, tmp, start, tick, scratch)
            if bad is not None:
                raise fail(f"tensor {name!r} differs from the source at byte {bad} (is the source being modified?)")
