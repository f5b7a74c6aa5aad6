"""Options shared by several commands, as Annotated aliases (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PathArg = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint file: .pth/.pt/.bin/.ckpt (torch zip or legacy), .safetensors, .onnx.", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Where the state_dict sits in a training checkpoint (e.g. state_dict, model.ema). Default: found automatically.",
        show_default=False,
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
