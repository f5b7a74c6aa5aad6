"""The typer application: one module per command, registered here."""

from __future__ import annotations

from typing import Annotated

import typer

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
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """ckptool: what is inside a weight file, does it fit a model, and ship it without losing a bit."""


# in the order of the article's workflow: look, fit, convert, verify, secure, use
app.command("inspect")(inspect)
app.command("layers")(layers)
app.command("check")(check)
app.command("archs")(archs)
app.command("export")(export)
app.command("parity")(parity)
app.command("diff")(diff)
app.command("scan")(scan)
app.command("predict")(predict)
app.command("labels")(labels)
app.command("extract")(extract)


def run() -> None:
    """Console-script entry point."""
    app()
