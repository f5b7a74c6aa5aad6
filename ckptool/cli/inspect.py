"""`ckptool inspect`: the article's state_dict dump, header-only and torch-free."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, Any

import typer

from .._gc import paused_gc
from ..checkpoint import Checkpoint
from ..errors import CkptError
from ..formats import open_checkpoint
from ._errors import error_object
from ._options import AllowGlobalOpt, JsonOpt, KeyOpt, TimeoutOpt
from ._output import dims, human_bytes, human_count, start

FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter", "-f", help="Only tensors whose name matches this glob (e.g. 'features.*.weight'); repeatable."
    ),
]
PlainOpt = Annotated[
    bool,
    typer.Option(
        "--plain", help="One line per tensor, exactly as `print(k, v.size())` prints it: diff against old scripts."
    ),
]


PathsArg = Annotated[
    list[str],  # not Path: a URL keeps its "//"
    typer.Argument(
        help="Checkpoints: files (.pth/.pt/.bin/.ckpt, .safetensors, .onnx), folders of shards, *.index.json. "
        "Several are listed one after the other.",
        show_default=False,
    ),
]


def inspect(
    paths: PathsArg,
    key: KeyOpt = None,
    filter: FilterOpt = None,
    plain: PlainOpt = False,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """List every tensor: name, shape, dtype, elements, bytes (and the shard, for a sharded checkpoint). Never
    imports torch, never reads tensor data."""
    o = start(json_)
    with paused_gc():  # reading, the rows and the JSON: many small objects, none in a cycle (ckptool._gc)
        _inspect(o, paths, key, filter, plain, json_)


def _inspect(o: Any, paths: list[str], key: str | None, filter: list[str] | None, plain: bool, json_: bool) -> None:
    if len(paths) == 1:  # one path: its object, or its error (exit 2) as every command reports one
        with open_checkpoint(paths[0], key=key) as ck:
            _one(o, ck, filter, plain, json_)
        return
    files: list[dict[str, Any]] = []
    first_error: dict[str, Any] | None = None
    for i, p in enumerate(paths):
        try:
            ck = open_checkpoint(p, key=key)
        except CkptError as e:
            o.error(e.render())
            first_error = first_error or error_object(type(e).__name__, e.message, e.path, e.hint)
            files.append({"path": str(p), **error_object(type(e).__name__, e.message, e.path, e.hint)})
            continue
        with ck:
            if json_:
                files.append(_one(o, ck, filter, plain, json_, emit=False))
            else:
                if i and not plain:
                    o.blank()
                _one(o, ck, filter, plain, json_)
    if json_:
        o.json({"files": files, **(first_error or {})})
    if first_error:
        raise typer.Exit(2)


def _one(
    o: Any, ck: Checkpoint, filter: list[str] | None, plain: bool, json_: bool, *, emit: bool = True
) -> dict[str, Any]:
    total = len(ck.tensors)
    if filter:
        ck.tensors = [t for t in ck.tensors if any(fnmatchcase(t.name, g) for g in filter)]
    if json_:
        d = ck.to_dict()
        if filter:
            d["filter"] = filter
            d["tensors_in_file"] = total
        if emit:
            o.json(d)
        return d
    if plain:  # one write: at 100k tensors a write per line costs more than building the lines
        if ck.tensors:
            o.raw("\n".join([f"{t.name} torch.Size({list(t.shape)})" for t in ck.tensors]))
        return {}
    headers = ["name", "shape", "dtype", "numel", "size"]
    sizes: dict[int, str] = {}  # human_bytes by byte count: an MoE model repeats a few sizes 100k times
    rows = [
        [
            t.name,
            str(list(t.shape)),
            t.dtype,
            f"{t.numel:,}",
            sizes.get(t.nbytes) or sizes.setdefault(t.nbytes, human_bytes(t.nbytes)),
        ]
        for t in ck.tensors
    ]  # str(list(shape)) is dims(shape) for a shape of ints, in C
    if ck.files:  # a sharded checkpoint: which file holds each tensor
        headers.append("shard")
        for row, t in zip(rows, ck.tensors, strict=True):
            row.append(ck.file_of(t) or "")
    o.table(headers, rows, right=(3, 4))
    o.blank()
    count = f"{len(ck.tensors)}" + (f" of {total} (filtered)" if filter else "")
    summary = [("file" if not ck.files else "checkpoint", ck.path), ("format", ck.format)]
    index = ck.metadata.get("index")
    if ck.files:
        shards = list(ck.files.values())
        named = index.get("file") if isinstance(index, dict) else None
        summary.append(
            ("shards", f"{len(shards)} ({shards[0]} ... {shards[-1]})" + (f", index {named}" if named else ""))
        )
    if ck.format == "onnx":
        summary += _onnx_summary(ck.metadata)
    else:
        summary.append(("state_dict", ck.state_dict_key if ck.state_dict_key is not None else "(root)"))
    logical = ck.total_bytes
    stored, shared = ck._storage_use()  # stored_bytes and shared_storages() in one pass
    size = f"{human_count(logical)} ({human_bytes(logical)})"
    declared = index.get("total_size") if isinstance(index, dict) else None
    if isinstance(declared, int) and not filter:
        size += " = the index's total_size" if declared == logical else f"; the index's total_size says {declared:,}"
    summary += [
        ("tensors" if ck.format != "onnx" else "initializers", count),
        ("elements", human_count(ck.total_numel)),
        ("bytes", size),
    ]
    if stored != logical:
        summary.append(("on disk", f"{human_count(stored)} ({human_bytes(stored)}) of tensor storage"))
    for group in shared:
        summary.append(("shared", f"{', '.join(group)}: one storage"))
    summary.append(("dtypes", ", ".join(f"{k} ({v})" for k, v in sorted(ck.dtype_counts.items())) or "none"))
    locs = ck.metadata.get("storage_locations")
    if locs:
        summary.append(("saved on", ", ".join(locs) + " (no GPU needed to read)"))
    meta = ck.metadata.get("__metadata__")
    if isinstance(meta, dict) and meta:
        summary.append(("metadata", f"{len(meta)} entr{'y' if len(meta) == 1 else 'ies'} (safetensors __metadata__)"))
        for k, v in meta.items():
            summary.append((f"  {k}", _short(str(v))))
    for k, v in ck.extras.items():
        summary.append((f"  {k}", v))
    for n in ck.notes:
        summary.append(("note", n))
    o.kv(summary)
    return {}


def _short(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + f"... ({len(text)} characters; --json has it all)"


def _io(items: object) -> str:
    if not isinstance(items, list) or not items:
        return "none"
    return ", ".join(
        f"{i.get('name')!s} {dims(i.get('shape') or [])} {i.get('dtype') or ''}".rstrip()
        for i in items
        if isinstance(i, dict)
    )


def _onnx_summary(meta: dict) -> list[tuple[str, str]]:
    pairs = [("inputs", _io(meta.get("inputs"))), ("outputs", _io(meta.get("outputs")))]
    opsets = meta.get("opset_import") or {}
    if isinstance(opsets, dict) and opsets:
        pairs.append(("opset", ", ".join(f"{d} {v}" for d, v in opsets.items())))
    producer = " ".join(str(meta[k]) for k in ("producer_name", "producer_version") if meta.get(k))
    if producer:
        pairs.append(("producer", producer + (f" (IR version {meta['ir_version']})" if meta.get("ir_version") else "")))
    if meta.get("nodes") is not None:
        pairs.append(("nodes", human_count(int(meta["nodes"]))))
    return pairs
