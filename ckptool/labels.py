"""Class labels: the 1000 ImageNet-1k names shipped with ckptool, and user label files (torch-free).

``ckptool/data/imagenet_labels.txt`` holds one name per line in the standard index order that torchvision
and timm use (0 tench, 1 goldfish, 2 great white shark, ..., 999 toilet tissue). It was derived, not
typed, from the metadata published inside the timm wheel on PyPI (timm 1.0.31)::

    pip download timm==1.0.31 --no-deps -d /tmp/timm_wheel
    unzip /tmp/timm_wheel/timm-1.0.31-py3-none-any.whl 'timm/data/_info/*' -d /tmp/timm_wheel
    # imagenet_synsets.txt: the 1000 WordNet ids in class-index order          (sha256 70002b0f...183d15)
    # imagenet_synset_to_lemma.txt: "<wnid>\\t<lemma>, <lemma>, ..." for 21k ids  (sha256 1b8babda...2178f)
    label[i] = lemma[synsets[i]].split(", ")[0]    # the first lemma of the i-th synset

The result (sha256 e697a491aa735cc6c2aaf982f8e86e8fc7b0a1ea7750a2cc6a2bdfc1e109012f) is the list torchvision
ships as ``_IMAGENET_CATEGORIES``, including its two repeated names: "crane" (134 the bird, 517 the machine)
and "maillot" (638, 639). tests/test_labels.py pins the hash and spot-checks indices.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources

from .errors import UnreadableError, UsageError

IMAGENET_SHA256 = "e697a491aa735cc6c2aaf982f8e86e8fc7b0a1ea7750a2cc6a2bdfc1e109012f"
IMAGENET_SOURCE = "timm 1.0.31 wheel: timm/data/_info/imagenet_synsets.txt + imagenet_synset_to_lemma.txt (first lemma)"


@lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    text = resources.files("ckptool").joinpath("data/imagenet_labels.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index order (0 tench ... 999 toilet tissue)."""
    return list(_imagenet())


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """A label file: one label per line (UTF-8), line i is class i. Trailing blank lines are ignored;
    a blank line in the middle is an error (it would shift every later index)."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise UnreadableError("no such label file", path=p) from None
    except IsADirectoryError:
        raise UnreadableError("is a directory, not a label file", path=p) from None
    except PermissionError:
        raise UnreadableError("permission denied", path=p) from None
    except UnicodeDecodeError:
        raise UsageError("label file is not UTF-8 text", path=p, hint="one label per line") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UsageError("label file is empty", path=p, hint="one label per line, line i is class i")
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise UsageError(
            f"label file has a blank line at line {blank[0]}", path=p, hint="one label per line, line i is class i"
        )
    return lines
