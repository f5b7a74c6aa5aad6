"""The registry's one-file reader, for a format whose files name other files (an index and its shards).

:mod:`ckptool.formats.sniff` sets :data:`READ_FILE` to its ``read_file(loc, full, key=)`` when it is imported,
so that such a format reads each member by the member's own format without importing the registry (which
imports it). Nothing else lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

READ_FILE: Callable[..., Any] | None = None
