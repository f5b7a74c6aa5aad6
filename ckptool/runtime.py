"""The torch side, shared by the commands that run a model. Importing this module imports torch."""

from __future__ import annotations

from typing import Any

from ._extras import require

require("torch", extra="torch", what="running a model")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from .arch.spec import ArchSpec  # noqa: E402


def build_module(spec: ArchSpec, device: str | torch.device | None = None) -> nn.Module:
    """An nn.Module for an ArchSpec (on ``device``; "meta" costs no memory), by calling its ``builder``
    (the family's ``build``, or the ``module:callable``) under the device context."""
    if spec.builder is None:
        raise UsageError(f"{spec.name} has no builder: it cannot be built as a torch module")
    with torch.device(device or "cpu"):
        module = spec.builder()
    if not isinstance(module, nn.Module):
        raise TypeError(f"{spec.name} built a {type(module).__name__}, not an nn.Module")
    return module


# ---------------------------------------------------------------------------------------------------
# values and loading (shared by export --onnx, parity and predict)
# ---------------------------------------------------------------------------------------------------
import warnings  # noqa: E402
from collections.abc import Iterable  # noqa: E402

from . import dtypes  # noqa: E402
from .checkpoint import Checkpoint, StorageInfo, TensorInfo  # noqa: E402
from .errors import (  # noqa: E402
    CorruptFileError,
    KeyNotFoundError,
    UsageError,
    WeightsMismatchError,
    first_line,
)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a ckptool dtype name ("float32", "bfloat16", ...)."""
    dt = getattr(torch, dtypes.lookup(name).name, None)
    if not isinstance(dt, torch.dtype):
        raise UsageError(f"dtype {name} has no torch equivalent here")
    return dt


class _StorageCache:
    """One flat uint8 tensor per storage, so tensors that share a storage share memory (as torch.load does).

    Raw little-endian bytes (:meth:`Checkpoint.is_raw`) are viewed in place through the checkpoint's Source,
    copy-on-write: no bytes are read until used, nothing is copied, and a write to a tensor (never done by
    ckptool) would stay private to the process. Misaligned storages are read once into an aligned tensor.
    """

    def __init__(self, ck: Checkpoint):
        self.ck = ck
        self.flat: dict[tuple[str, str], torch.Tensor] = {}

    def raw(self, st: StorageInfo) -> torch.Tensor | None:
        """The storage's bytes as a uint8 tensor, or None when they cannot be used in place."""
        src = st.source
        if src is None:
            raise CorruptFileError(f"storage {st.key!r} has no bytes in the file", path=self.ck.path)
        key = (src.path, st.key)
        hit = self.flat.get(key)
        if hit is not None:
            return hit
        if not self.ck.is_raw(st):
            return None
        source = self.ck.source(src.path)
        view = None if src.nbytes == 0 or src.offset % 8 else source.view(src.offset, src.nbytes, writable=True)
        if src.nbytes == 0:
            t = torch.empty(0, dtype=torch.uint8)
        elif view is None:  # misaligned for its dtype (legacy files), or not mappable: one aligned copy
            t = torch.empty(src.nbytes, dtype=torch.uint8)
            source.read_into(src.offset, t.numpy().data)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = torch.frombuffer(view, dtype=torch.uint8)
        self.flat[key] = t
        return t


def _tensor_from(ck: Checkpoint, t: TensorInfo, cache: _StorageCache) -> torch.Tensor:
    dt = torch_dtype(t.dtype)
    if t.storage is None:
        raise CorruptFileError(f"tensor {t.name!r} has no storage", path=ck.path)
    if t.numel == 0:
        return torch.empty(t.shape, dtype=dt)
    size = t.itemsize
    lo, hi = t.span()
    src = t.storage.source
    raw_src = src is not None and src.decoder is None
    if lo < 0 or hi * size > t.storage.nbytes or (raw_src and src is not None and hi * size > src.nbytes):
        raise CorruptFileError(
            f"tensor {t.name!r} reaches element {hi} of a storage that holds {t.storage.nbytes // size}", path=ck.path
        )
    raw = cache.raw(t.storage)
    usable = raw is not None and raw.numel() % size == 0 and raw.data_ptr() % size == 0
    if not usable:  # decode / inflate / swap / realign: the tensor's own elements, copied once
        data = bytearray(ck.read_bytes(t))
        return torch.frombuffer(data, dtype=dt).reshape(t.shape)
    assert raw is not None
    base = raw.view(dt)
    stride = t.stride if t.stride is not None else t.contiguous_stride
    return base.as_strided(t.shape, stride, t.storage_offset)


