"""The one place that maps exceptions to messages and exit codes.

- 0: the command did its job and found nothing wrong.
- 1: findings (:class:`~ckptool.errors.FindingsError`: incompatible, parity failed, unsafe, different). The
  command has already shown its result; nothing more is printed.
- 2: errors: any other :class:`~ckptool.errors.CkptError`, bad usage, an OS error, or anything unexpected.
  One line ``ckptool: error: ...`` on stderr and, under ``--json``, one JSON object on stdout:
  ``{"error": {"type", "message", "path", "hint"}}``.
- 130: interrupted.

A closed stdout (``| head -1``) never changes the code: the output object drops later writes and the
command runs to its own result. No traceback is ever shown unless CKPTOOL_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own click
    from typer._click import ClickException, Context
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click import ClickException, Context  # type: ignore[assignment,no-redef]
    from click import UsageError as ClickUsageError  # type: ignore[assignment,no-redef]

from ..errors import CkptError, FindingsError, WeightsMismatchError
from ..sources import loaded_remote
from . import _output


def debug() -> bool:
    return os.environ.get("CKPTOOL_DEBUG", "") not in ("", "0")


def error_line(text: str) -> None:
    try:
        sys.stderr.write(f"ckptool: error: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def error_object(
    type_: str, message: str, path: str | None = None, hint: str | None = None
) -> dict[str, dict[str, str | None]]:
    """The ``--json`` form of an error (exit 2)."""
    return {"error": {"type": type_, "message": message, "path": path, "hint": hint}}


def _json_wanted(ctx: Context) -> bool:
    out = _output.current()
    if out is not None:
        return out.mode == "json"
    return bool(ctx.meta.get("ckptool.json"))


def _fail(ctx: Context, line: str, obj: dict[str, Any], code: int = 2) -> typer.Exit:
    error_line(line)
    out = _output.current()
    if _json_wanted(ctx) and (out is None or not out.json_written):
        writer = out if out is not None else _output.Output(json_mode=True)
        writer.json(obj)
        writer.flush()
    return typer.Exit(code)


class CkptGroup(TyperGroup):
    """The CLI group: runs a command and turns whatever it raises into one line on stderr and an exit code."""

    def _invoke(self, ctx: Context) -> Any:
        """The command; when it ends with a result (exit 0 or 1), what it fetched from URLs on stderr."""
        try:
            result = super().invoke(ctx)
        except FindingsError:
            _fetched()
            raise
        _fetched()
        return result

    def invoke(self, ctx: Context) -> Any:
        _output.reset()
        remote = loaded_remote()
        if remote is not None:  # an earlier command in this process read a URL
            remote.STATS.reset()
            remote.set_timeout(None)
            remote.set_download(False)
        # before the command parses its options (a usage error there still answers in JSON)
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        ctx.meta["ckptool.json"] = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
        try:
            return self._invoke(ctx)
        except FindingsError:
            raise typer.Exit(1) from None
        except typer.Exit:
            raise
        except ClickUsageError as e:
            if not _json_wanted(ctx):
                raise
            e.show()
            out = _output.Output(json_mode=True)
            out.json(error_object("UsageError", e.format_message()))
            out.flush()
            raise typer.Exit(2) from None
        except (ClickException, typer.Abort):
            raise
        except CkptError as e:
            if debug():
                traceback.print_exc()
            raise _fail(ctx, e.render(), error_object(type(e).__name__, e.message, e.path, e.hint)) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # a write that bypassed the output object met a closed stdout: the command did not finish
            (_output.current() or _output.Output())._broke()
            raise typer.Exit(2) from None
        except MemoryError:
            raise _fail(ctx, "out of memory", error_object("MemoryError", "out of memory")) from None
        except OSError as e:
            if debug():
                traceback.print_exc()
            path = os.fspath(e.filename) if getattr(e, "filename", None) else None
            where = f"{path}: " if path else ""
            msg = str(e.strerror or e)
            raise _fail(ctx, f"{where}{msg}", error_object(type(e).__name__, msg, path)) from None
        except Exception as e:  # the last line of defence: no traceback for users
            if debug():
                raise
            msg = f"internal error ({type(e).__name__}: {e}); this is a bug in ckptool"
            raise _fail(
                ctx,
                f"{msg}, rerun with CKPTOOL_DEBUG=1 for a traceback",
                error_object("InternalError", msg, hint="rerun with CKPTOOL_DEBUG=1 for a traceback"),
            ) from None
        finally:
            remote = loaded_remote()  # (imported by the command when it read a URL)
            if remote is not None:
                remote.cleanup_downloads()  # --download's copies, on every exit path (errors, Ctrl-C, SIGTERM)
            last = _output.current()
            if last is not None:
                last.flush()


def _fetched() -> None:
    out = _output.current()
    if out is not None:
        out.fetched()


def without_part(e: WeightsMismatchError) -> WeightsMismatchError:
    """check's findings suggest ``--part NAME``; export and parity take ``--features-only`` instead."""
    import re

    def fix(text: str | None) -> str | None:
        if text is None:
            return None
        text = re.sub(r"(check it with |checked as )?--part features\b", "use --features-only", text)
        return re.sub(r"--part (\w+)", r"the \1 part (only features is exported, with --features-only)", text)

    return WeightsMismatchError(fix(e.message) or e.message, path=e.path, hint=fix(e.hint))
