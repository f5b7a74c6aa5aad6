"""Options shared by several commands, as Annotated aliases (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

PathArg = Annotated[
    str,  # not a Path: Path("https://host/f") collapses the "//" of a URL
    typer.Argument(
        help="Checkpoint file: .pth/.pt/.bin/.ckpt (torch zip or legacy), .safetensors, .onnx; or a URL: "
        "https://, http://, hf://ORG/REPO[@REV][/FILE], s3://, gs:// (header-only range reads).",
        show_default=False,
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


def _timeout(value: float | None) -> float | None:
    if value is not None:  # (no --timeout: the group's invoke reset it; remote sources are imported when used)
        from ..sources import remote

        remote.set_timeout(value)
    return value


TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.1,
        metavar="SECONDS",
        callback=_timeout,
        help="For URLs: give up when the server does not answer (connect or any read) within this many seconds "
        "(default 30, or CKPTOOL_TIMEOUT).",
        show_default=False,
    ),
]


def _download(value: bool) -> bool:
    if value:
        import signal
        import sys

        from ..sources import remote

        remote.set_download(True)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a kill still removes the downloaded copies
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return value


DownloadOpt = Annotated[
    bool,
    typer.Option(
        "--download",
        callback=_download,
        help="For URLs: fetch each remote file once, whole, into a private temp folder (TMPDIR; removed when the "
        "command ends) and read it locally, instead of streaming the bytes it needs with range requests.",
    ),
]


def _allow_globals(ctx: typer.Context, value: list[str] | None) -> list[str] | None:
    """Allow the named pickle globals while this command runs (scoped: reset when the command ends)."""
    if value:
        from ..formats.unpickler import allow_globals

        scope = allow_globals(*value)
        scope.__enter__()
        ctx.call_on_close(lambda: scope.__exit__(None, None, None))
    return value


AllowGlobalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        metavar="MODULE.NAME",
        callback=_allow_globals,
        help="Record this pickle global as opaque data instead of refusing the file (repeatable; never runs it; "
        "os, subprocess, eval and the rest of scan's denylist are never allowed).",
        show_default=False,
    ),
]

# -- model options, shared by check, layers, export, parity, predict ---------------------------------------
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        "-a",
        help="Architecture: auto (identify from the weights), a registry name (ckptool archs), module.path:callable, "
        "or torchvision:<builder>.",
        show_default=False,
    ),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-classes",
        min=1,
        help="Size of the classification head (default: read from the weights).",
        show_default=False,
    ),
]
ArchArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-arg",
        help="key=value passed to a module:callable architecture's constructor (repeatable; values are Python literals).",
        show_default=False,
    ),
]
PartOpt = Annotated[
    str | None,
    typer.Option("--part", help="Use one sub-module only, e.g. features for a backbone-only file.", show_default=False),
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Input shape N,C,H,W (default: the ONNX graph's, then the architecture's, e.g. 1,3,224,224).",
        show_default=False,
    ),
]
AtolOpt = Annotated[
    float | None,
    typer.Option(
        "--atol",
        min=0.0,
        help="Parity: absolute tolerance (default 1e-4). An element fails only when |onnx - torch| exceeds atol, "
        "rtol x |torch| and stol x max|torch| of that output.",
        show_default=False,
    ),
]
RtolOpt = Annotated[
    float | None,
    typer.Option(
        "--rtol", min=0.0, help="Parity: relative tolerance, of |torch output| (default 1e-3).", show_default=False
    ),
]
StolOpt = Annotated[
    float | None,
    typer.Option(
        "--stol",
        min=0.0,
        help="Parity: scale tolerance, of the output's largest |torch| value (default 1e-4; 0 turns it off).",
        show_default=False,
    ),
]
