"""One reader per on-disk format, all returning :class:`ckptool.checkpoint.Checkpoint` (torch-free)."""

from .sniff import detect_format, open_checkpoint

__all__ = ["detect_format", "open_checkpoint"]
