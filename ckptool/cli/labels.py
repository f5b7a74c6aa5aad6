"""`ckptool labels`: the ImageNet-1k class names that `predict` uses by default."""

from __future__ import annotations

from ._options import JsonOpt
from ._output import start


def labels(json_: JsonOpt = False) -> None:
    """The 1000 ImageNet-1k class names in index order, one per line (line 1 is class 0, tench).

    The output is the file ``predict --labels`` reads: ``ckptool labels > names.txt``."""
    from ..labels import imagenet_labels

    o = start(json_)
    names = imagenet_labels()
    if json_:
        o.json({"labels": names})
        return
    for name in names:  # one name per line, line i is class i: what predict --labels reads back
        o.raw(name)
