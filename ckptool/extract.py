"""Extract a sub-state-dict under a prefix: the article's partial model (``model.features`` as a frozen
feature extractor), written as safetensors or a torch ``.pth``, streamed and atomic (torch-free for
safetensors).

The prefix is stripped by default, so the output loads straight into the sub-module::

    vgg.features.load_state_dict(load_file("features.safetensors"))

A wrapper prefix (``module.`` from DataParallel, ``model.`` from Lightning, ``_orig_mod.`` from
torch.compile) is detected and removed before ``--prefix`` is matched, and nested training checkpoints
use the reader's state_dict location (or ``key``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import Checkpoint
from .errors import KeyNotFoundError, UsageError


@dataclass
class ExtractResult:
    """What :func:`extract` wrote: ``names`` maps each source tensor to its name in the output. ``to_dict()`` is the ``--json`` output."""

    source: str
    output: str
    format: str  # the writer's one name: "safetensors" | "torch-zip"
    prefix: str  # as matched, without the trailing dot
    keep_prefix: bool
    wrapper_prefix: str | None  # "module." etc., removed before matching
    state_dict_key: str | None
    names: dict[str, str]  # source tensor name -> name in the output, in file order
    tensors: int
    total_bytes: int
    tensors_in_source: int
    verified: bool  # the writer re-read the output and compared every tensor's bytes with the source
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<ExtractResult {self.prefix} -> {os.path.basename(self.output)}: {self.tensors} tensors, {self.total_bytes:,} bytes>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "format": self.format,
            "prefix": self.prefix,
            "keep_prefix": self.keep_prefix,
            "wrapper_prefix": self.wrapper_prefix,
            "state_dict_key": self.state_dict_key,
            "tensors": self.tensors,
            "total_bytes": self.total_bytes,
            "tensors_in_source": self.tensors_in_source,
            "verified": self.verified,
            "names": self.names,
            "notes": self.notes,
        }


def output_format(out: str | os.PathLike[str]) -> str:
    """The writer's one name ("safetensors" or "torch-zip"), from the output's extension (the writer registry
    decides)."""
    from .convert import format_for_output

    return format_for_output(out)


def _wrapper_prefix(names: list[str]) -> str | None:
    """``module.`` / ``model.`` / ``_orig_mod.`` (stacked too) carried by most keys: check's own detection."""
    from .compat import known_prefix

    return known_prefix(names) or None


def _top_level(names: list[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        head = n.split(".", 1)[0] if "." in n else n
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{k} ({v} tensors)" for k, v in counts.items())


def plan(ck: Checkpoint, prefix: str, *, keep_prefix: bool = False) -> tuple[dict[str, str], str, str | None]:
    """Which tensors to write and under which names: ``({source name: output name}, prefix, wrapper)``.

    The wrapper prefix (``module.`` ...) is removed first; ``prefix`` is then matched at a dot boundary,
    so ``features.1`` takes ``features.1.weight`` but never ``features.10.weight``. A prefix that
    includes the wrapper (``module.features``) works too, and so does the wrapper itself (``model`` on Hugging
    Face keys that all start with ``model.``: everything under it, ``lm_head.weight`` left out).
    """
    pre = prefix.strip().rstrip(".")
    if not pre:
        raise UsageError("--prefix is empty", hint="e.g. --prefix features")
    names = ck.names()
    dot = pre + "."
    wrapper = _wrapper_prefix(names)
    bare = {n: (n[len(wrapper) :] if wrapper and n.startswith(wrapper) else n) for n in names}
    picked = {n: b for n, b in bare.items() if b.startswith(dot)}
    if not picked and wrapper and pre.startswith(wrapper):  # --prefix module.features on a DataParallel file
        inner = pre[len(wrapper) :] + "."
        picked = {n: b for n, b in bare.items() if b.startswith(inner)}
        pre, dot = inner.rstrip("."), inner
    if not picked and wrapper:  # the wrapper itself: ``model`` on Hugging Face keys that all start with ``model.``
        raw = [n for n in names if n.startswith(dot)]
        if raw:
            return {n: (n if keep_prefix else n[len(dot) :]) for n in raw}, pre, None
    if not picked:
        where = f" (after removing the {wrapper!r} prefix)" if wrapper else ""
        raise KeyNotFoundError(
            f"no tensor under {pre!r}{where}",
            path=ck.path,
            hint=f"top-level names here: {_top_level(list(bare.values()))}" if bare else "the file has no tensors",
        )
    mapping = {n: (b if keep_prefix else b[len(dot) :]) for n, b in picked.items()}
    return mapping, pre, wrapper


def extract(
    path: str | os.PathLike[str],
    prefix: str,
    out: str | os.PathLike[str],
    *,
    keep_prefix: bool = False,
    force: bool = False,
    key: str | None = None,
    max_shard_size: int | str | None = None,
) -> ExtractResult:
    """Write the tensors under ``prefix`` of ``path`` to ``out`` (.safetensors or .pth), streamed and atomic.
    With ``max_shard_size`` (or an existing folder ``out``), ``out`` is a folder of Hugging Face safetensors
    shards plus their index (:func:`ckptool.convert.sharded.export_sharded`)."""
    from .formats import open_checkpoint

    src, dst = os.fspath(path), os.fspath(out)
    sharded = max_shard_size is not None or os.path.isdir(dst)
    fmt = "safetensors" if sharded else output_format(dst)
    ck = open_checkpoint(src, key=key)
    try:
        mapping, pre, wrapper = plan(ck, prefix, keep_prefix=keep_prefix)
        meta = {"ckptool.extract.prefix": pre, "ckptool.extract.keep_prefix": str(keep_prefix).lower()}
        from .convert import writer
        from .convert.driver import export

        if sharded:
            from .convert.sharded import DEFAULT_MAX_SHARD_SIZE, export_sharded

            res = export_sharded(
                ck,
                dst,
                max_shard_size=max_shard_size or DEFAULT_MAX_SHARD_SIZE,
                names=mapping,
                force=force,
                metadata=meta,
            )
        else:
            w = writer(fmt)
            res = export(w, ck, dst, names=mapping, force=force, metadata=meta if w.format == "safetensors" else None)
        notes = list(res.notes)
        if res.files:
            notes.insert(0, f"the folder holds {', '.join(res.files)}")
        if wrapper:
            notes.insert(0, f"removed the {wrapper!r} prefix of every key before matching {pre!r}")
        return ExtractResult(
            src,
            res.out,
            fmt,
            pre,
            keep_prefix,
            wrapper,
            ck.state_dict_key,
            mapping,
            res.tensors,
            res.bytes,
            len(ck),
            res.verified,
            notes,
        )
    finally:
        ck.close()
