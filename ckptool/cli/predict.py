"""`ckptool predict`: classify images with a checkpoint (torch) or an ONNX model (onnxruntime, torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import AllowGlobalOpt, ArchArgOpt, ArchOpt, DownloadOpt, JsonOpt, KeyOpt, NumClassesOpt, TimeoutOpt
from ._output import plural, start

ModelArg = Annotated[
    str,  # not a Path: Path("https://host/f") collapses the "//" of a URL
    typer.Argument(
        help="A checkpoint (.pth/.pt/.bin/.ckpt/.safetensors; needs --arch) or an ONNX model (.onnx; runs on "
        "onnxruntime without torch); a file or a URL.",
        show_default=False,
    ),
]
ImagesArg = Annotated[
    list[Path], typer.Argument(help="Image files (JPEG, PNG, ...); all run as one batch.", show_default=False)
]
TopOpt = Annotated[int, typer.Option("--top", "-k", help="How many classes to show per image.", min=1)]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="Class names, one per line (line i is class i). Default: the 1000 ImageNet-1k names (ckptool labels).",
        show_default=False,
    ),
]
SizeOpt = Annotated[
    int | None,
    typer.Option(
        "--size",
        help="Resize images to SIZE x SIZE (default 224; an ONNX model's own input size wins when its graph fixes one).",
        show_default=False,
        min=1,
    ),
]


def predict(
    model: ModelArg,
    images: ImagesArg,
    arch: ArchOpt = None,
    top: TopOpt = 5,
    labels: LabelsOpt = None,
    size: SizeOpt = None,
    num_classes: NumClassesOpt = None,
    arch_arg: ArchArgOpt = None,
    key: KeyOpt = None,
    json_: JsonOpt = False,
    allow_global: AllowGlobalOpt = None,
    timeout: TimeoutOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Classify images, as the article's last step does: Resize((224, 224)), ToTensor, Normalize(ImageNet), softmax, top-K."""
    from ..arch.registry import parse_arch_args
    from ..predict import predict as run_predict  # numpy, Pillow: loaded only when predict runs

    o = start(json_)
    backend = "onnxruntime" if model.lower().split("?", 1)[0].endswith(".onnx") else "torch"
    with o.status(f"classifying {plural(len(images), 'image')} with {backend}"):
        report = run_predict(
            model,
            images,
            arch=arch,
            top=top,
            labels=labels,
            size=size,
            key=key,
            num_classes=num_classes,
            arch_args=parse_arch_args(arch_arg) or None,
        )
    if json_:
        o.json(report.to_dict())
        return
    h, w = report.input_size
    o.kv(
        [
            ("model", f"{report.model} ({report.arch + ', ' if report.arch else ''}{report.backend})"),
            ("input", f"{plural(len(report.predictions), 'image')} as one batch, {h}x{w}, ImageNet mean/std"),
            ("classes", f"{report.num_classes} ({report.labels} labels)"),
        ]
        + [("note", n) for n in report.notes]
    )
    for p in report.predictions:
        o.blank()
        rows = [(f"{c.prob * 100:.2f}%", c.index, c.label or "") for c in p.top]
        o.table(["prob", "index", "label"], rows, title=p.image, right=(0, 1), fold=(2,))
