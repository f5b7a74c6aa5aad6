"""One reader per on-disk format, all returning :class:`ckptool.checkpoint.Checkpoint` (torch-free)."""

from . import fastpickle  # noqa: F401  (registers the C-unpickler fast path in unpickler.FAST_PATH)
from .sniff import detect_format, open_checkpoint

__all__ = ["detect_format", "open_checkpoint"]
