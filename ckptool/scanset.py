"""Scan many paths for CI: files, folders (recursively) and globs, by content, in parallel (torch-free).

:func:`expand` turns what a user typed into the files to scan and the files it skips, with the reason:
a folder is walked (sorted, version-control folders and virtual environments left out, symlinked folders not
followed); a glob (``weights/**/*.bin``) is expanded; every file found that way is recognised by its first
bytes through the formats registry (never by its extension), and anything else is skipped with the reader's
own reason ("a gzip file", "not a checkpoint ckptool recognises", ...). A file named explicitly is always
scanned: if it is not a weight file, that is an error (exit 2), as before.

A folder is also offered to every registered format with a folder-level hook (``detect_folder(loc)`` and
``scan_folder(ctx)``: a sharded-model folder's index rules, a DCP folder): its findings are a report of their
own, named by the folder. The walker never knows a format.

:func:`scan_paths` scans the targets, in ``jobs`` processes when asked, and returns the reports in the order
of the targets (deterministic, whatever the scheduling).
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import CkptError, UnreadableError
from .policy import Policy
from .scan import Finding, ScanReport

SKIP_FOLDERS = frozenset({".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"})
HEAD = 4096


@dataclass(frozen=True)
class Skipped:
    """A path the walk did not scan, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class ScanFailure:
    """A file that could not be scanned (exit 2): the error, rendered as one line."""

    path: str
    error: str  # "path: message (hint)"
    type: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class ScanOptions:
    """How each file is scanned: what the CLI flags and the policy file decide."""

    values: bool = True
    strict: bool = False  # --strict: every finding fails
    allow_globals: tuple[str, ...] = ()
    policy: Policy = field(default_factory=Policy)

    def severity(self, kind: str) -> str:
        return self.policy.severity(kind, strict=self.strict)


@dataclass(frozen=True)
class Target:
    path: str
    explicit: bool  # named on the command line (an unrecognised file is an error, not a skip)
    folder: bool = False  # a folder offered to the folder-level hooks
    empty: int | None = None  # a folder walked that holds no weight file: how many files it skipped


