"""Architectures as families of data. The registry part is torch-free; see :mod:`ckptool.arch.family`."""

from .family import Family, family_of, get_family, list_families, list_models, register_family
from .spec import ArchSpec, ModuleSpec, Part

__all__ = [
    "ArchSpec",
    "Family",
    "ModuleSpec",
    "Part",
    "family_of",
    "get_family",
    "list_families",
    "list_models",
    "register_family",
]


def __getattr__(name: str) -> object:
    """Names a family module exports (``ckptool.arch.vgg_spec`` as before families), found generically."""
    import importlib

    from .family import family_modules

    for mod in family_modules():
        module = importlib.import_module(f"{__name__}.{mod}")
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
