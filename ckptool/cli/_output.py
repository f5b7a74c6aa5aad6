"""The one output object of a command (modelled on huggingface_hub's ``hf`` CLI).

Its mode is chosen once per invocation, by :func:`start`:

- ``rich``: stdout is a terminal. Tables, bold keys, colours, through rich.
- ``plain``: stdout is piped or redirected. Aligned plain text, no escape codes, no wrapping.
- ``json``: ``--json`` was given. One strict JSON object on stdout (:meth:`Output.json`).

Nothing from a file is ever markup: every value reaches rich as a :class:`rich.text.Text` (never parsed
for ``[style]`` tags, emoji codes or highlighting), on consoles made with ``markup=False, highlight=False,
emoji=False``. Diagnostics (warnings, errors, progress) go to stderr, errors and warnings as plain text.

Strict JSON: non-finite floats cannot be written as JSON numbers. Every command's ``--json`` output encodes
them in one way, here in :func:`encode_json`: as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (the JSON
Schemas in ``docs/schemas/`` say so wherever a number may be non-finite), then ``json.dumps(allow_nan=False)``.

A closed stdout (``| head -1``) never changes the exit code: writes after the reader has gone are dropped
and the command runs to its own result (0, 1 findings, 2 error).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from .._gc import paused_gc
from ..sources import loaded_remote

Mode = Literal["rich", "plain", "json"]
Part = str | tuple[str, str]  # a piece of a line: text, or (text, rich style)

PLAIN_MAX_COL = 60  # plain tables: a longer cell is written whole, without widening every other row
RICH_MAX_ROWS = 2000  # a longer table is aligned text on a terminal too (see Output.table)


def _isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False


def stderr_is_tty() -> bool:
    return _isatty(sys.stderr)


# ---------------------------------------------------------------------------------------------------
# strict JSON
# ---------------------------------------------------------------------------------------------------
NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


_PLAIN = frozenset({str, int, bool, type(None)})  # JSON as they are (exact types: subclasses take the long way)


def finite_json(o: Any) -> Any:
    """``o`` with every non-finite float replaced by ``"inf"`` / ``"-inf"`` / ``"nan"`` (recursively;
    objects with ``to_dict()`` are converted first, numpy scalars become Python numbers)."""
    if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
        return o
    if isinstance(o, float):
        if math.isfinite(o):
            return o
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):  # plain values are kept inline: one call per container, not per value
        return {str(k): v if type(v) in _PLAIN else finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [v if type(v) in _PLAIN else finite_json(v) for v in o]
    if hasattr(o, "to_dict"):
        return finite_json(o.to_dict())
    if type(o).__module__ == "numpy" and hasattr(o, "item"):
        return finite_json(o.item())
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


def _default(o: Any) -> Any:
    """What :func:`json.dumps` cannot write itself, as :func:`finite_json` converts it (one level; the encoder
    walks what it returns)."""
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset)):
        return list(o)
    if type(o).__module__ == "numpy" and hasattr(o, "item"):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


def encode_json(obj: Any) -> str:
    """The one JSON encoder of the CLI: strict (no NaN / Infinity tokens), UTF-8 text, one line.

    One pass in the C encoder (``allow_nan=False``, objects converted by :func:`_default`); only when that
    meets a non-finite float (ValueError) or a key JSON cannot hold (TypeError) is the value walked by
    :func:`finite_json` and encoded again. At 100k tensors the walk alone cost 1.2 s; most results hold no
    non-finite float at all."""
    with paused_gc():
        try:
            # no circular-reference bookkeeping per container (15% of the pass): a result is a tree; a cycle would
            # still end in an error (RecursionError), as it does in the walk
            return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_default, check_circular=False)
        except (ValueError, TypeError):
            return json.dumps(finite_json(obj), ensure_ascii=False, allow_nan=False)


# ---------------------------------------------------------------------------------------------------
# human formats
# ---------------------------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def human_count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 sample``, ``2 samples``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def dims(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _has_control(cells: list[list[str]]) -> bool:
    """Does any cell hold a control code rich removes from text (BEL, BS, VT, FF, CR)? One scan of the joined
    cells: they are rare, and removing them cell by cell costs 0.6 s at 100k rows."""
    from rich.control import STRIP_CONTROL_CODES

    blob = "\x00".join(["\x00".join(r) for r in cells])
    return any(chr(c) in blob for c in STRIP_CONTROL_CODES)


def _aligned(headers: list[str], rows: list[list[str]], right: Sequence[int]) -> list[str]:
    """The header and the rows as aligned lines, column by column: a column is as wide as its header and its
    cells of at most :data:`PLAIN_MAX_COL` characters (a longer cell is written whole); the last column is not
    padded unless right-aligned; trailing blanks are removed."""
    cols: list[list[str]] = []
    last = len(headers) - 1
    for i, h in enumerate(headers):
        col = [h, *[r[i] if i < len(r) else "" for r in rows]]
        width = max([len(h), *[n for n in map(len, col) if n <= PLAIN_MAX_COL]])
        if i in right:
            col = [c.rjust(width) for c in col]
        elif i < last:
            col = [c.ljust(width) for c in col]
        cols.append(col)
    return [line.rstrip() for line in map("  ".join, zip(*cols, strict=True))]


# ---------------------------------------------------------------------------------------------------
# the output object
# ---------------------------------------------------------------------------------------------------
class Output:
    """Everything a command shows. Make it with :func:`start` (once per invocation)."""

    def __init__(self, json_mode: bool = False, *, file: Any = None, err: Any = None):
        self.file = file if file is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.mode: Mode = "json" if json_mode else ("rich" if _isatty(self.file) else "plain")
        self.err_tty = _isatty(self.err)
        self.broken = False  # the reader of stdout went away: later writes are dropped
        self._console: Any = None
        self.json_written = False

    # -- the low level: every byte to stdout passes here -------------------------------------------------
    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.file.write(text)
        except BrokenPipeError:
            self._broke()

    def _broke(self) -> None:
        self.broken = True
        try:  # later writes (and the interpreter's final flush) go nowhere
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self.file.fileno())
            os.close(fd)
        except (OSError, ValueError, AttributeError):
            pass

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self.file.flush()
        except BrokenPipeError:
            self._broke()
        except (OSError, ValueError):
            pass

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=_Guard(self),  # type: ignore[arg-type]
                markup=False, highlight=False, emoji=False, force_terminal=True,
                width=_width(self.file),
            )  # fmt: skip
        return self._console

    @property
    def rich(self) -> bool:
        return self.mode == "rich"

    @staticmethod
    def text(*parts: Part) -> Any:
        """A rich Text from plain strings and (string, style) pairs; nothing in them is markup."""
        from rich.text import Text

        t = Text()
        for p in parts:
            if isinstance(p, tuple):
                t.append(p[0], style=p[1])
            else:
                t.append(p)
        return t

    # -- lines ----------------------------------------------------------------------------------------
    def line(self, *parts: Part) -> None:
        """One line of human output (nothing in JSON mode)."""
        if self.mode == "json":
            return
        if self.rich:
            self.console.print(self.text(*parts), soft_wrap=True)
        else:
            self._write("".join(p[0] if isinstance(p, tuple) else p for p in parts) + "\n")

    def raw(self, text: str) -> None:
        """A line that is data, for any mode but JSON: written as it is (e.g. ``labels``, ``inspect --plain``)."""
        self._write(text + "\n")

    def blank(self) -> None:
        self.line("")

    def kv(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Summary lines ``key: value`` (the key in bold on a terminal)."""
        for k, v in pairs:
            self.line((f"{k}:", "bold"), f" {v}")

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        right: Sequence[int] = (),
        footer: Sequence[str] = (),
        fold: Sequence[int] = (0,),
    ) -> None:
        """A table: rich on a terminal (the ``fold`` columns, names, fold to fit its width; the others stay on
        one line), aligned plain text otherwise (a cell over :data:`PLAIN_MAX_COL` characters does not widen
        the column for every row).

        On a terminal, a table of more than :data:`RICH_MAX_ROWS` rows is written as aligned text too, with a
        bold header and the file's control characters removed as rich removes them: rich lays a table out
        cell by cell, 0.65 ms a row here (a minute for 100k tensors), and the aligned text is one write. A last
        line says why the table looks plain."""
        if self.mode == "json":
            return
        cells = [[c if type(c) is str else ("" if c is None else str(c)) for c in r] for r in rows]
        if self.rich and len(cells) <= RICH_MAX_ROWS:
            from rich.table import Table

            if title:  # its own line: a table title is wrapped to the table's width, which splits a long path
                self.line((title, "bold"))
            t = Table(header_style="bold", show_lines=False)
            for i, h in enumerate(headers):
                t.add_column(
                    self.text(h), justify="right" if i in right else "left", no_wrap=i not in fold, overflow="fold"
                )
            for r in cells:
                t.add_row(*(self.text(c) for c in r))
            self.console.print(t)
            for line in footer:
                self.line(line)
            return
        if self.rich and _has_control(cells):
            from rich.control import strip_control_codes

            cells = [[strip_control_codes(c) for c in r] for r in cells]
        if title:
            self.line((title, "bold") if self.rich else title)
        lines = _aligned(list(headers), cells, right)
        if self.rich:  # the header in bold, then the rows in one write
            self.line((lines.pop(0), "bold"))
        if lines:
            self._write("\n".join(lines) + "\n")
        for line in footer:
            self.line(line)
        if self.rich:
            self.line(
                (
                    f"({len(cells):,} rows, written as aligned text rather than a table: over {RICH_MAX_ROWS:,} "
                    "rows a terminal table is slow to lay out. --filter narrows the list, --json has every field.)",
                    "dim",
                )
            )

    # -- JSON -----------------------------------------------------------------------------------------
    def json(self, obj: Any) -> None:
        """The one JSON object of a ``--json`` run (see :func:`encode_json`). When the command read a URL, a
        result object also says what it cost: ``bytes_fetched`` and ``requests``."""
        self.json_written = True
        remote = loaded_remote()
        if remote is not None and isinstance(obj, dict) and "error" not in obj and remote.STATS.requests:
            obj = {**obj, "bytes_fetched": remote.STATS.bytes_fetched, "requests": remote.STATS.requests}
        self._write(encode_json(obj) + "\n")

    # -- stderr ---------------------------------------------------------------------------------------
    def _err(self, text: str) -> None:
        try:
            self.err.write(text + "\n")
            self.err.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def warn(self, text: str) -> None:
        self._err(f"ckptool: warning: {text}")

    def error(self, text: str) -> None:
        self._err(f"ckptool: error: {text}")

    def fetched(self) -> None:
        """``fetched 212 KB in 3 requests`` on stderr, when the command read a URL (not in JSON mode)."""
        remote = loaded_remote()
        line = remote.summary() if remote is not None else ""
        if line and self.mode != "json":
            self._err(line)

    # -- progress (stderr, terminal only, transient) -------------------------------------------------------
    def progress(self, label: str, delay: float = 1.0) -> ProgressBar:
        return ProgressBar(label, delay=delay, tty=self.err_tty)

    @contextmanager
    def status(self, text: str) -> Iterator[Status]:
        """A transient spinner with the current step on stderr (terminal only); update it by calling it."""
        s = Status(text, tty=self.err_tty)
        try:
            yield s
        finally:
            s.close()


