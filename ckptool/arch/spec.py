"""Architecture descriptions as data (torch-free): the module sequence, with types, paper-style names,
weight-layer ordinals and the parameters/buffers each module owns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class ArchSpec:
    name: str
    modules: tuple[ModuleSpec, ...]
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    family: str = ""
    description: str = ""

    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected state_dict keys (in module order) and their shapes."""
        out: dict[str, tuple[int, ...]] = {}
        for m in self.modules:
            for n, s in m.params + m.buffers:
                out[f"{m.path}.{n}"] = s
        return out

    def optional_keys(self) -> set[str]:
        """Keys load_state_dict tolerates when missing (BatchNorm's num_batches_tracked, as in pre-1.0 files)."""
        return {f"{m.path}.num_batches_tracked" for m in self.modules if m.type.startswith("BatchNorm")}

    def container_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.modules:
            if m.container:
                counts[m.container] = counts.get(m.container, 0) + 1
        return counts

    def part(self, prefix: str) -> ArchSpec:
        """The sub-architecture under ``prefix`` (e.g. "features"), with the prefix stripped from paths."""
        pre = prefix.rstrip(".") + "."
        mods = tuple(
            ModuleSpec(m.path[len(pre):], m.type, m.name, m.weight_layer, m.params, m.buffers, m.kwargs)
            for m in self.modules if m.path.startswith(pre)
        )  # fmt: skip
        return ArchSpec(f"{self.name}[{prefix}]", mods, self.input_shape, self.family, f"{prefix} of {self.name}")
