"""`ckptool layers`: the article's layer table (every module, paper-style names, weight-layer ordinals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._options import AllowGlobalOpt, ArchArgOpt, ArchOpt, JsonOpt, KeyOpt, NumClassesOpt, PartOpt, PathArg, TimeoutOpt
from ._output import Output, dims, human_count, start

if TYPE_CHECKING:
    from ..layers import LayerTable


def render(o: Output, t: LayerTable) -> None:
    rows = [
        (
            r.module or "(root)",
            r.type,
            r.name or "",
            "" if r.weight_layer is None else r.weight_layer,
            "" if r.shape is None else dims(r.shape),
            human_count(r.params) if r.params else "",
        )
        for r in t.rows
    ]
    title = f"{t.arch}" + (f"[{t.part}]" if t.part else "") if t.arch else "inferred from the state_dict"
    counts = ", ".join(f"{k}: {v}" for k, v in t.counts.items())
    footer = [
        f"modules: {len(t.rows)}" + (f" ({counts})" if counts else ""),
        f"weight layers: {t.weight_layers}",
        f"parameters: {human_count(t.params)}",
    ]
    o.table(["module", "type", "name", "#", "weight shape", "params"], rows, title=title, right=(3, 5), footer=footer)
    for n in t.notes:
        o.line(f"note: {n}")


def layers(
    path: PathArg,
    arch: ArchOpt = "auto",
    num_classes: NumClassesOpt = None,
    part: PartOpt = None,
    arch_arg: ArchArgOpt = None,
    key: KeyOpt = None,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Every module in forward order (ReLU, pooling and dropout included) with its paper-style name,
    weight-layer number (conv and linear layers only), weight shape and parameter count."""
    from ..arch.registry import parse_arch_args
    from ..formats import open_checkpoint
    from ..layers import layer_table

    o = start(json_)
    args = parse_arch_args(arch_arg)
    ck = open_checkpoint(path, key=key)
    t = layer_table(ck, arch or "auto", num_classes=num_classes, part=part, arch_args=args or None)
    if json_:
        o.json(t.to_dict())
    else:
        render(o, t)
