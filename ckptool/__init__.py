"""ckptool: inspect, check, convert and verify PyTorch weight files without trusting them.

The verbs mirror the CLI: :func:`open`, :func:`layers`, :func:`check`, :func:`diff`, :func:`scan`,
:func:`export_safetensors`, :func:`export_pth`, :func:`export_onnx`, :func:`extract`, :func:`parity` and
:func:`predict` (see :mod:`ckptool.api`). Importing ckptool is light: torch, onnx and rich load only when a
function needs them.

``ckptool.scan``, ``ckptool.diff``, ``ckptool.layers``, ``ckptool.extract``, ``ckptool.parity`` and
``ckptool.predict`` are the functions; their modules stay importable by their full name
(``from ckptool.scan import ScanReport``, ``importlib.import_module("ckptool.scan")``).
"""

import sys as _sys
import types as _types
from typing import Any as _Any

from .api import __all__ as _VERB_NAMES
from .api import (
    check,
    diff,
    export_onnx,
    export_pth,
    export_safetensors,
    extract,
    layers,
    parity,
    predict,
    scan,
)
from .api import (
    open as open,
)
from .checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from .errors import CkptError, FindingsError, MissingExtraError
from .formats import detect_format, open_checkpoint
from .formats.unpickler import allow_globals

__version__ = "0.1.0"

# result types, imported on first use (``ckptool.CompatReport``)
_RESULTS = {
    "CompatReport": "compat",
    "DiffReport": "diff",
    "ExportResult": "convert.safetensors_writer",
    "ExtractResult": "extract",
    "LayerTable": "layers",
    "OnnxExportResult": "convert.onnx_export",
    "ParityReport": "parity",
    "PredictReport": "predict",
    "ScanReport": "scan",
}
_VERBS = frozenset(_VERB_NAMES)

__all__ = [  # ``open`` is left out so that ``from ckptool import *`` cannot shadow the builtin
    "ByteSource",
    "Checkpoint",
    "CkptError",
    "CompatReport",
    "DiffReport",
    "ExportResult",
    "ExtractResult",
    "FindingsError",
    "LayerTable",
    "MissingExtraError",
    "OnnxExportResult",
    "ParityReport",
    "PredictReport",
    "ScanReport",
    "StorageInfo",
    "TensorInfo",
    "allow_globals",
    "check",
    "detect_format",
    "diff",
    "export_onnx",
    "export_pth",
    "export_safetensors",
    "extract",
    "layers",
    "open_checkpoint",
    "parity",
    "predict",
    "scan",
]


def __getattr__(name: str) -> _Any:
    if name in _RESULTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_RESULTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_RESULTS})


class _Package(_types.ModuleType):
    """Keeps the verbs when their submodules load: importing ``ckptool.scan`` would otherwise rebind the
    package attribute ``scan`` (the function) to the module."""

    def __setattr__(self, name: str, value: _Any) -> None:
        if name in _VERBS and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
