"""Sharded safetensors output: Hugging Face's layout and naming, streamed, bit-exact, all files or none.

``export --safetensors OUT_DIR --max-shard-size 5GB`` (and ``extract``) write what
``huggingface_hub.save_torch_state_dict`` writes:

- ``model-00001-of-0000N.safetensors`` ... and ``model.safetensors.index.json``
  (``{"metadata": {"total_size": N, ...}, "weight_map": {name: shard}}``, two-space indented), or one
  ``model.safetensors`` and no index when everything fits in one shard;
- shards filled as ``split_state_dict_into_shards_factory`` fills them: tensors in state_dict order, a new
  shard when the next tensor would tip the current one over the limit, a tensor larger than the limit in a
  shard of its own (placed when it is met, before the shard being filled);
- tensors that share storage as ``_remove_duplicate_names`` (safetensors' and the HF convert script's rule)
  handles them: of a group of tensors that are the *same* view of one storage (tied embeddings), the first
  name in sorted order is kept and the others are dropped, and the index metadata maps each dropped name to
  the kept one (``"lm_head.weight": "model.embed_tokens.weight"`` style, as HF records it). Tensors that
  share a storage but are different views (a slice of another) are each written in full, as the one-file
  writer does: nothing is lost, and the note says so.

Each shard is written by the one-file safetensors writer (:mod:`.safetensors_writer`: streamed through one
1 MB buffer, so memory is bounded by the buffer, not by a tensor or the model) into a temporary folder and
verified bit-exact against the source; then :func:`~ckptool.convert.atomic.atomic_outputs` renames every shard
and, last, the index into place: either the whole set appears, or nothing does (a crash between renames can
leave shards without their index, never an index naming a missing shard). An existing file of the set is
refused without ``force``; with ``force``, shards of an earlier export under the same pattern that the new
set does not overwrite are removed after it is in place (as ``save_torch_state_dict`` removes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, TensorInfo
from ..errors import CkptError, OutputExistsError, UsageError
from ..sources import CHUNK
from .atomic import atomic_outputs, write_all
from .driver import ExportResult, Progress, Ticker, select, source_files

PATTERN = "model{suffix}.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.I)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5,000,000,000 (decimal units, as huggingface_hub's ``parse_size_to_int``; ``GiB`` binary)."""
    if isinstance(text, int):
        n = text
    else:
        m = _SIZE.match(text)
        unit = m.group(2).upper() if m else ""
        if m is None or unit not in _UNITS:
            raise UsageError(f"--max-shard-size {text!r} is not a size", hint="e.g. 5GB, 500MB, 2GiB or a byte count")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise UsageError(f"--max-shard-size {text!r} must be positive")
    return n


def _alias_key(t: TensorInfo) -> tuple[Any, ...] | None:
    st = t.storage
    if st is None or st.source is None:
        return None
    stride = t.stride if t.stride is not None else t.contiguous_stride
    return (st.source.path, st.source.offset, st.key, t.dtype, t.shape, stride, t.storage_offset)


