"""Names → :class:`ArchSpec`: the registry (torch-free) and the door to ``module:callable`` models.

- a registry name: a variant of a registered family (``ckptool.arch.family``; each family is one module of
  this package, described as data); no torch.
- ``module.path:callable``: any ``nn.Module`` factory, built on the meta device (``ckptool.arch.custom``,
  which imports torch).
- ``torchvision:<builder>``: the same, for ``torchvision.models.<builder>`` when torchvision is installed.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownArchError, UsageError
from .family import family_of, list_families, list_models
from .spec import ArchSpec

AUTO = "auto"


def names() -> list[str]:
    """Every registry architecture name, in a stable order (family by family)."""
    return list_models()


def normalize(name: str) -> str:
    """``VGG16-BN`` → ``vgg16_bn``, ``ResNet-50`` → ``resnet50`` (registry names only; ``module:callable``
    is kept as written)."""
    if ":" in name:
        return name
    key = name.strip().lower().replace("-", "_").replace("/", "_")
    if family_of(key) is None and family_of(key.replace("_", "", 1)) is not None:
        key = key.replace("_", "", 1)  # resnet_50 (from ResNet-50) -> resnet50
    return key


@functools.lru_cache(maxsize=128)
def _registry_spec(name: str, num_classes: int) -> ArchSpec:
    fam = family_of(name)
    if fam is None:
        raise _unknown(name)
    return fam.full_spec(name, num_classes)


def parse_arch_args(pairs: Iterable[str] | None) -> dict[str, str]:
    """``["depth=18", "width=0.5"]`` → ``{"depth": "18", "width": "0.5"}`` (``--arch-arg`` values)."""
    out: dict[str, str] = {}
    for p in pairs or ():
        key, eq, value = p.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise UsageError(f"--arch-arg {p!r} is not of the form key=value", hint="e.g. --arch-arg num_classes=10")
        out[key] = value.strip()
    return out


def _unknown(name: str) -> UnknownArchError:
    close = difflib.get_close_matches(name.lower(), names(), n=3, cutoff=0.6)
    maybe = f"did you mean {' or '.join(close)}? " if close else ""
    return UnknownArchError(
        f"unknown architecture {name!r}: {maybe}known: {', '.join(names())}",
        hint="or name any model as module.path:callable (e.g. mypkg.nets:ONet), or torchvision:<builder>",
    )


def resolve(name: str, *, num_classes: int | None = None, arch_args: dict[str, str] | None = None) -> ArchSpec:
    """The :class:`ArchSpec` called ``name``.

    Registry names need no torch. ``module.path:callable`` and ``torchvision:<builder>`` import torch and
    build the model on the meta device; the spec's ``builder`` builds the real module later. ``arch_args``
    (strings, parsed as Python literals) are passed to the callable; for registry names only
    ``num_classes`` is accepted there. Raises :class:`UnknownArchError` (exit 2) with the known names.
    """
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes must be a positive integer, not {num_classes}")
    if not name or not name.strip():
        raise _unknown(name)
    if ":" in name:
        from .custom import custom_spec

        return custom_spec(name.strip(), num_classes=num_classes, arch_args=arch_args)
    key = normalize(name)
    if key == AUTO:
        raise UsageError("--arch auto is resolved from the weights (ckptool check / layers), not by name")
    if family_of(key) is None:
        raise _unknown(name)
    args = dict(arch_args or {})
    if "num_classes" in args:
        try:
            from_args = int(args.pop("num_classes"))
        except ValueError:
            raise UsageError("--arch-arg num_classes must be an integer") from None
        if num_classes is not None and num_classes != from_args:
            raise UsageError(f"--num-classes {num_classes} and --arch-arg num_classes={from_args} disagree")
        num_classes = from_args
        if num_classes < 1:
            raise UsageError(f"num_classes must be a positive integer, not {num_classes}")
    if args:
        raise UsageError(
            f"--arch-arg {', '.join(args)}: {key} takes only num_classes",
            hint="--arch-arg is for module:callable architectures",
        )
    return _registry_spec(key, 1000 if num_classes is None else num_classes)


def resolve_part(spec: ArchSpec, part: str | None) -> ArchSpec:
    """``spec`` itself, or its sub-module ``part`` (e.g. "features"); a clear error when there is none."""
    if not part:
        return spec
    sub = spec.part(part)
    if not sub.modules:
        raise UsageError(
            f"--part {part}: {spec.name} has no sub-module {part!r}",
            hint=f"its parts are: {', '.join(spec.part_names())}",
        )
    return sub


def registry_parts() -> list[str]:
    """Every part name some registry architecture has (for ``check --arch auto --part``)."""
    out: list[str] = []
    for fam in list_families():
        spec = _registry_spec(fam.variants[0], 1000)
        out.extend(p for p in spec.part_names() if p not in out)
    return out


@dataclass(frozen=True)
class ArchInfo:
    """One row of ``ckptool archs``."""

    name: str
    family: str
    weight_layers: int
    params: int
    modules: dict[str, int]
    description: str
    parts: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # the family's own columns (VGG: config, batch_norm)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            **self.details,
            "weight_layers": self.weight_layers,
            "params": self.params,
            "modules": self.modules,
            "parts": self.parts,
            "description": self.description,
        }


def describe() -> list[ArchInfo]:
    """Every registry architecture with its size (1000 classes), for ``ckptool archs``."""
    out = []
    for fam in list_families():
        for n in fam.variants:
            spec = _registry_spec(n, 1000)
            out.append(
                ArchInfo(
                    n, fam.name, spec.weight_layers, spec.n_params, spec.container_counts(), spec.description,
                    [p.name for p in spec.parts], fam.details(n),
                )
            )  # fmt: skip
    return out


def label(spec: ArchSpec) -> str:
    """How check names ``spec`` to a user: the family's label ("vgg16 (no BN)"), with " features-only" for
    a part."""
    base, part = split_part(spec.name)
    fam = family_of(base) if spec.source == "registry" else None
    text = fam.label(base) if fam is not None else base
    return f"{text} {part}-only" if part else text


def split_part(name: str) -> tuple[str, str | None]:
    """``vgg16[features]`` → ``("vgg16", "features")``."""
    if name.endswith("]") and "[" in name:
        base, _, rest = name.partition("[")
        return base, rest[:-1]
    return name, None


def torchvision_available() -> bool:
    """Whether ``torchvision:<builder>`` can work here (checked without importing anything)."""
    return importlib.util.find_spec("torchvision") is not None


__all__ = [
    "AUTO",
    "ArchInfo",
    "UnknownArchError",
    "describe",
    "label",
    "names",
    "normalize",
    "parse_arch_args",
    "registry_parts",
    "resolve",
    "resolve_part",
    "split_part",
    "torchvision_available",
]
