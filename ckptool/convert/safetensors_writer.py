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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, dtypes
from ..checkpoint import Checkpoint, TensorInfo
from ..errors import CkptError, CorruptFileError, UsageError
from ..sources import open_source
from .atomic import write_all
from .driver import (
    ExportResult,
    Progress,
    Ticker,
    compare_stream,
    copy_range,
    export,
    reopen_written,
    verification_failed,
)

MAX_HEADER = 100_000_000  # the reference implementation's limit (the reader's: formats.safetensors.MAX_HEADER)

__all__ = ["WRITER", "ExportResult", "export_safetensors", "plan_header"]


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


@dataclass
class _Plan:
    head: bytes
    layout: list[tuple[str, TensorInfo, int]]
    metadata: dict[str, str]

    @property
    def tensors(self) -> int:
        return len(self.layout)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for _, t, _ in self.layout)


class SafetensorsWriter:
    format = "safetensors"
    verify_method = "re-parsed the written header; compared every tensor's bytes with the source"

    def plan(
        self, ck: Checkpoint, pairs: list[tuple[str, TensorInfo]], out: Path, metadata: dict[str, str] | None
    ) -> _Plan:
        meta = _metadata(ck, metadata)
        head, layout = plan_header(pairs, meta)
        return _Plan(head, layout, meta)

    def write(self, ck: Checkpoint, plan: _Plan, fd: int, buf: bytearray, tick: Ticker) -> int:
        write_all(fd, plan.head)
        for name, t, _off in plan.layout:
            loc = ck.raw_range(t)
            if loc is not None:
                copy_range(ck.source(loc[0]), loc[1], t.nbytes, fd, buf, progress=tick)
                continue
            n = 0
            for chunk in ck.iter_chunks(t, len(buf), buf=buf):
                n += write_all(fd, chunk)
                tick(len(chunk))
            if n != t.nbytes:
                raise CorruptFileError(
                    f"tensor {t.name!r} yielded {n} bytes, expected {t.nbytes} ({name})", path=ck.path
                )
        return len(plan.head) + plan.data_bytes

    def verify(self, ck: Checkpoint, plan: _Plan, tmp: str, buf: bytearray, tick: Ticker, out: Path) -> None:
        def fail(msg: str) -> CkptError:
            return verification_failed(msg, out)

        names = [n for n, _, _ in plan.layout]
        with reopen_written(tmp, out, "safetensors", names, ordered=False) as written, open_source(tmp) as back:
            got = {t.name: t for t in written.tensors}
            scratch = bytearray(len(buf))
            for name, t, off in plan.layout:
                w = got[name]
                if w.dtype != t.dtype or w.shape != t.shape or w.storage is None or w.storage.source is None:
                    raise fail(f"tensor {name!r} has the wrong dtype or shape in the output")
                start = w.storage.source.offset
                if start != len(plan.head) + off:
                    raise fail(f"tensor {name!r} is not where it was written")
                bad = compare_stream(ck, t, buf, back, start, tick, scratch)
                if bad is not None:
                    raise fail(f"tensor {name!r} differs from the source at byte {bad} (is the source being modified?)")


WRITER = SafetensorsWriter()


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
    :func:`ckptool.convert.atomic.atomic_output`; an existing ``out`` needs ``force``), and bit-exact-checked
    unless ``verify=False``. ``metadata`` is added to the header's ``__metadata__`` after ckptool's own entries
    (``format: pt``, ``source``, ``source_format``, ``source_state_dict_key``, ``converted_by``).
    ``progress(done, total)`` is called as bytes are written and (when verifying) compared; ``total`` is
    the tensor bytes, twice when verifying.
    """
    return export(WRITER, ck, out, force=force, verify=verify, names=names, metadata=metadata, progress=progress)
