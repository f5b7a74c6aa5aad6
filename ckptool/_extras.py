"""Optional dependencies: the core install (typer, rich, numpy) reads, checks, diffs, scans and converts
without torch. Running a model needs an extra; :func:`require` turns a missing one into a
:class:`~ckptool.errors.MissingExtraError` (one line, exit 2) that names the extra to install.

Extras: ``torch`` (torch, onnx, onnxscript, onnxruntime, Pillow: ONNX export, parity, predict on a
checkpoint, ``module:callable`` architectures), ``onnx`` (onnxruntime, Pillow: predict on an ONNX model) and
``remote`` (fsspec, huggingface_hub: ``gs://`` and other fsspec URLs, the Hub login token) and ``s3``
(fsspec, s3fs: ``s3://`` URLs).
"""

from __future__ import annotations

import importlib.util
import re
import sys

from .errors import MissingExtraError

# the extras as pyproject.toml declares them (a test keeps the two equal)
EXTRAS: dict[str, tuple[str, ...]] = {
    "torch": ("torch>=2.4", "onnx>=1.16", "onnxscript>=0.1", "onnxruntime>=1.18", "Pillow>=10"),
    "onnx": ("onnxruntime>=1.18", "Pillow>=10"),
    "remote": ("fsspec>=2023.1", "huggingface_hub>=0.23"),
    "s3": ("fsspec>=2023.1", "s3fs>=2023.1"),
}
# import name -> the distribution pip installs it from
_DIST = {"PIL": "Pillow", "onnx_ir": "onnxscript", "huggingface_hub": "huggingface_hub"}


def available(module: str) -> bool:
    """Whether the top-level package of ``module`` can be imported (nothing is imported)."""
    top = module.split(".")[0]
    if top in sys.modules:
        return sys.modules[top] is not None  # None: import blocked (what tests use to simulate absence)
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def require(*modules: str, extra: str, what: str | None = None) -> None:
    """Raise :class:`MissingExtraError` unless every one of ``modules`` is importable.

    Args:
        modules: import names (``"torch"``, ``"onnxruntime"``, ``"PIL"``...).
        extra: the ckptool extra that installs them (``"torch"`` or ``"onnx"``).
        what: the task that needs them, for the message (default: "this").

    Raises:
        MissingExtraError: naming the first missing package and ``pip install 'ckptool[extra]'``.
    """
    for m in modules:
        if not available(m):
            dist = _DIST.get(m.split(".")[0], m.split(".")[0])
            raise MissingExtraError(
                f"{what or 'this'} needs {dist}, which is not installed",
                hint=f"install ckptool's '{extra}' extra: pip install {_names(extra)}",
                extra=extra,
                module=m,
            )


def _names(extra: str) -> str:
    return " ".join(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in EXTRAS[extra])
