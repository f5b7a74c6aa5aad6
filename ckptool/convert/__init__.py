"""Writers: safetensors and torch zip (streamed, torch-free), ONNX export (torch + parity).

The tensor writers share one driver (:func:`ckptool.convert.driver.export`) and are registered in
:data:`WRITERS`, one name per format. Adding a writer is one module with a ``WRITER`` (the
:class:`~ckptool.convert.driver.Writer` protocol) plus one line here.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import UsageError

# format name -> (module holding WRITER, output suffixes)
WRITERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "safetensors": ("ckptool.convert.safetensors_writer", (".safetensors",)),
    "torch-zip": ("ckptool.convert.pth_writer", (".pth", ".pt", ".bin", ".ckpt", ".tar")),
}
# what users type for a format (CLI flags, extract's --output suffix): one format, several spellings
ALIASES = {"pth": "torch-zip", "torch zip": "torch-zip", "torch_zip": "torch-zip", "st": "safetensors"}


def format_name(name: str) -> str:
    """The one name of a writer format, from any of its spellings."""
    fmt = ALIASES.get(name.lower(), name.lower())
    if fmt not in WRITERS:
        raise UsageError(f"no writer for {name!r}", hint=f"one of: {', '.join(WRITERS)}")
    return fmt


def writer(name: str) -> Any:
    """The registered Writer for a format (any spelling)."""
    return importlib.import_module(WRITERS[format_name(name)][0]).WRITER  # type: ignore[no-any-return]


def format_for_output(out: str | os.PathLike[str]) -> str:
    """The writer format an output path asks for, from its suffix."""
    low = os.fspath(out).lower()
    for fmt, (_module, suffixes) in WRITERS.items():
        if low.endswith(suffixes):
            return fmt
    raise UsageError(
        f"cannot tell the output format of {os.fspath(out)!r}",
        hint="name it OUT.safetensors, or OUT.pth / .pt / .bin for torch's zip format",
    )
