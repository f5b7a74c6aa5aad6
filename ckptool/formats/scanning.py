"""What a format's ``scan(ctx)`` hook may use: the scanner's side of the contract (torch-free).

``ckptool.scan`` owns the report; a format module owns where its pickles and records are. Each registered
format with pickles or rules supplies ``scan(ctx: ScanContext) -> None``: it reports its findings, walks its
pickles through ``ctx.walk_stream`` (the collect-globals policy of the one interpreter), and hands the
reader's view to ``ctx.check_values``. The scanner never names a format.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..checkpoint import Checkpoint
from ..sources import Source
from .unpickler import Walk


class ScanContext(Protocol):
    path: str
    src: Source
    mm: Any  # the whole file as a buffer (a read-only map for local files)
    size: int
    values: bool  # False for --no-values: read no tensor bytes
    torchscript: bool  # globals are judged as a TorchScript archive's

    def set_format(self, name: str) -> None: ...

    def note(self, text: str) -> None: ...

    def find(self, kind: str, message: str, where: str | None = None) -> None: ...

    def count(self, kind: str) -> int: ...

    def walk_stream(
        self, buf: Any, pos: int, end: int, where: str, base: int | None, *, depth: int = 0, probe: bool = False
    ) -> int: ...

    def record_walk(self, w: Walk, where: str, base: int | None, pos: int, depth: int = 0) -> None: ...

    def walked_at(self, offset: int) -> bool: ...

    def open_reader(self) -> Checkpoint | None: ...

    def check_values(self, ck: Checkpoint) -> None: ...

    def values_pass(self) -> None: ...