@dataclass
class ScanRun:
    """What :func:`scan_paths` returns: one result per target (in order), and the skipped paths."""

    results: list[ScanReport | ScanFailure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def reports(self) -> list[ScanReport]:
        return [r for r in self.results if isinstance(r, ScanReport)]

    @property
    def failures(self) -> list[ScanFailure]:
        return [r for r in self.results if isinstance(r, ScanFailure)]


# --------------------------------------------------------------------------------------------
# What to scan
# --------------------------------------------------------------------------------------------
def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def recognise(path: str) -> str | None:
    """None when the file looks like something scan reads (a registered format, or a pickle stream);
    otherwise why it is skipped."""
    from .formats.sniff import detect, sniff_bytes
    from .formats.unpickler import collect_globals

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size == 0:
            return "empty file"
        with open(path, "rb") as fh:
            head = fh.read(HEAD)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if detect(head, st.st_size) is not None:
        return None
    w = collect_globals(head, 0, len(head))
    if w.complete or w.globals or w.extensions or w.unresolved:  # a pickle stream (pickle.dump output)
        return None
    if w.opcodes > 2 and w.end >= len(head) - 1:  # a pickle still going past the head: let scan decide
        return None
    try:
        sniff_bytes(head, st.st_size)
    except CkptError as e:
        return e.message
    return "not a weight file"  # pragma: no cover - sniff_bytes raises for anything detect refuses


def _owned_files(folder: str) -> dict[str, str]:
    """Files that a folder format scans through its own entry point (a DCP folder's ``*.distcp``, read through
    ``.metadata``): realpath -> why they are not scanned as files of their own. Through the registry: a format
    with ``detect_folder(loc)`` and ``member_files(loc)``."""
    from . import sources
    from .formats.sniff import FORMATS

    opener = getattr(sources, "open_location", None)
    out: dict[str, str] = {}
    for name, module in FORMATS.items():
        detect_folder = getattr(module, "detect_folder", None)
        members = getattr(module, "member_files", None)
        if opener is None or detect_folder is None or members is None:
            continue
        try:
            loc = opener(folder)
            if not detect_folder(loc):
                continue
            for p in members(loc):
                out.setdefault(os.path.realpath(p), f"part of the {name} checkpoint in {folder}, scanned through it")
        except CkptError:
            continue
    return out


def _walk(folder: str, targets: list[Target], skipped: list[Skipped]) -> None:
    targets.append(Target(folder, explicit=False, folder=True))
    for root, dirs, files in os.walk(folder, followlinks=False):
        keep = []
        for d in sorted(dirs):
            full = os.path.join(root, d)
            if d in SKIP_FOLDERS:
                skipped.append(Skipped(full, "version-control or cache folder"))
            elif os.path.islink(full):
                skipped.append(Skipped(full, "symlink to a folder (not followed)"))
            elif os.path.exists(os.path.join(full, "pyvenv.cfg")):
                skipped.append(Skipped(full, "a Python virtual environment"))
            else:
                keep.append(d)
        dirs[:] = keep
        if root != folder:
            targets.append(Target(root, explicit=False, folder=True))
        owned = _owned_files(root)
        for f in sorted(files):
            full = os.path.join(root, f)
            why = owned.get(os.path.realpath(full)) or recognise(full)
            if why is None:
                targets.append(Target(full, explicit=False))
            else:
                skipped.append(Skipped(full, why))


def expand(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Target | ScanFailure], list[Skipped]]:
    """The targets (files and folders, in the order of the arguments, each once) interleaved with the arguments
    that name nothing (a glob without a match), and the skipped paths. A folder with no weight file is a
    target of its own (``empty``: it gets a ``no-weight-files`` report)."""
    items: list[Target | ScanFailure] = []
    skipped: list[Skipped] = []
    for raw in paths:
        p = os.fspath(raw)
        targets: list[Target] = []
        if not os.path.lexists(p) and _has_magic(p) and "://" not in p:  # a URL's "?" is no glob
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                items.append(_failure(p, UnreadableError("no file matches this pattern", path=p)))
            for m in matches:
                if os.path.isdir(m):
                    _walk(m, targets, skipped)
                elif (why := recognise(m)) is None:
                    targets.append(Target(m, explicit=False))
                else:
                    skipped.append(Skipped(m, why))
        elif os.path.isdir(p):
            n = len(skipped)
            _walk(p, targets, skipped)
            if not any(not t.folder for t in targets):  # a report of its own: a warning unless the policy requires
                targets = [Target(p, explicit=False, folder=True, empty=len(skipped) - n)]
        else:
            targets.append(Target(p, explicit=True))
        items.extend(targets)
    seen: set[tuple[str, bool]] = set()
    unique: list[Target | ScanFailure] = []
    for t in items:
        if isinstance(t, Target):
            key = (os.path.realpath(t.path), t.folder)
            if key in seen:
                continue
            seen.add(key)
        unique.append(t)
    return unique, skipped


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------
class _FolderContext:
    """What a format's ``scan_folder(ctx)`` hook may use: the folder, its Location, and the report."""

    def __init__(self, path: str, loc: Any, options: ScanOptions) -> None:
        self.path = path
        self.loc = loc
        self.values = options.values
        self.options = options
        self.report = ScanReport(path=path, format="folder")

    def set_format(self, name: str) -> None:
        self.report.format = name

    def note(self, text: str) -> None:
        self.report.notes.append(text)

    def find(self, kind: str, message: str, where: str | None = None) -> None:
        self.report.findings.append(Finding(kind, message, where, self.options.severity(kind)))


def _scan_folder(path: str, options: ScanOptions) -> list[ScanReport]:
    """The folder-level hooks of the registered formats that claim this folder (none: no report)."""
    from . import sources
    from .formats.sniff import FORMATS

    opener = getattr(sources, "open_location", None)
    out = []
    for module in FORMATS.values():
        detect_folder = getattr(module, "detect_folder", None)
        hook = getattr(module, "scan_folder", None)
        if detect_folder is None or hook is None or opener is None:
            continue
        loc = opener(path)
        if not detect_folder(loc):
            continue
        ctx = _FolderContext(path, loc, options)
        hook(ctx)
        if ctx.report.findings or ctx.report.notes:
            out.append(ctx.report)
    return out


