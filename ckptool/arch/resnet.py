"""The ResNet family as data: torchvision's ``resnet.py`` layout for ResNet, ResNeXt and Wide ResNet.

Keys: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv1/bn1/conv2/bn2[/conv3/bn3]``, ``layer{N}.0.downsample.0/1``
(the projection shortcut, where the stride or the width changes), ``fc``; every BatchNorm has
``num_batches_tracked``; convolutions have no bias. BasicBlock (two 3x3 convs) for resnet18/34, Bottleneck
(1x1, 3x3, 1x1, expansion 4) for the others, with ``groups`` and ``width_per_group`` (ResNeXt, Wide ResNet)
and the stride on the 3x3 conv (torchvision's "v1.5").

Paper names (He et al. 2015, table 1): ``conv1``, then the stages ``conv2_x`` ... ``conv5_x``: block ``j`` of
stage ``s`` is ``conv{s}_{j}``, and its convolutions in order ``conv{s}_{j}a``, ``b`` [, ``c``], like the
authors' released models (res3b_branch2a ...). The 3x3 max pool is ``pool1``, the projection shortcut
``proj{s}_{j}``, the residual add ``add{s}_{j}``, then ``avgpool`` and ``fc``.
"""

from __future__ import annotations

from typing import Any

from .family import Family, register_family
from .spec import ArchSpec, ModuleSpec, Part

__all__ = ["VARIANTS", "resnet_spec"]

