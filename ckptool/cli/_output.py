"""Rendering helpers: rich on a terminal, plain text when piped, JSON on request. Results go to stdout,
diagnostics to stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A ``progress(done, total)`` callback that shows a rich bar on stderr, only on a terminal and only once
    the work has taken ``delay`` seconds. Use it as a context manager (or call ``close()``)."""

    def __init__(self, label: str, delay: float = 1.0):
        self.label = label
        self.delay = delay
        self.t0 = time.monotonic()
        self.tty = stderr_is_tty()
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        if self.progress is None:
            if time.monotonic() - self.t0 < self.delay or done >= total:
                return
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
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


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, ensure_ascii=False, default=_default) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def info(text: str) -> None:
    """A diagnostic for a person: stderr."""
    sys.stderr.write(text + "\n")


def warn(text: str) -> None:
    sys.stderr.write(f"ckptool: warning: {text}\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def human_count(n: int) -> str:
    return f"{n:,}"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    right: Sequence[int] = (),
    footer: Sequence[str] = (),
) -> None:
    """A table on stdout: rich on a terminal, aligned plain text otherwise."""
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
        for i, h in enumerate(headers):
            # keep numbers and shapes on one line; only the first column (names) may fold
            t.add_column(h, justify="right" if i in right else "left", no_wrap=i != 0, overflow="fold")
        for r in cells:
            t.add_row(*r)
        con = Console()
        con.print(t)
        for line in footer:
            con.print(line, highlight=False)
        return
    if title:
        out(title)
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()

    out(fmt(list(headers)))
    for r in cells:
        out(fmt(r))
    for line in footer:
        out(line)


def kv_lines(pairs: Sequence[tuple[str, str]]) -> None:
    """Summary lines 'key: value' (rich-styled on a terminal)."""
    if is_tty():
        from rich.console import Console

        con = Console()
        for k, v in pairs:
            con.print(f"[bold]{k}:[/bold] {v}", highlight=False)
        return
    for k, v in pairs:
        out(f"{k}: {v}")
