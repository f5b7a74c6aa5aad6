"""The one place that maps exceptions to messages and exit codes.

0 ok; 1 findings (the command says so itself); 2 errors: a CkptError, bad usage, or anything unexpected.
No traceback is ever shown unless CKPTOOL_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own click
    from typer._click import ClickException, Context
except ImportError:  # pragma: no cover - older typer on the real click
    from click import ClickException, Context  # type: ignore[assignment,no-redef]

from ..errors import CkptError


def debug() -> bool:
    return os.environ.get("CKPTOOL_DEBUG", "") not in ("", "0")


def error_line(text: str) -> None:
    sys.stderr.write(f"ckptool: error: {text}\n")
    sys.stderr.flush()


class CkptGroup(TyperGroup):
    """The CLI group: runs a command and turns whatever it raises into one line on stderr and an exit code."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort):
            raise
        except CkptError as e:
            if debug():
                traceback.print_exc()
            error_line(e.render())
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # stdout was closed early (| head): not an error of ours
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            raise typer.Exit(0) from None
        except MemoryError:
            error_line("out of memory")
            raise typer.Exit(2) from None
        except OSError as e:
            if debug():
                traceback.print_exc()
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            error_line(f"{where}{e.strerror or e}")
            raise typer.Exit(2) from None
        except Exception as e:  # the last line of defence: no traceback for users
            if debug():
                raise
            error_line(
                f"internal error ({type(e).__name__}: {e}); this is a bug in ckptool, "
                "rerun with CKPTOOL_DEBUG=1 for a traceback"
            )
            raise typer.Exit(2) from None
