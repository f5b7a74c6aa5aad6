"""The Python API: one function per CLI command, re-exported as ``ckptool.open``, ``ckptool.check``...

Every function that reads a checkpoint takes a path **or** an open :class:`~ckptool.checkpoint.Checkpoint`
(from :func:`open`): a path is opened and closed again, a Checkpoint is used as it is and left open.
Every function returns a typed result (a dataclass with a short ``repr`` and a ``to_dict()`` that is the
command's ``--json`` output) and never prints. Errors are :class:`~ckptool.errors.CkptError` subclasses;
a finding (incompatible weights, failed parity, an unsafe file) is a result, not an exception.

Nothing heavy is imported until a function needs it: ``import ckptool`` loads neither torch, onnx nor rich.
Functions that run a model (``export_onnx``, ``parity``, ``predict`` on a checkpoint) need the ``torch``
extra and raise :class:`~ckptool.errors.MissingExtraError` without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from .checkpoint import Checkpoint
from .errors import UsageError

if TYPE_CHECKING:
    from .compat import CompatReport
    from .convert.onnx_export import OnnxExportResult
    from .convert.safetensors_writer import ExportResult
    from .diff import DiffReport
    from .extract import ExtractResult
    from .layers import LayerTable
    from .parity import ParityReport
    from .predict import PredictReport
    from .scan import ScanReport

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[str, "os.PathLike[str]", Checkpoint]

__all__ = [
    "check",
    "diff",
    "export_onnx",
    "export_pth",
    "export_safetensors",
    "extract",
    "layers",
    "open",
    "parity",
    "predict",
    "scan",
]


def open(path: PathLike, *, key: str | None = None) -> Checkpoint:
    """Read a checkpoint's header without trusting it (no pickle code runs, no tensor bytes are read).

    Args:
        path: a ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch zip or legacy), ``.safetensors`` or ``.onnx`` file.
        key: where the state_dict sits in a training checkpoint (``"state_dict"``, ``"model.ema"``);
            by default the conventional key holding the largest mapping of tensors.

    Returns:
        The open :class:`~ckptool.checkpoint.Checkpoint`; use it as a context manager, or call ``close()``.

    Raises:
        UnreadableError: the path is missing, a directory, or not readable.
        UnsupportedFormatError: the bytes are no checkpoint format ckptool knows.
        CorruptFileError: the file is truncated or its headers are inconsistent.
        UnsafePickleError: a pickle references something outside the allowlist (nothing was executed).
        KeyNotFoundError: ``key`` names nothing in the file.
    """
    from .formats import open_checkpoint

    return open_checkpoint(path, key=key)


@contextlib.contextmanager
def _opened(source: Source, key: str | None) -> Iterator[Checkpoint]:
    """``source`` as an open Checkpoint: a path is opened (and closed afterwards), a Checkpoint is used as is."""
    if isinstance(source, Checkpoint):
        if key is not None and key != source.state_dict_key:
            raise UsageError(
                f"key={key!r} applies when opening a file; this Checkpoint was opened with key={source.state_dict_key!r}",
                path=source.path,
                hint="pass the path instead, or open it with ckptool.open(path, key=...)",
            )
        yield source
        return
    ck = open(source, key=key)
    try:
        yield ck
    finally:
        ck.close()


def _path_and_key(source: Source, key: str | None) -> tuple[str, str | None]:
    """For the library functions that take a path: a Checkpoint's path and the state_dict key it was opened with."""
    if isinstance(source, Checkpoint):
        return source.path, key if key is not None else source.state_dict_key
    return os.fspath(source), key