BASIC, BOTTLENECK = "BasicBlock", "Bottleneck"
EXPANSION = {BASIC: 1, BOTTLENECK: 4}
# name -> (block, blocks per stage, groups, width_per_group)
VARIANTS: dict[str, tuple[str, tuple[int, int, int, int], int, int]] = {
    "resnet18": (BASIC, (2, 2, 2, 2), 1, 64),
    "resnet34": (BASIC, (3, 4, 6, 3), 1, 64),
    "resnet50": (BOTTLENECK, (3, 4, 6, 3), 1, 64),
    "resnet101": (BOTTLENECK, (3, 4, 23, 3), 1, 64),
    "resnet152": (BOTTLENECK, (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": (BOTTLENECK, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (BOTTLENECK, (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": (BOTTLENECK, (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": (BOTTLENECK, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (BOTTLENECK, (3, 4, 23, 3), 1, 128),
}
BACKBONE = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
BN_BUFFERS = "running_mean", "running_var", "num_batches_tracked"


def _conv(path: str, name: str, cin: int, cout: int, k: int, groups: int, ordinal: int | None) -> ModuleSpec:
    return ModuleSpec(path, "Conv2d", name, ordinal, params=(("weight", (cout, cin // groups, k, k)),))


def _bn(path: str, name: str, c: int) -> ModuleSpec:
    return ModuleSpec(
        path, "BatchNorm2d", name, params=(("weight", (c,)), ("bias", (c,))),
        buffers=(("running_mean", (c,)), ("running_var", (c,)), ("num_batches_tracked", ())),
    )  # fmt: skip


def depth(variant: str) -> int:
    """The depth the name counts: the convolutions on the main path plus fc (resnet50: 49 + 1)."""
    block, layers, _, _ = VARIANTS[variant]
    return 2 + sum(layers) * (2 if block == BASIC else 3)


def resnet_spec(variant: str, num_classes: int = 1000) -> ArchSpec:
    """torchvision's ``variant`` (one of :data:`VARIANTS`) with a ``num_classes`` head, wired as the registry
    wires it."""
    return RESNET.full_spec(variant, num_classes)


def _modules(variant: str, num_classes: int) -> ArchSpec:
    block, layers, groups, base_width = VARIANTS[variant]
    exp = EXPANSION[block]
    n = 1
    mods: list[ModuleSpec] = [
        _conv("conv1", "conv1", 3, 64, 7, 1, n),
        _bn("bn1", "bn1", 64),
        ModuleSpec("relu", "ReLU", "relu1"),
        ModuleSpec("maxpool", "MaxPool2d", "pool1"),
    ]
    inplanes = 64
    projections = 0
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=2):
        for j in range(blocks):
            path = f"layer{stage - 1}.{j}"
            tag = f"{stage}_{j + 1}"
            stride = 2 if stage > 2 and j == 0 else 1
            if block == BASIC:
                width = planes
                steps = [("conv1", "bn1", inplanes, width, 3), ("conv2", "bn2", width, width, 3)]
                conv_groups = [1, 1]
            else:
                width = int(planes * (base_width / 64.0)) * groups
                steps = [
                    ("conv1", "bn1", inplanes, width, 1),
                    ("conv2", "bn2", width, width, 3),
                    ("conv3", "bn3", width, planes * exp, 1),
                ]
                conv_groups = [1, groups, 1]
            for i, ((cname, bname, cin, cout, k), g) in enumerate(zip(steps, conv_groups, strict=True)):
                letter = "abc"[i]
                n += 1
                mods.append(_conv(f"{path}.{cname}", f"conv{tag}{letter}", cin, cout, k, g, n))
                mods.append(_bn(f"{path}.{bname}", f"bn{tag}{letter}", cout))
                if i < len(steps) - 1:
                    mods.append(ModuleSpec(f"{path}.relu", "ReLU", f"relu{tag}{letter}"))
            if j == 0 and (stride != 1 or inplanes != planes * exp):
                projections += 1
                mods.append(_conv(f"{path}.downsample.0", f"proj{tag}", inplanes, planes * exp, 1, 1, None))
                mods.append(_bn(f"{path}.downsample.1", f"proj{tag}_bn", planes * exp))
            mods.append(ModuleSpec(path, "Add", f"add{tag}"))
            mods.append(ModuleSpec(f"{path}.relu", "ReLU", f"relu{tag}"))
            inplanes = planes * exp
    mods.append(ModuleSpec("avgpool", "AdaptiveAvgPool2d", "avgpool"))
    n += 1
    mods.append(
        ModuleSpec("fc", "Linear", "fc", n, params=(("weight", (num_classes, 512 * exp)), ("bias", (num_classes,))))
    )
    kind = "ResNeXt" if groups > 1 else "Wide ResNet" if base_width > 64 else "ResNet"
    extra = f", groups {groups}, width per group {base_width}" if (groups, base_width) != (1, 64) else ""
    desc = f"{kind}-{n} ({block}, blocks {'-'.join(map(str, layers))}{extra}), torchvision layout"
    convs = n - 1
    note = (
        f"{variant} counts {convs} convolutions + 1 fc = {n} weight layers; the {projections} projection "
        "shortcuts (downsample.0) are convolutions the name's depth does not count: they have no ordinal"
    )
    return ArchSpec(variant, tuple(mods), (1, 3, 224, 224), description=desc, head="fc", notes=(note,))


class ResNetFamily(Family):
    """torchvision's ResNet / ResNeXt / Wide ResNet. Variants with the same keys (resnet50, resnext50_32x4d,
    wide_resnet50_2) differ in the shapes of the bottleneck convolutions (groups, width), which the
    identification scores."""

    name = "resnet"
    variants = tuple(VARIANTS)
    parts = (Part("backbone", BACKBONE, keep_paths=True),)
    backbone = "backbone"

    def spec(self, variant: str, num_classes: int) -> ArchSpec:
        return _modules(variant, num_classes)

    def build(self, variant: str, num_classes: int) -> Any:
        from .resnet_torch import ResNet

        block, layers, groups, width = VARIANTS[variant]
        return ResNet(block, list(layers), num_classes=num_classes, groups=groups, width_per_group=width)

    def part_module(self, model: Any, part: Part) -> Any:
        from .resnet_torch import Backbone

        return Backbone(model, part.modules)

    def details(self, variant: str) -> dict[str, Any]:
        block, layers, groups, width = VARIANTS[variant]
        return {"block": block, "layers": list(layers), "groups": groups, "width_per_group": width}


RESNET = register_family(ResNetFamily())