def tensors_from_checkpoint(ck: Checkpoint, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (all, or ``names``, in that order) as torch tensors, without loading the file.

    Raw little-endian bytes (torch zip records, legacy storages, safetensors, ONNX raw_data and external data)
    are mapped copy-on-write and viewed in place with ``torch.frombuffer``: no copy, and views, strides and
    shared storages come out exactly as ``torch.load`` builds them. bfloat16 and every other torch dtype work
    the same way. Compressed zip records, ONNX typed fields, big-endian files and misaligned data are copied
    once. Raises :class:`KeyNotFoundError` for an unknown name and :class:`CorruptFileError` for a tensor whose
    bytes are not in the file.
    """
    by_name = {t.name: t for t in ck.tensors}
    wanted = list(by_name) if names is None else list(names)
    cache = _StorageCache(ck)
    out: dict[str, torch.Tensor] = {}
    for n in wanted:
        t = by_name.get(n)
        if t is None:
            raise KeyNotFoundError(f"no tensor named {n!r}", path=ck.path)
        out[n] = _tensor_from(ck, t, cache)
    return out


def _fit_summary(report: Any) -> list[str]:
    parts: list[str] = []

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    if report.missing:
        parts.append(f"{len(report.missing)} missing ({some(report.missing)})")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected ({some(report.unexpected)})")
    if report.mismatched:
        d = report.mismatched[0]
        more = f" and {len(report.mismatched) - 1} more" if len(report.mismatched) > 1 else ""
        parts.append(
            f"{len(report.mismatched)} of a different shape ({d['key']}: file {d['found']}, model {d['expected']}{more})"
        )
    return parts


def load_checked(
    ck: Checkpoint,
    arch: str,
    *,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
    part: str | None = None,
) -> tuple[nn.Module, Any]:
    """:func:`load_model`, also returning the :class:`ckptool.compat.CompatReport` that decided the mapping."""
    from .compat import check

    report = check(ck, arch, num_classes=num_classes, part=part, arch_args=arch_args)
    if not report.compatible or report.spec is None:
        what = report.arch or (arch if arch != "auto" else "any known architecture")
        if report.part:
            what += f" (--part {report.part})"
        reasons = list(report.findings) + _fit_summary(report)
        raise WeightsMismatchError(
            f"the weights do not fit {what}: " + ("; ".join(reasons) or "no architecture matches"),
            path=ck.path,
            hint=f"ckptool check {ck.path} --arch {arch} shows the full report",
        )
    spec = report.spec
    expected = spec.state_dict_shapes()
    file_for = {mk: fk for fk, mk in report.key_map.items() if mk in expected}
    try:
        module = build_module(spec, device="meta")
        on_meta = True
    except Exception:  # a constructor that computes with its tensors: build it for real
        module = build_module(spec)
        on_meta = False
    holds = module.state_dict()
    values = tensors_from_checkpoint(ck, list(file_for.values()))
    sd: dict[str, torch.Tensor] = {}
    for mk, fk in file_for.items():
        v = values[fk]
        want = holds.get(mk)
        if isinstance(want, torch.Tensor) and want.dtype != v.dtype:
            v = v.to(want.dtype)  # what load_state_dict's copy_ does: fp16/bf16 files into a float32 model
        sd[mk] = v
    for mk in report.optional_missing:  # pre-0.4.1 BatchNorm: torch fills the counter in the same way
        sd[mk] = torch.zeros((), dtype=torch.long)
    try:
        if on_meta:
            module.load_state_dict(sd, strict=True, assign=True)
        else:
            module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsMismatchError(
            f"the weights do not load into {report.arch or arch}: {first_line(e, 10**6)}", path=ck.path
        ) from None
    if on_meta:
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:  # non-persistent buffers (not in any state_dict): build for real and copy the weights in
            module = build_module(spec)
            module.load_state_dict(sd, strict=True)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), report


def load_model(
    ck: Checkpoint,
    arch: str,
    *,
    num_classes: int | None = None,
    arch_args: dict[str, str] | None = None,
    part: str | None = None,
) -> nn.Module:
    """The checkpoint's weights in ``arch`` (a registry name, ``module:callable``, or ``"auto"``), loaded
    strictly, in eval mode, with no gradients.

    Accepts exactly what ``ckptool check`` accepts: a ``module.`` / ``model.`` / ``_orig_mod.`` (or other
    detected) prefix is stripped, a missing BatchNorm ``num_batches_tracked`` (files from before torch 0.4.1)
    is filled with 0, and half-precision values are cast to the model's dtype, as ``load_state_dict`` does.
    The parameters are the file's own bytes, mapped copy-on-write (see :func:`tensors_from_checkpoint`),
    so loading costs no copy. When the weights do not fit, raises :class:`WeightsMismatchError` (exit 2)
    whose message shows check's findings.
    """
    return load_checked(ck, arch, num_classes=num_classes, arch_args=arch_args, part=part)[0]
