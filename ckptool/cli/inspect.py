"""`ckptool inspect`: the article's state_dict dump, header-only and torch-free."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated

import typer

from ..formats import open_checkpoint
from ._options import AllowGlobalOpt, JsonOpt, KeyOpt, PathArg
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


def inspect(
    path: PathArg,
    key: KeyOpt = None,
    filter: FilterOpt = None,
    plain: PlainOpt = False,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
) -> None:
    """List every tensor: name, shape, dtype, elements, bytes. Never imports torch, never reads tensor data."""
    o = start(json_)
    ck = open_checkpoint(path, key=key)
    total = len(ck.tensors)
    if filter:
        ck.tensors = [t for t in ck.tensors if any(fnmatchcase(t.name, g) for g in filter)]
    if json_:
        d = ck.to_dict()
        if filter:
            d["filter"] = filter
            d["tensors_in_file"] = total
        o.json(d)
        return
    if plain:
        for t in ck.tensors:
            o.raw(f"{t.name} torch.Size({list(t.shape)})")
        return
    rows = [(t.name, dims(t.shape), t.dtype, human_count(t.numel), human_bytes(t.nbytes)) for t in ck.tensors]
    o.table(["name", "shape", "dtype", "numel", "size"], rows, right=(3, 4))
    o.blank()
    count = f"{len(ck.tensors)}" + (f" of {total} (filtered)" if filter else "")
    summary = [("file", ck.path), ("format", ck.format)]
    if ck.format == "onnx":
        summary += _onnx_summary(ck.metadata)
    else:
        summary.append(("state_dict", ck.state_dict_key if ck.state_dict_key is not None else "(root)"))
    summary += [
        ("tensors" if ck.format != "onnx" else "initializers", count),
        ("elements", human_count(ck.total_numel)),
        ("bytes", f"{human_count(ck.total_bytes)} ({human_bytes(ck.total_bytes)})"),
        ("dtypes", ", ".join(f"{k} ({v})" for k, v in sorted(ck.dtype_counts.items())) or "none"),
    ]
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
