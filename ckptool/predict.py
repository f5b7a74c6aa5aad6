"""Classify images with a checkpoint (torch) or an ONNX model (onnxruntime): the article's last step.

Preprocessing is exactly the article's torchvision pipeline, done with Pillow and numpy only::

    transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

applied to ``Image.open(path).convert("RGB")``. For a PIL image, torchvision's ``Resize((h, w))`` is
``img.resize((w, h), Image.BILINEAR)`` (PIL's own resampling, which always antialiases), ``ToTensor`` is
``uint8 HWC / 255 -> float32 CHW``, and ``Normalize`` is ``(x - mean) / std`` per channel in float32.

This module never imports torch at import time. The ONNX route (:func:`run_onnx`) stays torch-free; only
the checkpoint route imports torch, inside :func:`load_torch_model` / :func:`run_torch`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._extras import require
from .errors import CorruptFileError, UnreadableError, UnsupportedFormatError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ClassProb:
    index: int
    label: str | None
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "prob": self.prob}


@dataclass(frozen=True)
class ImagePrediction:
    image: str
    top: list[ClassProb]  # sorted by prob, highest first

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [c.to_dict() for c in self.top]}


@dataclass
class PredictReport:
    """The answer of :func:`predict`: per image, the top classes with their probabilities. ``to_dict()`` is the ``--json`` output."""

    model: str
    backend: str  # "torch" | "onnxruntime"
    arch: str | None
    input_size: tuple[int, int]  # (height, width)
    num_classes: int
    labels: str  # "imagenet" or the --labels file
    predictions: list[ImagePrediction]
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        first = self.predictions[0].top[0].label if self.predictions and self.predictions[0].top else None
        return f"<PredictReport {os.path.basename(self.model)} ({self.backend}): {len(self.predictions)} images, first top-1 {first!r}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "arch": self.arch,
            "input_size": list(self.input_size),
            "num_classes": self.num_classes,
            "labels": self.labels,
            "predictions": [p.to_dict() for p in self.predictions],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------- images
def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        hw = (size, size)
    else:
        vals = tuple(int(v) for v in size)
        if len(vals) != 2:
            raise UsageError(f"an image size is one number or two (height, width), not {list(vals)}")
        hw = (vals[0], vals[1])
    if min(hw) < 1 or max(hw) > 16384:
        raise UsageError(f"image size {hw[0]}x{hw[1]} is out of range (1 to 16384 pixels a side)")
    return hw


def open_image(path: str | os.PathLike[str]) -> Any:
    """``PIL.Image.open(path).convert("RGB")``, fully decoded, with typed errors for a person.

    Grayscale, palette (with or without transparency), RGBA, CMYK, 16-bit and other modes all end as RGB,
    exactly as ``.convert("RGB")`` makes them for the article's code.
    """
    require("PIL", extra="onnx", what="reading images")
    from PIL import Image, UnidentifiedImageError

    p = os.fspath(path)
    if os.path.isdir(p):
        raise UnreadableError("is a directory, not an image", path=p)
    try:
        with Image.open(p) as img, warnings.catch_warnings():
            # PIL warns about palette transparency in bytes; convert("RGB") drops it either way
            warnings.simplefilter("ignore", UserWarning)
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise UnreadableError("no such image file", path=p) from None
    except PermissionError:
        raise UnreadableError("permission denied", path=p) from None
    except UnidentifiedImageError:
        raise UnsupportedFormatError(
            "not an image Pillow can read", path=p, hint="predict takes image files (JPEG, PNG, ...) after the model"
        ) from None
    except Image.DecompressionBombError as e:
        raise UsageError(f"image is too large to decode safely ({e})", path=p) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged data
        raise CorruptFileError(f"image cannot be decoded ({e})", path=p) from None


def preprocess(image: Any, size: int | Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
    """One image (a path or a PIL image) -> float32 array [3, H, W]: Resize((H, W)), ToTensor, Normalize."""
    from PIL import Image

    h, w = _size_hw(size)
    img = image if isinstance(image, Image.Image) else open_image(image)
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((w, h), Image.Resampling.BILINEAR)  # torchvision Resize((h, w)) on a PIL image
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)  # ToTensor: [0, 1]
    arr = arr.transpose(2, 0, 1)  # HWC -> CHW
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


def load_batch(images: Sequence[str | os.PathLike[str]], size: int | Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
    """Several images as one float32 batch [N, 3, H, W]."""
    if not images:
        raise UsageError("no images given", hint="ckptool predict MODEL IMAGE [IMAGE...]")
    return np.stack([preprocess(p, size) for p in images])


# --------------------------------------------------------------------------------------------- scores
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable), for [N, C] logits."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def top_k(
    logits: np.ndarray, images: Sequence[str], k: int = 5, labels: Sequence[str] | None = None
) -> list[ImagePrediction]:
    """The ``k`` most probable classes per image (softmax over the logits), highest first.

    Ties keep the lower index first, as ``torch.topk`` on CPU does for equal values.
    """
    if k < 1:
        raise UsageError(f"--top must be at least 1, not {k}")
    probs = softmax(logits)
    k = min(k, probs.shape[1])
    out = []
    for name, row in zip(images, probs, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        out.append(
            ImagePrediction(
                str(name),
                [ClassProb(int(i), labels[int(i)] if labels is not None else None, float(row[i])) for i in order],
            )
        )
    return out


def _as_logits(out: Any, model: str) -> np.ndarray:
    arr = np.asarray(out)
    if arr.ndim != 2:
        raise UsageError(
            f"the model's output has shape {list(arr.shape)}, not class scores [N, classes]",
            path=model,
            hint="predict needs a classifier; a features-only model (the backbone) has no classes",
        )
    return arr


# --------------------------------------------------------------------------------------------- onnxruntime
def onnx_input_size(model: str | os.PathLike[str]) -> tuple[tuple[int, int] | None, int | None]:
    """(H, W) and the batch dimension of an ONNX model's image input, from the graph (torch-free).

    Either is None where the graph leaves it symbolic. Raises if the input is not [N, 3, H, W].
    """
    from .formats import open_checkpoint

    model = os.fspath(model)
    ck = open_checkpoint(model)
    if ck.format != "onnx":
        raise UsageError(f"expected an ONNX model, found a {ck.format} file", path=model)
    inputs = ck.metadata.get("inputs") or []
    if len(inputs) != 1:
        raise UsageError(
            f"the model has {len(inputs)} graph inputs; predict feeds one image batch [N, 3, H, W]", path=model
        )
    shape = inputs[0].get("shape") or []
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise UsageError(
            f"the model's input {inputs[0].get('name')!r} has shape {shape}, not an RGB image batch [N, 3, H, W]",
            path=model,
        )
    h, w = shape[2], shape[3]
    hw = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return hw, batch


def run_onnx(model: str | os.PathLike[str], batch: np.ndarray, *, fixed_batch: int | None = None) -> np.ndarray:
    """Logits [N, classes] from onnxruntime (CPU provider). A graph with a fixed batch of 1 runs image by image."""
    from .parity import open_session  # numpy + onnxruntime only: predict on ONNX stays torch-free

    p = os.fspath(model)
    sess = open_session(p)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = batch.astype(dtype, copy=False)
    chunks = [x[i : i + 1] for i in range(len(x))] if fixed_batch == 1 and len(x) > 1 else [x]
    try:
        outs = [sess.run(None, {inp.name: c})[0] for c in chunks]
    except Exception as e:
        raise UsageError(f"onnxruntime could not run the model ({str(e).strip()[:300]})", path=p) from None
    return _as_logits(np.concatenate([np.asarray(o, dtype=np.float32) for o in outs]), p)


# --------------------------------------------------------------------------------------------- torch
def load_torch_model(
    path: str | os.PathLike[str],
    arch: str = "auto",
    *,
    key: str | None = None,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
) -> tuple[Any, str]:
    """The checkpoint's weights in ``arch`` (a registry name, ``module:callable`` or ``"auto"``), loaded
    strictly as ``ckptool check`` accepts them (prefixes stripped, legacy BatchNorm), in eval mode.
    Returns ``(module, architecture name)``. Imports torch."""
    from .formats import open_checkpoint
    from .runtime import load_checked

    ck = open_checkpoint(path, key=key)
    try:
        model, report = load_checked(ck, arch, num_classes=num_classes, arch_args=arch_args)
    finally:
        ck.close()
    return model.eval(), str(report.arch or arch)


def run_torch(model: Any, batch: np.ndarray, *, name: str = "model") -> np.ndarray:
    """Logits [N, classes] from a torch module (eval mode, inference mode, CPU)."""
    import torch

    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(np.ascontiguousarray(batch)))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return _as_logits(out.float().numpy(), name)


# --------------------------------------------------------------------------------------------- the command
def _resolve_labels(labels: str | os.PathLike[str] | Sequence[str] | None, num_classes: int, model: str):
    from .labels import imagenet_labels, read_labels

    if labels is None:
        names, source = imagenet_labels(), "imagenet"
    elif isinstance(labels, (str, os.PathLike)):
        names, source = read_labels(labels), os.fspath(labels)
    else:
        names, source = list(labels), "given"
    if len(names) != num_classes:
        what = "the ImageNet-1k list" if source == "imagenet" else source
        raise UsageError(
            f"the model has {num_classes} output classes but {what} has {len(names)} labels",
            path=model,
            hint=f"pass --labels FILE with {num_classes} lines, one label per line (line i is class i)",
        )
    return names, source


def is_onnx(path: str | os.PathLike[str]) -> bool:
    from .formats import detect_format

    return detect_format(path) == "onnx"


def predict(
    model: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    arch: str | None = None,
    top: int = 5,
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    key: str | None = None,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
) -> PredictReport:
    """Classify ``images`` as one batch with ``model``: an ONNX file (onnxruntime, torch-free, no ``arch``)
    or a checkpoint (torch; ``arch`` is a registry name, ``module:callable``, or ``"auto"``/None to identify
    a registry architecture from the weights, as ``ckptool check`` does)."""
    mpath = os.fspath(model)
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if not images:
        raise UsageError("no images given", hint="ckptool predict MODEL IMAGE [IMAGE...]")
    notes: list[str] = []
    if is_onnx(mpath):
        if arch is not None:
            raise UsageError("--arch applies to checkpoints; an ONNX model carries its own graph", path=mpath)
        if key is not None:
            raise UsageError("--key applies to torch checkpoints, not ONNX models", path=mpath)
        require("onnxruntime", "PIL", extra="onnx", what="predict on an ONNX model")
        graph_hw, fixed_batch = onnx_input_size(mpath)
        if size is not None and graph_hw is not None and _size_hw(size) != graph_hw:
            h, w = _size_hw(size)
            raise UsageError(
                f"--size {h}x{w} does not fit the model, whose graph takes {graph_hw[0]}x{graph_hw[1]} images",
                path=mpath,
            )
        hw = graph_hw or _size_hw(size if size is not None else DEFAULT_SIZE)
        batch = load_batch(images, hw)
        logits = run_onnx(mpath, batch, fixed_batch=fixed_batch)
        if fixed_batch == 1 and len(images) > 1:
            notes.append("the graph has a fixed batch of 1: images ran one at a time")
        backend = "onnxruntime"
    else:
        require("torch", "PIL", extra="torch", what="predict on a checkpoint")
        hw = _size_hw(size if size is not None else DEFAULT_SIZE)
        batch = load_batch(images, hw)  # before torch: a bad image fails fast
        net, arch = load_torch_model(mpath, arch or "auto", key=key, num_classes=num_classes, arch_args=arch_args)
        logits = run_torch(net, batch, name=mpath)
        backend = "torch"
    n_classes = int(logits.shape[1])
    names, source = _resolve_labels(labels, n_classes, mpath)
    preds = top_k(logits, [os.fspath(p) for p in images], top, names)
    return PredictReport(mpath, backend, arch, hw, n_classes, source, preds, notes)
