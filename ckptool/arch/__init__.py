"""Architectures as data. The registry part is torch-free."""

from .spec import ArchSpec, ModuleSpec
from .vgg import VARIANTS, vgg_spec

__all__ = ["VARIANTS", "ArchSpec", "ModuleSpec", "vgg_spec"]
