"""The one writer driver: select -> plan -> write -> fsync -> verify -> rename, for every tensor writer.

A :class:`Writer` (safetensors, torch zip, ...) supplies three steps: ``plan`` (names, dtypes, shapes,
offsets, from the Checkpoint alone), ``write`` (stream each tensor's bytes from the checkpoint's one byte
path into the output) and ``verify`` (read the temporary output back with ckptool's own reader and compare
it with the source, before anything is renamed into place). :func:`export` runs them inside
:func:`~ckptool.convert.atomic.atomic_output`; the writers are registered in :data:`ckptool.convert.WRITERS`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import dtypes
from ..checkpoint import Checkpoint, TensorInfo
from ..errors import CkptError, CorruptFileError, KeyNotFoundError, UsageError
from ..sources import CHUNK, Source, open_source
from .atomic import atomic_output, background_fsync, write_all

Progress = Callable[[int, int], None]


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
    files: list[str] = field(default_factory=list)  # a sharded output: the files written in ``out`` (index last)

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
            **({"files": self.files} if self.files else {}),
        }


class Plan(Protocol):
    tensors: int  # tensor records in the output
    data_bytes: int  # bytes of tensor data the writer will stream (progress counts them)
    metadata: dict[str, str]  # what ExportResult.metadata reports


class Writer(Protocol):
    """One output format: the three steps :func:`export` runs."""

    format: str  # its one name: "safetensors", "torch-zip"
    verify_method: str  # what ``verify`` checks, in words (ExportResult.verify_method)

    def plan(
        self, ck: Checkpoint, pairs: list[tuple[str, TensorInfo]], out: Path, metadata: dict[str, str] | None
    ) -> Any:
        """Everything about the output decided from the Checkpoint alone; raises UsageError for what cannot be
        written (before any file exists)."""

    def write(self, ck: Checkpoint, plan: Any, fd: int, buf: bytearray, tick: Ticker) -> int:
        """Write the file at ``fd`` (positioned at 0); returns its size in bytes."""

    def verify(self, ck: Checkpoint, plan: Any, tmp: str, buf: bytearray, tick: Ticker, out: Path) -> None:
        """Re-read the written temporary file ``tmp``; raise :func:`verification_failed` on any difference."""


def export(
    writer: Writer,
    ck: Checkpoint,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    verify: bool = True,
    names: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """select -> plan -> write -> fsync -> verify -> rename: the skeleton every tensor writer shares."""
    t0 = time.perf_counter()
    pairs = select(ck, names)
    out_path = Path(os.fspath(out))
    plan = writer.plan(ck, pairs, out_path, metadata)
    tick = Ticker(progress, plan.data_bytes * (2 if verify else 1))
    buf = bytearray(CHUNK)
    with atomic_output(out_path, force=force, protect=source_files(ck)) as fh:
        try:
            file_bytes = writer.write(ck, plan, fh.fileno(), buf, tick)
        except OSError as e:
            raise CkptError(f"cannot write ({e.strerror or e})", path=os.fspath(out_path)) from None
        crc_notes = []
        if verify:
            with background_fsync(fh.fileno()):
                writer.verify(ck, plan, fh.name, buf, tick, out_path)
            # a record read only in part (a view, a slice) had its CRC-32 skipped: stream it whole now, before
            # anything is called bit-exact (a damaged record raises, naming it, and nothing is published)
            checked = ck.verify_crcs()
            if checked:
                crc_notes.append(f"checked the CRC-32 of {len(checked)} zip records read only in part")
        elif unchecked := ck.crc_unverified([t for _, t in pairs]):
            crc_notes.append(
                f"the CRC-32 of {len(unchecked)} zip records was not checked (--no-verify copies bytes as they are): "
                + ", ".join(unchecked[:3])
                + (" ..." if len(unchecked) > 3 else "")
            )
    return ExportResult(
        out=str(out_path),
        format=writer.format,
        source=ck.path,
        source_format=ck.format,
        state_dict_key=ck.state_dict_key,
        tensors=plan.tensors,
        bytes=plan.data_bytes,
        file_bytes=file_bytes,
        verified=verify,
        verify_method=writer.verify_method if verify else None,
        skipped=len(ck.tensors) - len(pairs),
        shared=shared_groups(pairs),
        metadata=plan.metadata,
        seconds=time.perf_counter() - t0,
        notes=skipped_notes(ck, names) + crc_notes,
    )


# -- select -----------------------------------------------------------------------------------------------


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
    if names is None:  # everything: tensors no writer can hold are left out (export says which, and why)
        pairs = [(n, t) for n, t in pairs if not_convertible(t) is None]
        if not pairs:
            whys = "; ".join(f"{t.name}: {not_convertible(t)}" for t in ck.tensors[:3])
            raise UsageError(f"nothing to write: no tensor can be converted ({whys})", path=ck.path)
    for _out_name, t in pairs:
        if t.storage is None:
            raise CorruptFileError(f"tensor {t.name!r} has no data in the file", path=ck.path)
        why = not_convertible(t)
        if why:
            raise UsageError(f"tensor {t.name!r} cannot be converted: {why}", path=ck.path)
    return pairs


def not_convertible(t: TensorInfo) -> str | None:
    """Why no writer can hold this tensor as torch.load returns it, or None."""
    dt = dtypes.lookup(t.dtype)
    if dt.name.startswith(("qint", "quint")):
        return (
            f"quantized ({dt.name}): safetensors and ckptool's .pth writer keep no scale or zero point, so its "
            "values would not be torch's"
        )
    return None


def skipped_notes(ck: Checkpoint, names: dict[str, str] | None) -> list[str]:
    """What an export of everything leaves out, one note per tensor (and per entry the reader could not list)."""
    if names is not None:
        return []
    out = [f"skipped {t.name!r}: {why}" for t in ck.tensors if (why := not_convertible(t))]
    out += [f"skipped {k!r}: {why}" for k, why in ck.unlisted.items()]
    return out


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


# -- write ------------------------------------------------------------------------------------------------


def copy_range(src: Source, offset: int, nbytes: int, out_fd: int, buf: bytearray, progress: Any = None) -> None:
    """Append ``nbytes`` of ``src`` from ``offset`` to ``out_fd`` at its current position, through ``buf``.

    A plain ``readinto`` + ``write`` loop. ``os.copy_file_range`` was measured too (ext4, 553 MB from the
    page cache): the in-kernel copy took longer (0.25 s against 0.20 s with a 1 MB buffer) and left more
    for the following fsync (0.20 s against 0.15 s); and reflinks cannot apply to tensor ranges that do not
    start on a block boundary. ``progress(n)`` is called with each copied byte count.
    """
    mv = memoryview(buf)
    done = 0
    while done < nbytes:
        k = min(len(buf), nbytes - done)
        src.read_into(offset + done, mv[:k])
        write_all(out_fd, mv[:k])
        done += k
        if progress is not None:
            progress(k)


# -- verify -----------------------------------------------------------------------------------------------


def verification_failed(msg: str, out: str | os.PathLike[str]) -> CkptError:
    """The error a writer raises when its bit-exact check finds the output wrong (nothing is published)."""
    return CkptError(f"verification failed: {msg}; nothing was written", path=os.fspath(out))


def reopen_written(
    tmp: str, out: str | os.PathLike[str], fmt: str, names: Iterable[str], *, ordered: bool
) -> Checkpoint:
    """Read a writer's temporary output back with ckptool's own reader and check that it is a ``fmt`` file
    listing exactly ``names`` (in order, when ``ordered``). The caller closes the returned Checkpoint."""
    from ..formats import open_checkpoint

    try:
        written = open_checkpoint(tmp)
    except CkptError as e:
        raise verification_failed(f"the written file does not read back ({e.message})", out) from None
    listed, expect = [t.name for t in written.tensors], list(names)
    if written.format != fmt or (listed != expect if ordered else set(listed) != set(expect)):
        written.close()
        raise verification_failed("the written file does not list the planned tensors", out)
    return written


def compare_stream(
    ck: Checkpoint, t: TensorInfo, buf: bytearray, out: Source, out_offset: int, tick: Ticker, scratch: bytearray
) -> int | None:
    """Compare the tensor's bytes (read again from the source, through the one chunk iterator) with ``out``
    from ``out_offset``. Returns None when equal, else the first differing byte's offset inside the tensor.
    ``scratch`` is a reusable buffer of ``CHUNK`` bytes for the output side."""
    pos = 0
    for chunk in ck.iter_chunks(t, len(buf), buf=buf):
        mv = memoryview(chunk).cast("B")
        for i in range(0, len(mv), CHUNK):
            part = mv[i : i + CHUNK]
            k = len(part)
            got = scratch if k == len(scratch) else bytearray(k)
            out.read_into(out_offset + pos, memoryview(got))
            if got != part:  # bytearray == buffer is a memcmp
                j = next(x for x in range(k) if got[x] != part[x])
                return pos + j
            pos += k
            tick(k)
    if pos != t.nbytes:
        raise CorruptFileError(f"tensor {t.name!r}: the source yielded {pos} bytes, expected {t.nbytes}", path=ck.path)
    return None


__all__ = [
    "ExportResult", "Plan", "Progress", "Ticker", "Writer", "compare_stream", "copy_range", "export",
    "open_source", "reopen_written", "select", "shared_groups", "source_files", "storage_id", "verification_failed",
]  # fmt: skip
