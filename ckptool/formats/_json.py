"""JSON headers that name every duplicated key (safetensors headers, HF index files): ``json.loads`` keeps the
last of two equal keys silently, and which one another reader keeps is not specified, so the formats report it."""

from __future__ import annotations

import json
from typing import Any


def loads_noting_duplicates(text: str | bytes) -> tuple[Any, list[str]]:
    """(the parsed document, the object keys that appear more than once, in order, repeats included).

    Raises what :func:`json.loads` raises (``ValueError``, ``UnicodeDecodeError``, ``RecursionError``)."""
    dups: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in items:
            if k in d:
                dups.append(k)
            d[k] = v
        return d

    return json.loads(text, object_pairs_hook=pairs), dups
