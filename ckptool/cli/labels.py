"""`ckptool labels`: the ImageNet-1k class names that `predict` uses by default."""

from __future__ import annotations

from ._options import JsonOpt
from ._output import out, print_json


def labels(json_: JsonOpt = False) -> None:
    """The 1000 ImageNet-1k class names in index order (0 tench ... 999 toilet tissue), as torchvision and timm use them."""
    from ..labels import imagenet_labels

    names = imagenet_labels()
    if json_:
        print_json({"labels": names})
        return
    for i, name in enumerate(names):
        out(f"{i:>3}  {name}")
