"""`ckptool extract`: write the tensors under a prefix (e.g. the `features` backbone) to a new file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import AllowGlobalOpt, DownloadOpt, ForceOpt, JsonOpt, KeyOpt, PathArg, TimeoutOpt
from ._output import human_bytes, human_count, start

PrefixOpt = Annotated[
    str,
    typer.Option(
        "--prefix",
        "-p",
        help="Module path whose tensors to take, e.g. features (the article's backbone) or features.0.",
        show_default=False,
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="Output file: OUT.safetensors, or OUT.pth / .pt / .bin (torch zip). Written atomically.",
        show_default=False,
    ),
]
MaxShardOpt = Annotated[
    str | None,
    typer.Option(
        "--max-shard-size",
        help="Write Hugging Face safetensors shards into the folder OUTPUT (model-0000K-of-0000N.safetensors + "
        "model.safetensors.index.json), each at most this size (5GB, 500MB, 2GiB).",
        show_default=False,
    ),
]
KeepOpt = Annotated[
    bool,
    typer.Option(
        "--keep-prefix", help="Keep the prefix in the key names (default: strip it, to load into the sub-module)."
    ),
]


def extract(
    path: PathArg,
    prefix: PrefixOpt,
    output: OutOpt,
    keep_prefix: KeepOpt = False,
    max_shard_size: MaxShardOpt = None,
    force: ForceOpt = False,
    key: KeyOpt = None,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Extract the sub-state-dict under a prefix, e.g. `features` as a frozen feature extractor. Streamed and atomic."""
    from ..extract import extract as run_extract

    o = start(json_)
    res = run_extract(
        path, prefix, output, keep_prefix=keep_prefix, force=force, key=key, max_shard_size=max_shard_size
    )
    if json_:
        o.json(res.to_dict())
        return
    first_src, first_dst = next(iter(res.names.items()))
    o.kv(
        [
            ("wrote", f"{res.output} ({res.format})"),
            ("tensors", f"{res.tensors} of {res.tensors_in_source} under {res.prefix!r}"),
            ("bytes", f"{human_count(res.total_bytes)} ({human_bytes(res.total_bytes)})"),
            ("names", f"{first_src} -> {first_dst}" + (" (prefix kept)" if res.keep_prefix else " (prefix stripped)")),
        ]
        + [("note", n) for n in res.notes]
    )
