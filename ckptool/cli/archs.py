"""`ckptool archs`: the architectures ckptool knows without torch, and how to name any other."""

from __future__ import annotations

from ._options import JsonOpt
from ._output import human_count, start

OTHER = (
    "any other model: --arch module.path:callable (e.g. mypkg.nets:ONet), with --arch-arg key=value for its constructor"
)


def archs(json_: JsonOpt = False) -> None:
    """List the registry architectures (torchvision's families, described as data)."""
    from ..arch.registry import describe, torchvision_available

    o = start(json_)
    infos = describe()
    tv = torchvision_available()
    if json_:
        o.json(
            {
                "archs": [i.to_dict() for i in infos],
                "custom": "module.path:callable",
                "torchvision": tv,
            }
        )
        return
    rows = [
        (i.name, i.family, i.weight_layers, human_count(i.params), ", ".join(i.parts) or "-",
         ", ".join(f"{k}={_value(v)}" for k, v in i.details.items()))
        for i in infos
    ]  # fmt: skip
    o.table(["name", "family", "weight layers", "params", "parts", "details"], rows, right=(2, 3), fold=(5,))
    o.blank()
    o.line(OTHER)
    o.line(
        "torchvision:<builder> (any torchvision.models builder): "
        + ("available, torchvision is installed" if tv else "needs torchvision, which is not installed here")
    )


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return "-".join(str(x) for x in v)
    return str(v)