def _empty_report(path: str, skipped: int, options: ScanOptions) -> ScanReport:
    """A folder walked without finding any weight file: nothing was scanned, which a CI step should see. A
    warning by default (a repository without weights is normal; the skipped list says what each file was),
    a failing finding under ``require-weights = true`` in the policy, or --strict."""
    r = ScanReport(path=path, format="folder")
    what = (
        f"all {skipped} of its files were skipped (see the skipped list for each reason)" if skipped else "it is empty"
    )
    msg = f"holds no weight file ckptool recognises: {what}; nothing in it was scanned"
    r.findings.append(Finding("no-weight-files", msg, None, options.severity("no-weight-files")))
    return r


def _failure(path: str, e: CkptError) -> ScanFailure:
    return ScanFailure(path, e.render(), type(e).__name__, e.message, e.hint)


def _size_report(path: str, size: int, limit: int) -> ScanReport:
    r = ScanReport(path=path, format="unknown")
    r.findings.append(
        Finding("file-too-large", f"{size:,} bytes, over the policy's max-file-size of {limit:,}: not read")
    )
    return r


def scan_one(target: Target, options: ScanOptions) -> list[ScanReport | ScanFailure]:
    """Scan one target (a file, or a folder's folder-level hooks) under the options' policy. Never raises a
    CkptError: it is a result."""
    from .formats.unpickler import allow_globals
    from .scan import scan

    policy = options.policy
    try:
        with allow_globals(*options.allow_globals, *policy.allow_globals):
            if target.folder and target.empty is not None:
                return [_empty_report(target.path, target.empty, options)]
            if target.folder:
                return list(_scan_folder(target.path, options))
            if policy.max_file_size is not None:
                try:
                    size = os.stat(target.path).st_size
                except OSError:
                    size = -1
                if size > policy.max_file_size:
                    report = _size_report(target.path, size, policy.max_file_size)
                    report.findings[:] = [replace(f, severity=options.severity(f.kind)) for f in report.findings]
                    return [report]
            report = scan(target.path, values=options.values)
    except CkptError as e:
        return [_failure(target.path, e)]
    allowed = policy.allowed_formats
    if allowed is not None and report.format not in allowed:
        msg = f"the format is {report.format}; the policy ({policy.path}) allows {', '.join(sorted(allowed))}"
        report.findings.insert(0, Finding("format-not-allowed", msg))
    report.findings[:] = [replace(f, severity=options.severity(f.kind)) for f in report.findings]
    return [report]


def _counted(
    target: Target, options: ScanOptions, conf: dict[str, Any]
) -> tuple[list[ScanReport | ScanFailure], int, int]:
    """:func:`scan_one` in a worker process, with what it fetched from URLs (requests, bytes)."""
    from .sources import remote

    remote.apply_settings(conf)
    r0, b0 = remote.STATS.requests, remote.STATS.bytes_fetched
    try:
        return scan_one(target, options), remote.STATS.requests - r0, remote.STATS.bytes_fetched - b0
    finally:
        remote.cleanup_downloads()  # a worker's --download copies go with its task


def scan_paths(
    paths: Sequence[str | os.PathLike[str]], options: ScanOptions | None = None, *, jobs: int = 1
) -> ScanRun:
    """Expand ``paths`` (files, folders, globs) and scan every target; ``jobs`` > 1 scans in that many processes.
    The results come in the order of the targets whatever ``jobs`` is."""
    options = options or ScanOptions()
    items, skipped = expand(paths)
    run = ScanRun(skipped=skipped)
    files = sum(isinstance(t, Target) and not t.folder for t in items)

    def one(item: Target | ScanFailure) -> list[ScanReport | ScanFailure]:
        return [item] if isinstance(item, ScanFailure) else scan_one(item, options)

    if jobs > 1 and files > 1:
        from concurrent.futures import ProcessPoolExecutor

        from .sources import remote

        with ProcessPoolExecutor(max_workers=min(jobs, files)) as pool:
            conf = remote.settings()  # --timeout, --download: the workers read URLs as this process would
            futures = [None if isinstance(t, ScanFailure) else pool.submit(_counted, t, options, conf) for t in items]
            for item, fut in zip(items, futures, strict=True):
                if fut is None:
                    run.results.extend(one(item))
                    continue
                results, requests, nbytes = fut.result()
                remote.STATS.add(requests, nbytes)  # what the workers fetched counts as this command's
                run.results.extend(results)
    else:
        for item in items:
            run.results.extend(one(item))
    return run
