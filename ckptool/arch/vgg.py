"""The VGG family as data: torchvision's cfg tables (A/B/D/E) and one builder of the module sequence.

The layout matches torchvision's ``vgg.py`` exactly: ``features.N`` (conv [bn] relu ... maxpool),
``avgpool`` (AdaptiveAvgPool2d(7, 7)), ``classifier.0/3/6`` (Linear, ReLU, Dropout, Linear, ReLU, Dropout,
Linear). Paper-style names follow the article: conv{block}_{i}, bn{block}_{i}, relu{block}_{i}, pool{block},
fc6, relu6, drop6, fc7, relu7, drop7, fc8.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CFGS", "VARIANTS", "vgg_spec"]

from .family import Family, register_family
from .spec import ArchSpec, ModuleSpec, Part

M = "M"
CFGS: dict[str, list[int | str]] = {
    "A": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "B": [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "D": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "E": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
}
# name -> (cfg, batch_norm)
VARIANTS: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_bn": ("A", True),
    "vgg13": ("B", False),
    "vgg13_bn": ("B", True),
    "vgg16": ("D", False),
    "vgg16_bn": ("D", True),
    "vgg19": ("E", False),
    "vgg19_bn": ("E", True),
}


def vgg_spec(name: str, num_classes: int = 1000) -> ArchSpec:
    """The module sequence of torchvision's ``name`` (one of :data:`VARIANTS`) with a ``num_classes`` head,
    wired as the registry wires it (builder, parts)."""
    return VGG_FAMILY.full_spec(name, num_classes)


def _vgg_modules(name: str, num_classes: int) -> ArchSpec:
    cfg, bn = VARIANTS[name]
    mods: list[ModuleSpec] = []
    idx = 0
    block, conv_in_block, ordinal = 1, 0, 0
    in_ch = 3
    for v in CFGS[cfg]:
        if v == M:
            mods.append(
                ModuleSpec(f"features.{idx}", "MaxPool2d", f"pool{block}", kwargs={"kernel_size": 2, "stride": 2})
            )
            idx += 1
            block += 1
            conv_in_block = 0
            continue
        assert isinstance(v, int)
        conv_in_block += 1
        ordinal += 1
        tag = f"{block}_{conv_in_block}"
        mods.append(
            ModuleSpec(
                f"features.{idx}", "Conv2d", f"conv{tag}", ordinal,
                params=(("weight", (v, in_ch, 3, 3)), ("bias", (v,))),
                kwargs={"in_channels": in_ch, "out_channels": v, "kernel_size": 3, "padding": 1},
            )
        )  # fmt: skip
        idx += 1
        if bn:
            mods.append(
                ModuleSpec(
                    f"features.{idx}", "BatchNorm2d", f"bn{tag}",
                    params=(("weight", (v,)), ("bias", (v,))),
                    buffers=(("running_mean", (v,)), ("running_var", (v,)), ("num_batches_tracked", ())),
                    kwargs={"num_features": v},
                )
            )  # fmt: skip
            idx += 1
        mods.append(ModuleSpec(f"features.{idx}", "ReLU", f"relu{tag}", kwargs={"inplace": True}))
        idx += 1
        in_ch = v
    mods.append(ModuleSpec("avgpool", "AdaptiveAvgPool2d", "avgpool", kwargs={"output_size": (7, 7)}))
    head = [(512 * 7 * 7, 4096, 6), (4096, 4096, 7), (4096, num_classes, 8)]
    ci = 0
    for fin, fout, n in head:
        ordinal += 1
        mods.append(
            ModuleSpec(
                f"classifier.{ci}", "Linear", f"fc{n}", ordinal,
                params=(("weight", (fout, fin)), ("bias", (fout,))),
                kwargs={"in_features": fin, "out_features": fout},
            )
        )  # fmt: skip
        ci += 1
        if n < 8:
            mods.append(ModuleSpec(f"classifier.{ci}", "ReLU", f"relu{n}", kwargs={"inplace": True}))
            mods.append(ModuleSpec(f"classifier.{ci + 1}", "Dropout", f"drop{n}", kwargs={"p": 0.5}))
            ci += 2
    desc = f"VGG config {cfg} ({ordinal} weight layers{', batch norm' if bn else ''}), torchvision layout"
    return ArchSpec(name, tuple(mods), (1, 3, 224, 224), description=desc, head="classifier.6")


class VGGFamily(Family):
    """torchvision's VGG: features (conv [bn] relu ... pool) / avgpool / classifier (fc6, fc7, fc8)."""

    name = "vgg"
    variants = tuple(VARIANTS)
    parts = (Part("features", ("features",)), Part("classifier", ("classifier",)))
    backbone = "features"

    def spec(self, variant: str, num_classes: int) -> ArchSpec:
        return _vgg_modules(variant, num_classes)

    def build(self, variant: str, num_classes: int) -> Any:
        from .vgg_torch import build

        cfg, bn = VARIANTS[variant]
        return build(CFGS[cfg], bn, num_classes)

    def label(self, variant: str) -> str:
        return variant if VARIANTS[variant][1] else f"{variant} (no BN)"

    def details(self, variant: str) -> dict[str, Any]:
        cfg, bn = VARIANTS[variant]
        return {"config": cfg, "batch_norm": bn}


VGG_FAMILY = register_family(VGGFamily())