def dedupe_aliases(pairs: list[tuple[str, TensorInfo]]) -> tuple[list[tuple[str, TensorInfo]], dict[str, str]]:
    """Drop the tensors that are the very same view of one storage as another (tied embeddings), keeping the
    first name in sorted order, as HF's ``_remove_duplicate_names`` does. Returns (pairs kept, in their order;
    {dropped name: kept name})."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, t in pairs:
        key = _alias_key(t)
        if key is not None:
            groups.setdefault(key, []).append(name)
    dropped: dict[str, str] = {}
    for names in groups.values():
        if len(names) > 1:
            keep = sorted(names)[0]
            for n in sorted(names):
                if n != keep:
                    dropped[n] = keep
    return [(n, t) for n, t in pairs if n not in dropped], dropped


def plan_shards(pairs: list[tuple[str, TensorInfo]], max_shard_size: int) -> list[list[tuple[str, TensorInfo]]]:
    """The shards, as ``split_state_dict_into_shards_factory`` fills them (see the module docstring)."""
    shards: list[list[tuple[str, TensorInfo]]] = []
    current: list[tuple[str, TensorInfo]] = []
    size = 0
    for name, t in pairs:
        n = t.nbytes
        if n > max_shard_size:
            shards.append([(name, t)])
            continue
        if size + n > max_shard_size and current:
            shards.append(current)
            current, size = [], 0
        current.append((name, t))
        size += n
    if current:
        shards.append(current)
    return shards


def shard_names(count: int, pattern: str = PATTERN) -> list[str]:
    if count == 1:
        return [pattern.format(suffix="")]
    return [pattern.format(suffix=f"-{i + 1:05d}-of-{count:05d}") for i in range(count)]


def index_name(pattern: str = PATTERN) -> str:
    return pattern.format(suffix="") + ".index.json"


@dataclass
class ShardedPlan:
    files: list[str]  # shard file names, in order
    shards: list[list[tuple[str, TensorInfo]]]
    dropped: dict[str, str] = field(default_factory=dict)
    index: str | None = None  # the index file name; None for one shard
    total_size: int = 0
    notes: list[str] = field(default_factory=list)


def plan(
    ck: Checkpoint, pairs: list[tuple[str, TensorInfo]], max_shard_size: int, pattern: str = PATTERN
) -> ShardedPlan:
    kept, dropped = dedupe_aliases(pairs)
    shards = plan_shards(kept, max_shard_size)
    files = shard_names(len(shards), pattern)
    p = ShardedPlan(files, shards, dropped, index_name(pattern) if len(shards) > 1 else None)
    p.total_size = sum(t.nbytes for _, t in kept)
    if dropped:
        shown = ", ".join(f"{d} (= {k})" for d, k in list(dropped.items())[:5]) + (" ..." if len(dropped) > 5 else "")
        p.notes.append(
            f"{len(dropped)} tensor{'s' if len(dropped) != 1 else ''} sharing storage with another dropped, as HF's "
            f"save_torch_state_dict does (the first name in sorted order is kept; "
            f"{'the index metadata' if p.index else 'the file metadata'} maps dropped -> kept): {shown}"
        )
    views = [g for g in _shared_views(kept)]
    for g in views:
        p.notes.append(f"{', '.join(g)} share one storage as different views: each is written in full")
    return p


def _shared_views(pairs: list[tuple[str, TensorInfo]]) -> Iterable[list[str]]:
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, t in pairs:
        st = t.storage
        if st is not None and st.source is not None:
            groups.setdefault((st.source.path, st.source.offset, st.key), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def export_sharded(
    ck: Checkpoint,
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    verify: bool = True,
    names: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
    pattern: str = PATTERN,
) -> ExportResult:
    """Write ``ck``'s tensors (or those in ``names``, renamed) into the folder ``out_dir`` as Hugging Face
    sharded safetensors (see the module docstring). ``metadata`` goes into each shard's ``__metadata__`` (after
    ckptool's own entries) and, for a sharded set, into the index's ``metadata`` too."""
    from .safetensors_writer import WRITER

    t0 = time.perf_counter()
    limit = parse_size(max_shard_size)
    out = Path(os.fspath(out_dir))
    if out.exists() and not out.is_dir():
        raise UsageError("is a file: --max-shard-size writes a folder of shards", path=out)
    pairs = select(ck, names)
    sp = plan(ck, pairs, limit, pattern)
    extra = dict(metadata or {})
    file_meta = dict(extra)
    if sp.index is None:  # one file: HF puts the dropped -> kept map in the file's metadata
        file_meta.update(sp.dropped)
    plans = [WRITER.plan(ck, shard, out / f, file_meta) for f, shard in zip(sp.files, sp.shards, strict=True)]
    data_bytes = sum(p.data_bytes for p in plans)
    tick = Ticker(progress, data_bytes * (2 if verify else 1))
    targets = [out / f for f in sp.files] + ([out / sp.index] if sp.index else [])
    if not force and out.is_dir():
        earlier = _matching(out, pattern)
        if earlier:
            raise OutputExistsError(
                f"holds an earlier export ({', '.join(earlier[:3])}{' ...' if len(earlier) > 3 else ''})",
                path=out,
                hint="pass --force to replace it (its stale shards are removed), or choose another folder",
            )
    created = not out.exists()
    if created:
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise CkptError(f"cannot create the folder ({e.strerror or e})", path=out) from None
    buf = bytearray(CHUNK)
    file_bytes = 0
    try:
        with atomic_outputs(targets, force=force, protect=source_files(ck)) as tmp:
            for f, p in zip(sp.files, plans, strict=True):
                fd = os.open(tmp / f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    file_bytes += WRITER.write(ck, p, fd, buf, tick)
                except OSError as e:
                    raise CkptError(f"cannot write ({e.strerror or e})", path=out / f) from None
                finally:
                    os.close(fd)
                if verify:
                    WRITER.verify(ck, p, str(tmp / f), buf, tick, out / f)
            if sp.index:
                weight_map = {name: f for f, shard in zip(sp.files, sp.shards, strict=True) for name, _ in shard}
                doc = {"metadata": {"total_size": sp.total_size, **extra, **sp.dropped}, "weight_map": weight_map}
                data = json.dumps(doc, indent=2).encode("utf-8")
                fd = os.open(tmp / sp.index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    write_all(fd, data)
                finally:
                    os.close(fd)
                file_bytes += len(data)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: nothing of ours is left
        raise
    notes = list(sp.notes)
    if force:
        notes += _remove_stale(out, set(sp.files) | {sp.index or ""}, pattern)
    return ExportResult(
        out=str(out),
        format="safetensors",
        source=ck.path,
        source_format=ck.format,
        state_dict_key=ck.state_dict_key,
        tensors=sum(p.tensors for p in plans),
        bytes=data_bytes,
        file_bytes=file_bytes,
        verified=verify,
        verify_method=WRITER.verify_method + " (every shard)" if verify else None,
        skipped=len(ck.tensors) - len(pairs),
        shared=[[d, k] for d, k in sp.dropped.items()],
        metadata=plans[0].metadata if plans else {},
        seconds=time.perf_counter() - t0,
        notes=notes,
        files=[*sp.files, *([sp.index] if sp.index else [])],
    )


def _matching(out: Path, pattern: str) -> list[str]:
    """The files in ``out`` named like a set of ``pattern`` (its shards, its one file, its index)."""
    prefix, _, suffix = pattern.partition("{suffix}")
    rx = re.compile(re.escape(prefix) + r"(-\d{5}-of-\d{5})?" + re.escape(suffix) + r"(\.index\.json)?")
    return [n for n in sorted(os.listdir(out)) if rx.fullmatch(n)]


def _remove_stale(out: Path, keep: set[str], pattern: str) -> list[str]:
    """With --force: shards and index of an earlier export under the same pattern that the new set did not
    replace (save_torch_state_dict removes them too, so that no stale shard is left beside the new index)."""
    gone = []
    for name in _matching(out, pattern):
        if name not in keep:
            with contextlib.suppress(OSError):
                os.unlink(out / name)
                gone.append(name)
    return (
        [f"removed {len(gone)} file{'s' if len(gone) != 1 else ''} of an earlier export: {', '.join(gone)}"]
        if gone
        else []
    )


__all__ = ["DEFAULT_MAX_SHARD_SIZE", "dedupe_aliases", "export_sharded", "parse_size", "plan_shards"]
