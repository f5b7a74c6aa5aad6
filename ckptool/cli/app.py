"""The typer application: one module per command, registered here."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from typer.core import TyperCommand

from .. import __version__
from ._errors import CkptGroup
from .archs import archs
from .check import check
from .diff import diff
from .export import export
from .extract import extract
from .inspect import inspect
from .labels import labels
from .layers import layers
from .parity import parity
from .predict import predict
from .scan import scan

app = typer.Typer(
    cls=CkptGroup,
    name="ckptool",
    help="Inspect, check, convert and verify PyTorch weight files without trusting them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ckptool {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """ckptool: what is inside a weight file, does it fit a model, and ship it without losing a bit."""


class CkptCommand(TyperCommand):
    """A command whose usage line names its arguments as PATH, A B, IMAGES... (typer writes ``{path}``)."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        pieces = []
        for p in super().collect_usage_pieces(ctx):  # type: ignore[arg-type]
            if p.startswith("{") and "}" in p:
                p = p[1 : p.index("}")].upper() + p[p.index("}") + 1 :]
            pieces.append(p)
        return pieces


# in the order of the article's workflow: look, fit, convert, verify, secure, use; one line each in the listing
COMMANDS: list[tuple[str, Callable[..., None], str]] = [
    ("inspect", inspect, "List every tensor: name, shape, dtype, size (header only)."),
    ("layers", layers, "Every module in forward order, with paper-style names."),
    ("check", check, "Does the file fit an architecture? Exit 1 if not."),
    ("archs", archs, "The architectures ckptool knows without torch."),
    ("export", export, "Convert to safetensors, torch zip or ONNX (verified)."),
    ("parity", parity, "Does an ONNX model compute what the checkpoint does?"),
    ("diff", diff, "Compare two checkpoints: keys, shapes, dtypes, values."),
    ("scan", scan, "Static safety scan for CI; never unpickles. Exit 1 on findings."),
    ("predict", predict, "Classify images with a checkpoint or an ONNX model."),
    ("labels", labels, "The ImageNet-1k class names, one per line."),
    ("extract", extract, "Write the tensors under a prefix (e.g. features) to a file."),
]
for _name, _fn, _short in COMMANDS:
    app.command(_name, cls=CkptCommand, short_help=_short)(_fn)


_NUMPY_ONLY = frozenset({"inspect", "scan", "diff", "extract", "layers", "archs", "labels"})  # never import torch


def run() -> None:
    """Console-script entry point."""
    # numpy's bundled OpenBLAS starts a thread per core when numpy is imported, and they spin: 0.07-0.1 s of CPU
    # per command here (a third of a small file's `scan`). The torch-free commands' numpy work is elementwise
    # (archive checks, value statistics), never BLAS, so they keep it to one thread. Not the commands that may
    # run torch (predict, parity, export --onnx, check with a custom module): a torch build that links OpenBLAS
    # (aarch64) could read the same variable. A value the user set is kept.
    if sys.argv[1:2] and sys.argv[1] in _NUMPY_ONLY:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    app()
