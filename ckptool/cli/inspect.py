"""`ckptool inspect`: the article's state_dict dump, header-only and torch-free."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated

import typer

from ..formats import open_checkpoint
from ._options import AllowGlobalOpt, JsonOpt, KeyOpt, PathArg
from ._output import human_bytes, human_count, kv_lines, out, print_json, table

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
    ck = open_checkpoint(path, key=key)
    total = len(ck.tensors)
    if filter:
        ck.tensors = [t for t in ck.tensors if any(fnmatchcase(t.name, g) for g in filter)]
    if json_:
        d = ck.to_dict()
        if filter:
            d["filter"] = filter
            d["tensors_in_file"] = total
        print_json(d)
        return
    if plain:
        for t in ck.tensors:
            out(f"{t.name} torch.Size({list(t.shape)})")
        return
    rows = [
        (t.name, "[" + ", ".join(map(str, t.shape)) + "]", t.dtype, human_count(t.numel), human_bytes(t.nbytes))
        for t in ck.tensors
    ]
    table(["name", "shape", "dtype", "numel", "size"], rows, right=(3, 4))
    out()
    where = ck.state_dict_key if ck.state_dict_key is not None else "(root)"
    count = f"{len(ck.tensors)}" + (f" of {total} (filtered)" if filter else "")
    summary = [
        ("format", ck.format),
        ("state_dict", where),
        ("tensors", count),
        ("elements", human_count(ck.total_numel)),
        ("bytes", f"{human_count(ck.total_bytes)} ({human_bytes(ck.total_bytes)})"),
        ("dtypes", ", ".join(f"{k} ({v})" for k, v in sorted(ck.dtype_counts.items())) or "none"),
    ]
    locs = ck.metadata.get("storage_locations")
    if locs:
        summary.append(("saved on", ", ".join(locs) + " (no GPU needed to read)"))
    for k, v in ck.extras.items():
        summary.append((f"  {k}", v))
    for n in ck.notes:
        summary.append(("note", n))
    kv_lines(summary)