def _arch_args(arch_args: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Constructor arguments as the CLI's ``--arch-arg`` takes them: strings are Python literals, other values
    are written as their literal (``{"num_classes": 10}`` is ``num_classes=10``)."""
    if not arch_args:
        return None
    return {k: v if isinstance(v, str) else repr(v) for k, v in arch_args.items()}


def layers(
    source: Source,
    arch: str = "auto",
    *,
    key: str | None = None,
    num_classes: int | None = None,
    part: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
) -> LayerTable:
    """The layer table (``ckptool layers``): one row per module, with its type, the paper's name, the weight
    layer ordinal and the parameter count.

    Args:
        source: a checkpoint path or an open Checkpoint.
        arch: ``"auto"`` (identify a registry architecture from the weights, or infer the table from the
            state_dict alone), a registry name (``"vgg16_bn"``), ``"module.path:callable"`` or
            ``"torchvision:<builder>"`` (these two import torch).
        key: where the state_dict sits in a training checkpoint (paths only).
        num_classes: size of the classification head (default: read from the weights).
        part: a sub-module (``"features"``) when the file holds only that part.
        arch_args: constructor arguments of a ``module:callable`` architecture.

    Returns:
        A :class:`~ckptool.layers.LayerTable` (``rows``, ``counts`` per container, ``compatible``).

    Raises:
        UnknownArchError: ``arch`` is neither a registry name nor an importable callable.
        CkptError: the file cannot be read (see :func:`open`).
    """
    from .layers import layer_table

    with _opened(source, key) as ck:
        return layer_table(ck, arch, num_classes=num_classes, part=part, arch_args=_arch_args(arch_args))


def check(
    source: Source,
    arch: str = "auto",
    *,
    key: str | None = None,
    num_classes: int | None = None,
    part: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
) -> CompatReport:
    """Whether the weights load strictly into ``arch`` (``ckptool check``). Header-only and torch-free for
    registry architectures.

    Args:
        source: a checkpoint path or an open Checkpoint.
        arch: ``"auto"`` (rank the registry and pick the best match), a registry name,
            ``"module.path:callable"`` or ``"torchvision:<builder>"``.
        key: where the state_dict sits in a training checkpoint (paths only).
        num_classes: size of the classification head (default: read from the weights).
        part: check against this sub-module only (``"features"`` for a backbone file).
        arch_args: constructor arguments of a ``module:callable`` architecture.

    Returns:
        A :class:`~ckptool.compat.CompatReport`: ``compatible``, and the ``missing``, ``unexpected`` and
        ``mismatched`` keys when not. Weights that do not fit are a report, not an exception.

    Raises:
        UnknownArchError: ``arch`` is neither a registry name nor an importable callable.
        UsageError: options that make no sense (an unknown ``part``).
        CkptError: the file cannot be read (see :func:`open`).
    """
    from .compat import check as check_compat

    with _opened(source, key) as ck:
        return check_compat(ck, arch, num_classes=num_classes, part=part, arch_args=_arch_args(arch_args))


def diff(
    a: Source,
    b: Source,
    *,
    key_a: str | None = None,
    key_b: str | None = None,
    atol: float = 0.0,
    only: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> DiffReport:
    """Compare two checkpoints tensor by tensor (``ckptool diff``), streamed, in any two formats.

    Names are matched after dropping a wrapper prefix (``module.``) one side has. With ``atol=0`` values are
    compared bit for bit; otherwise ``|a - b| <= atol`` counts as equal.

    Args:
        a: the first checkpoint (a path or an open Checkpoint).
        b: the second one.
        key_a: where the state_dict sits in ``a`` (a training checkpoint; paths only).
        key_b: the same for ``b``.
        atol: absolute tolerance (0: bit-exact).
        only: glob patterns of the names to compare (others are ignored).
        exclude: glob patterns of names to leave out.

    Returns:
        A :class:`~ckptool.diff.DiffReport` (``identical``, ``counts``, ``differences()``, ``only_in_a``...).

    Raises:
        UsageError: a negative ``atol``.
        CkptError: a file cannot be read (see :func:`open`).
    """
    from .diff import diff as run_diff

    with _opened(a, key_a) as ca, _opened(b, key_b) as cb:
        return run_diff(
            ca, cb, atol=atol, only=list(only) if only else None, exclude=list(exclude) if exclude else None
        )


def scan(source: Source, *, values: bool = True, strict: bool = False) -> ScanReport:
    """Is the file safe to load (``ckptool scan``)? Static pickle analysis (nothing is executed), container
    integrity, NaN/Inf in the values, and a file name's hash suffix against its bytes.

    Args:
        source: a file path (any format, also a bare pickle) or an open Checkpoint (its file is scanned).
        values: also read every tensor's values for NaN/Inf (False: headers and pickles only).
        strict: every finding fails, also those reported as warnings by default (a file name's hash-like
            suffix that does not match: it may be a date or a short git SHA).

    Returns:
        A :class:`~ckptool.scan.ScanReport`: ``safe``, ``findings`` (kind, message, where, severity),
        ``warnings``, ``globals``.
        An unsafe file is a report with findings, not an exception.

    Raises:
        UnreadableError: the path is missing or unreadable.
        UnsupportedFormatError: the bytes are neither a checkpoint nor a pickle.
    """
    from .scan import scan as run_scan

    return run_scan(source.path if isinstance(source, Checkpoint) else source, values=values, strict=strict)


def export_safetensors(
    source: Source,
    out: PathLike,
    *,
    key: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Write the state_dict as a ``.safetensors`` file (``ckptool export --safetensors``): streamed, torch-free,
    atomic, and re-read bit for bit against the source unless ``verify=False``.

    Args:
        source: a checkpoint path or an open Checkpoint.
        out: the output file.
        key: where the state_dict sits in a training checkpoint (paths only).
        force: overwrite an existing ``out``.
        verify: re-read the written file and compare every byte with the source.

    Returns:
        An :class:`~ckptool.convert.safetensors_writer.ExportResult` (tensors, bytes, ``verified``).

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is False.
        CkptError: the source cannot be read, or the written file does not match it (nothing is left behind).
    """
    from .convert.safetensors_writer import export_safetensors as write

    with _opened(source, key) as ck:
        return write(ck, out, force=force, verify=verify)


def export_pth(
    source: Source,
    out: PathLike,
    *,
    key: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Write the state_dict as a torch zip-format ``.pth`` file (``ckptool export --pth``), torch-free, that
    ``torch.load(out, weights_only=True)`` reads; streamed, atomic, bit-exact-checked unless ``verify=False``.

    Args:
        source: a checkpoint path or an open Checkpoint.
        out: the output file.
        key: where the state_dict sits in a training checkpoint (paths only).
        force: overwrite an existing ``out``.
        verify: re-read the written file and compare every byte with the source.

    Returns:
        An :class:`~ckptool.convert.safetensors_writer.ExportResult`.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is False.
        CkptError: the source cannot be read, or the written file does not match it (nothing is left behind).
    """
    from .convert.pth_writer import export_pth as write

    with _opened(source, key) as ck:
        return write(ck, out, force=force, verify=verify)


def export_onnx(
    source: Source,
    out: PathLike,
    *,
    arch: str = "auto",
    key: str | None = None,
    num_classes: int | None = None,
    arch_args: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    opset: int | None = None,
    features_only: bool = False,
    external_data: bool = False,
    verify: bool = True,
    force: bool = False,
) -> OnnxExportResult:
    """Export the weights in ``arch`` to ONNX (``ckptool export --onnx``): torch's dynamo exporter,
    ``onnx.checker``, then a parity check on onnxruntime before the file is put in place. Needs the
    ``torch`` extra.

    Args:
        source: a checkpoint path or an open Checkpoint.
        out: the ``.onnx`` file to write.
        arch: ``"auto"``, a registry name, ``"module.path:callable"`` or ``"torchvision:<builder>"``.
        key: where the state_dict sits in a training checkpoint (paths only).
        num_classes: size of the classification head (default: read from the weights).
        arch_args: constructor arguments of a ``module:callable`` architecture.
        input_shape: the example input ``(N, C, H, W)`` (default: the architecture's).
        opset: the ONNX opset (default: ckptool's, see ``ckptool export -h``).
        features_only: export the ``features`` sub-module (the VGG backbone).
        external_data: write the weights to ``out + ".data"`` next to the graph.
        verify: run the parity check (False: skip it).
        force: overwrite existing output files.

    Returns:
        An :class:`~ckptool.convert.onnx_export.OnnxExportResult`. A failed parity check is a result with
        ``passed`` and ``written`` False (no file is left behind), not an exception.

    Raises:
        MissingExtraError: torch, onnx or onnxscript is not installed.
        WeightsMismatchError: the weights do not fit ``arch``.
        OutputExistsError: ``out`` exists and ``force`` is False.
        CkptError: the exporter or the ONNX checker failed (nothing is written).
    """
    from .convert.onnx_export import DEFAULT_OPSET
    from .convert.onnx_export import export_onnx as run_export

    with _opened(source, key) as ck:
        return run_export(
            ck, out, arch=arch, num_classes=num_classes, arch_args=_arch_args(arch_args),
            input_shape=tuple(input_shape) if input_shape else None,
            opset=DEFAULT_OPSET if opset is None else opset, features_only=features_only,
            external_data=external_data, verify=verify, force=force,
        )  # fmt: skip


def extract(
    source: Source,
    prefix: str,
    out: PathLike,
    *,
    key: str | None = None,
    keep_prefix: bool = False,
    force: bool = False,
) -> ExtractResult:
    """Write the tensors under ``prefix`` (``"features"``: the backbone) to ``out`` (``ckptool extract``),
    ``.safetensors`` or ``.pth`` by its suffix; streamed, atomic, bit-exact-checked.

    Args:
        source: a checkpoint path or an open Checkpoint (its file and state_dict key are used).
        prefix: the module path whose tensors to take (``"features"``, ``"features.0"``).
        out: the output file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` for torch zip).
        key: where the state_dict sits in a training checkpoint.
        keep_prefix: keep ``prefix.`` in the names (default: strip it, to load into the sub-module).
        force: overwrite an existing ``out``.

    Returns:
        An :class:`~ckptool.extract.ExtractResult` (``names``: source name -> output name).

    Raises:
        KeyNotFoundError: no tensor lies under ``prefix``.
        OutputExistsError: ``out`` exists and ``force`` is False.
        CkptError: the source cannot be read (see :func:`open`).
    """
    from .extract import extract as run_extract

    path, key = _path_and_key(source, key)
    return run_extract(path, prefix, out, keep_prefix=keep_prefix, force=force, key=key)


def parity(
    source: Source,
    onnx: PathLike,
    *,
    arch: str = "auto",
    key: str | None = None,
    num_classes: int | None = None,
    arch_args: Mapping[str, Any] | None = None,
    features_only: bool | None = None,
    samples: int | None = None,
    input_shape: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> ParityReport:
    """Does the ONNX model compute what the checkpoint computes (``ckptool parity``)? Seeded inputs run
    through torch and onnxruntime; every output is compared under the default rule (see the parity page of
    the docs). Needs the ``torch`` extra.

    Args:
        source: the checkpoint (a path or an open Checkpoint).
        onnx: the ONNX model.
        arch: ``"auto"``, a registry name, ``"module.path:callable"`` or ``"torchvision:<builder>"``.
        key: where the state_dict sits in a training checkpoint.
        num_classes: size of the classification head (default: read from the weights).
        arch_args: constructor arguments of a ``module:callable`` architecture.
        features_only: compare the ``features`` sub-module (default: when the ONNX model's only output is
            named ``features``).
        samples: how many seeded inputs (default: ckptool's).
        input_shape: the input shape where the ONNX graph leaves dimensions symbolic.
        atol: absolute tolerance (default: ckptool's).
        rtol: relative tolerance (default: ckptool's).

    Returns:
        A :class:`~ckptool.parity.ParityReport`; ``passed`` False is a finding, not an exception.

    Raises:
        MissingExtraError: torch or onnxruntime is not installed.
        WeightsMismatchError: the weights do not fit ``arch``.
        InputShapeError: the model cannot take the inputs.
        CkptError: a file cannot be read, or the two models do not have the same outputs.
    """
    from .parity import check_parity

    path, key = _path_and_key(source, key)
    kw: dict[str, Any] = {}
    if samples is not None:
        kw["samples"] = samples
    if atol is not None:
        kw["atol"] = atol
    if rtol is not None:
        kw["rtol"] = rtol
    return check_parity(
        path, onnx, arch, key=key, num_classes=num_classes, arch_args=_arch_args(arch_args),
        features_only=features_only, input_shape=tuple(input_shape) if input_shape else None, **kw,
    )  # fmt: skip


def predict(
    model: Source,
    images: PathLike | Sequence[PathLike],
    *,
    arch: str | None = None,
    top: int = 5,
    labels: PathLike | Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    key: str | None = None,
    num_classes: int | None = None,
    arch_args: Mapping[str, Any] | None = None,
) -> PredictReport:
    """Classify images (``ckptool predict``): with an ONNX model on onnxruntime (``onnx`` extra, no torch), or
    with a checkpoint on torch (``torch`` extra). Preprocessing is torchvision's ImageNet one.

    Args:
        model: an ``.onnx`` model or a checkpoint (a path or an open Checkpoint).
        images: one image path or several (JPEG, PNG... anything Pillow reads); run as one batch.
        arch: for a checkpoint: a registry name, ``"module.path:callable"``, or None/``"auto"`` to identify it.
        top: how many classes per image.
        labels: class names: a file (one per line) or a list; default ImageNet's when there are 1000 classes.
        size: input size, ``224`` or ``(height, width)`` (default: the ONNX graph's, else 224).
        key: where the state_dict sits in a training checkpoint.
        num_classes: size of the classification head (default: read from the weights).
        arch_args: constructor arguments of a ``module:callable`` architecture.

    Returns:
        A :class:`~ckptool.predict.PredictReport` (``predictions``: per image, the top classes).

    Raises:
        MissingExtraError: onnxruntime/Pillow (ONNX) or torch/Pillow (checkpoint) is not installed.
        UsageError: options that do not apply (``arch`` with an ONNX model), a model that is no image classifier.
        CkptError: a file or an image cannot be read.
    """
    from .predict import predict as run_predict

    path, key = _path_and_key(model, key)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    return run_predict(
        path, list(images), arch=arch, top=top, labels=labels, size=size, key=key, num_classes=num_classes,
        arch_args=_arch_args(arch_args),
    )  # fmt: skip
