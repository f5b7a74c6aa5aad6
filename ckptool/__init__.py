"""ckptool: inspect, check, convert and verify PyTorch weight files without trusting them."""

from .checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from .errors import CkptError
from .formats import detect_format, open_checkpoint

__version__ = "0.1.0"
__all__ = [
    "ByteSource",
    "Checkpoint",
    "CkptError",
    "StorageInfo",
    "TensorInfo",
    "detect_format",
    "open_checkpoint",
]
