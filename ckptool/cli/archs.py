"""`ckptool archs`: the architectures ckptool knows without torch, and how to name any other."""

from __future__ import annotations

from ._options import JsonOpt
from ._output import human_count, start

OTHER = (
    "any other model: --arch module.path:callable (e.g. mypkg.nets:ONet), with --arch-arg key=value for its constructor"
)


def archs(json_: JsonOpt = False) -> None:
    """List the registry architectures (torchvision's VGG family, described as data)."""
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
        (i.name, i.config, "yes" if i.batch_norm else "no", i.weight_layers, human_count(i.params),
         ", ".join(f"{k} {v}" for k, v in i.modules.items()))
        for i in infos
    ]  # fmt: skip
    o.table(["name", "config", "BN", "weight layers", "params", "modules"], rows, right=(3, 4), fold=(5,))
    o.blank()
    o.line(OTHER)
    o.line(
        "torchvision:<builder> (e.g. torchvision:resnet18): "
        + ("available, torchvision is installed" if tv else "needs torchvision, which is not installed here")
    )