class _Guard:
    """The file rich writes to: stdout, with the closed-pipe handling of :class:`Output`."""

    def __init__(self, out: Output):
        self.out = out

    def write(self, text: str) -> int:
        self.out._write(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self.out.file.fileno())


def _width(f: Any) -> int | None:
    """The terminal's width (COLUMNS wins, as rich does); None lets rich decide."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cols = os.get_terminal_size(f.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None
    return cols if cols > 0 else None  # a pseudo-terminal nobody sized says 0: rich's default (80)


def _err_console() -> Any:
    from rich.console import Console

    # bound to the stderr of now: the exporter redirects sys.stderr while it runs, and the spinner must not follow
    return Console(file=sys.stderr, force_terminal=True, markup=False, highlight=False, emoji=False)


class Status:
    """The current step as a spinner on stderr (terminal only)."""

    def __init__(self, text: str = "", *, tty: bool | None = None):
        self.status: Any = None
        if stderr_is_tty() if tty is None else tty:
            from rich.text import Text

            self.status = _err_console().status(Text(text))
            self.status.start()
            self.status.update(spinner="dots")  # draw the first step now, not at the first refresh tick

    def __call__(self, phase: str) -> None:
        if self.status is not None:
            from rich.text import Text

            # naming the spinner makes rich redraw at once; a bare text update waits for the next 12.5 Hz
            # refresh, so a phase shorter than 80 ms would never be shown
            self.status.update(Text(phase + " ..."), spinner="dots")

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class ProgressBar:
    """A ``progress(done, total)`` callback that shows a rich bar on stderr, only on a terminal and only once
    the work has taken ``delay`` seconds. Use it as a context manager (or call ``close()``)."""

    def __init__(self, label: str, delay: float = 1.0, *, tty: bool | None = None):
        self.label = label
        self.delay = delay
        self.t0 = time.monotonic()
        self.tty = stderr_is_tty() if tty is None else tty
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        if self.progress is None:
            if time.monotonic() - self.t0 < self.delay or done >= total:
                return
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                console=_err_console(), transient=True,
            )  # fmt: skip
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# one per invocation
# ---------------------------------------------------------------------------------------------------
_current: Output | None = None


def start(json_mode: bool = False) -> Output:
    """The output object of this invocation (commands call it first, with their ``--json``)."""
    global _current
    _current = Output(json_mode)
    return _current


def current() -> Output | None:
    return _current


def reset() -> None:
    global _current
    _current = None
