"""Architecture descriptions as data (torch-free): the module sequence, with types, paper-style names,
weight-layer ordinals and the parameters/buffers each module owns."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

# load_state_dict tolerates a missing ``num_batches_tracked`` on these (files saved before torch 0.4.1)
BATCHNORM_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")
# the layers the article numbers ("weight layers"): convolutions and fully connected layers
WEIGHT_LAYER_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear")


def join_key(path: str, name: str) -> str:
    """The state_dict key of parameter/buffer ``name`` of the module at ``path`` ("" is the root)."""
    return f"{path}.{name}" if path else name


@dataclass(frozen=True)
class ModuleSpec:
    path: str  # "features.0"
    type: str  # "Conv2d", "BatchNorm2d", "ReLU", ...
    name: str | None = None  # paper-style name: "conv1_1"
    weight_layer: int | None = None  # 1-based ordinal of conv/linear layers
    params: tuple[tuple[str, tuple[int, ...]], ...] = ()  # learnable: ("weight", (64, 3, 3, 3))
    buffers: tuple[tuple[str, tuple[int, ...]], ...] = ()  # running_mean, ...; num_batches_tracked is ()
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for _, s in self.params)

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        return next((s for n, s in self.params if n == "weight"), None)

    @property
    def container(self) -> str:
        return self.path.rsplit(".", 1)[0] if "." in self.path else ""

    @property
    def is_batchnorm(self) -> bool:
        return self.type in BATCHNORM_TYPES


@dataclass(frozen=True)
class Part:
    """A named part of a family's model, for ``--part`` and backbone-only files.

    ``modules`` are top-level module paths. With ``keep_paths`` False the part is one sub-module whose keys
    lose its prefix (VGG's ``features``, saved as ``model.features.state_dict()``); with ``keep_paths`` True
    the part is the listed top-level modules with their own names (ResNet's backbone: everything but ``fc``,
    saved as ``model.state_dict()`` without the head)."""

    name: str
    modules: tuple[str, ...]
    keep_paths: bool = False


@dataclass(frozen=True)
class ArchSpec:
    """An architecture as data.

    Registry architectures come from their family (``ckptool.arch.<family>``): ``modules`` is the forward
    sequence with paper names, built torch-free. Every spec that can be run carries a ``builder``: a
    no-argument callable returning the real ``nn.Module`` (runtime code calls it under a ``torch.device``
    context). For ``module:callable`` (or ``torchvision:<builder>``) the ``modules`` were read from an
    instance built on the meta device.

    ``modules`` may list one module more than once (a ReLU a residual block calls twice) and parameter-free
    steps that are no module (the residual add, type ``Add``); ``state_order`` then gives torch's key order
    when it differs from the forward order. ``parts`` are the family's named parts (beside the top-level
    sub-modules), ``backbone`` the part ``--features-only`` exports, ``part_module`` how a built model
    yields a part.
    """

    name: str
    modules: tuple[ModuleSpec, ...]
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    family: str = ""
    description: str = ""
    source: str = "registry"  # registry | custom | torchvision | inferred
    num_classes: int | None = None
    head: str | None = None  # path of the classification head ("classifier.6"), if any
    builder: Callable[[], Any] | None = field(default=None, compare=False, hash=False, repr=False)
    dtypes: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)  # key -> dtype
    parts: tuple[Part, ...] = ()
    backbone: str | None = None  # the part --features-only exports ("features", "backbone")
    part_module: Callable[[Any, Part], Any] | None = field(default=None, compare=False, hash=False, repr=False)
    state_order: tuple[str, ...] = ()  # torch's key order, when it is not the forward order of ``modules``
    notes: tuple[str, ...] = ()  # what the layer table should say about this architecture (e.g. its depth)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected state_dict keys (in torch's order) and their shapes (computed once; do not mutate)."""
        hit = self._cache.get("shapes")
        if hit is None:
            hit = self._cache["shapes"] = self._shapes()
        return hit  # type: ignore[no-any-return]

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for m in self.modules:
            for n, s in m.params + m.buffers:
                out[join_key(m.path, n)] = s
        if self.state_order:
            out = {k: out[k] for k in self.state_order if k in out} | out
        return out

    def expected_dtype(self, key: str) -> str:
        """The dtype the model holds for ``key`` (float32 unless the spec says otherwise)."""
        if key in self.dtypes:
            return self.dtypes[key]
        return "int64" if key.endswith("num_batches_tracked") else "float32"

    def optional_keys(self) -> set[str]:
        """Keys load_state_dict tolerates when missing (BatchNorm's num_batches_tracked, as in pre-1.0 files)."""
        hit = self._cache.get("optional")
        if hit is None:
            hit = self._cache["optional"] = {
                join_key(m.path, "num_batches_tracked") for m in self.modules if m.is_batchnorm
            }
        return hit  # type: ignore[no-any-return]

    @property
    def weight_layers(self) -> int:
        return sum(1 for m in self.modules if m.weight_layer is not None)

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.modules)

    def containers(self) -> list[str]:
        """Top-level children that hold modules, in order (e.g. ["features", "avgpool", "classifier"])."""
        out: list[str] = []
        for m in self.modules:
            top = m.path.split(".", 1)[0]
            if top and top not in out:
                out.append(top)
        return out

    def container_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.modules:
            if m.container:
                counts[m.container] = counts.get(m.container, 0) + 1
        return counts

    def part_names(self) -> list[str]:
        """What ``--part`` accepts: the top-level sub-modules, then the family's other named parts."""
        out = self.containers()
        out.extend(p.name for p in self.parts if p.name not in out)
        return out

    def declared_part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def part(self, prefix: str) -> ArchSpec:
        """The sub-architecture ``prefix``: a family part (e.g. ResNet's "backbone"), or the sub-module under
        ``prefix`` (e.g. "features"), with the prefix stripped from paths."""
        declared = self.declared_part(prefix.strip("."))
        if declared is not None and declared.keep_paths:
            return self._kept_part(declared)
        pre = prefix.strip(".")
        mods = tuple(
            replace(m, path=m.path[len(pre) + 1 :]) if m.path != pre else replace(m, path="")
            for m in self.modules
            if m.path == pre or m.path.startswith(pre + ".")
        )
        head = self.head[len(pre) + 1 :] if self.head and self.head.startswith(pre + ".") else None
        dts = {k[len(pre) + 1 :]: v for k, v in self.dtypes.items() if k.startswith(pre + ".")}
        builder = None
        if self.builder is not None:
            parent = self.builder

            def builder() -> Any:
                return parent().get_submodule(pre)

        order = tuple(k[len(pre) + 1 :] for k in self.state_order if k.startswith(pre + "."))
        return replace(
            self, name=f"{self.name}[{pre}]", modules=mods, description=f"{pre} of {self.name}",
            head=head, builder=builder, dtypes=dts, parts=(), backbone=None, state_order=order, notes=(),
        )  # fmt: skip

    def _kept_part(self, p: Part) -> ArchSpec:
        tops = set(p.modules)
        mods = tuple(m for m in self.modules if m.path.split(".", 1)[0] in tops or (not m.path and "" in tops))
        keys = {join_key(m.path, n) for m in mods for n, _ in m.params + m.buffers}
        builder = None
        if self.builder is not None:
            parent, extract = self.builder, self.part_module

            def builder() -> Any:
                model = parent()
                return extract(model, p) if extract is not None else model

        head = self.head if self.head and self.head.split(".", 1)[0] in tops else None
        return replace(
            self, name=f"{self.name}[{p.name}]", modules=mods, description=f"{p.name} of {self.name}",
            head=head, builder=builder, dtypes={k: v for k, v in self.dtypes.items() if k in keys}, parts=(),
            backbone=None, state_order=tuple(k for k in self.state_order if k in keys), notes=(),
        )  # fmt: skip
