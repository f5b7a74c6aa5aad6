"""The cyclic garbage collector, paused while a reader or a renderer builds many small acyclic objects.

A 100k-tensor header is about a million new objects (the parsed JSON, then three records a tensor). Each
700 allocations start a young-generation pass, and the full passes that follow re-walk everything alive:
``json.loads`` of a 10 MB safetensors header took 0.47 s with the collector running and 0.21 s paused here.
Nothing built inside holds a reference cycle, so pausing frees nothing later; the collector resumes (when it
was running) as the block ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
