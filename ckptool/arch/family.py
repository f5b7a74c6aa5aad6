"""The family registry, modelled on torchvision's ``register_model`` / ``list_models`` / ``get_model``.

A family is one module of this package (``ckptool/arch/<family>.py``) that subclasses :class:`Family` and
ends with one line, ``register_family(MyFamily())``. Nothing outside that module names the family: the
registry finds family modules by listing this package (every module that is not shared infrastructure and
does not end in ``_torch``), so adding a family is adding its file. Importing the registry stays torch-free:
a family's torch code (its ``nn.Module`` classes and forward) lives in ``<family>_torch.py`` and is imported
inside :meth:`Family.build` only.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import replace
from typing import Any

from .spec import ArchSpec, Part

# the modules of this package that are not families
INFRASTRUCTURE = frozenset({"family", "registry", "spec", "custom"})


class Family:
    """What a family supplies. Subclass it, set the class attributes, implement :meth:`spec` and
    :meth:`build`, and register one instance with :func:`register_family`.

    - ``name``: the family's name ("resnet"); ``variants``: its registry names, in display order.
    - :meth:`spec`: the variant's module sequence in forward order, with paper names, weight-layer ordinals
      and the parameters/buffers each module owns, hence the expected state_dict (names, shapes, dtypes).
      Torch-free: it is what ``check``, ``layers`` and ``archs`` use.
    - :meth:`build`: the real ``nn.Module`` (torch, imported lazily); its ``state_dict()`` must hold exactly
      the keys and shapes :meth:`spec` promises (a test holds every family to this).
    - ``parts``: named parts for ``--part`` and backbone-only files; ``backbone``: the part
      ``export --onnx --features-only`` exports; :meth:`part_module` takes it out of a built model.
    - what tells the variants apart is the expected state_dict itself: identification scores key names
      *and* shapes, so variants with the same keys and other shapes (resnet50, resnext50_32x4d) are told
      apart, and ``check`` names the key that decided between close siblings.
    - :meth:`label` (how check names a variant to a user) and :meth:`details` (the ``archs`` columns).
    """

    name: str = ""
    variants: tuple[str, ...] = ()
    parts: tuple[Part, ...] = ()
    backbone: str | None = None
    input_shape: tuple[int, ...] = (1, 3, 224, 224)

    def spec(self, variant: str, num_classes: int) -> ArchSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, variant: str, num_classes: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def part_module(self, model: Any, part: Part) -> Any:
        """The built ``part`` of a built model: by default its one sub-module."""
        return model.get_submodule(part.modules[0])

    def label(self, variant: str) -> str:
        return variant

    def details(self, variant: str) -> dict[str, Any]:
        return {}

    def full_spec(self, variant: str, num_classes: int) -> ArchSpec:
        """:meth:`spec` with the registry's wiring: family, parts, backbone and the (lazy) builder."""
        spec = self.spec(variant, num_classes)
        return replace(
            spec,
            family=self.name,
            source="registry",
            num_classes=num_classes,
            parts=spec.parts or self.parts,
            backbone=spec.backbone or self.backbone,
            part_module=self.part_module,
            builder=functools.partial(self.build, variant, num_classes),
        )


_FAMILIES: dict[str, Family] = {}
_BY_VARIANT: dict[str, Family] = {}
_DISCOVERED: list[bool] = []


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (its module calls this once, at import). Returns it."""
    if not family.name or not family.variants:
        raise ValueError("a family needs a name and at least one variant")
    for v in family.variants:
        other = _BY_VARIANT.get(v)
        if other is not None and other.name != family.name:
            raise ValueError(f"variant {v!r} of {family.name!r} is already registered by {other.name!r}")
    old = _FAMILIES.pop(family.name, None)
    if old is not None:
        for v in old.variants:
            _BY_VARIANT.pop(v, None)
    _FAMILIES[family.name] = family
    for v in family.variants:
        _BY_VARIANT[v] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests register throw-away families)."""
    fam = _FAMILIES.pop(name, None)
    if fam is not None:
        for v in fam.variants:
            if _BY_VARIANT.get(v) is fam:
                del _BY_VARIANT[v]


@functools.lru_cache(maxsize=1)
def _family_modules() -> tuple[str, ...]:
    return tuple(family_modules())


def family_modules() -> list[str]:
    """The family modules of this package, found by listing it (no list of names to keep in sync)."""
    out = []
    for info in pkgutil.iter_modules(_package_path()):
        n = info.name
        if n.startswith("_") or n.endswith("_torch") or n in INFRASTRUCTURE:
            continue
        out.append(n)
    return sorted(out)


def _package_path() -> list[str]:
    import os

    return [os.path.dirname(os.path.abspath(__file__))]


def _discover() -> None:
    if _DISCOVERED:
        return
    _DISCOVERED.append(True)
    for n in _family_modules():
        importlib.import_module(f"{__package__}.{n}")


def list_families() -> list[Family]:
    """Every registered family, in registration order (the package's family modules by name, then any
    registered later)."""
    _discover()
    order = {m: i for i, m in enumerate(_family_modules())}
    fams = list(_FAMILIES.values())
    return sorted(fams, key=lambda f: order.get(type(f).__module__.rsplit(".", 1)[-1], len(order)))


def get_family(name: str) -> Family:
    _discover()
    return _FAMILIES[name]


def family_of(variant: str) -> Family | None:
    """The family that registers ``variant``, or None."""
    _discover()
    return _BY_VARIANT.get(variant)


def list_models() -> list[str]:
    """Every registered variant name: each family's variants, family by family."""
    return [v for f in list_families() for v in f.variants]
