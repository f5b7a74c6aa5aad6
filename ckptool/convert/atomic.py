"""Atomic output, shared by every writer (torch-free).

**Atomic output.** :func:`atomic_output` writes to a hidden temporary file in the target's folder, fsyncs
it, and renames it into place only when the ``with`` body finished without an exception. On any
exception (including ``KeyboardInterrupt``, and SIGTERM while the block runs in the main thread) the
temporary file is removed, so no partial output ever exists under the target name. Without ``force`` an
existing target is refused with :class:`~ckptool.errors.OutputExistsError` (exit 2), both before any work
starts and again at the moment of publishing (a hard link, which cannot clobber), so a file that appears
meanwhile is not overwritten either. :func:`atomic_outputs` does the same for a group of files that
reference each other by name (an ONNX model and its external data).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import CkptError, OutputExistsError, UsageError

PathLike = str | os.PathLike[str]


# -- atomic output ------------------------------------------------------------------------------------------


def check_output(path: PathLike, *, force: bool, protect: Iterable[PathLike] = ()) -> Path:
    """Validate an output target before any work starts; return it as a Path.

    Raises :class:`UsageError` when the target is a folder, its folder does not exist, or it is one of the
    ``protect`` files (the inputs: never overwritten, even with ``force``), and
    :class:`OutputExistsError` when it exists and ``force`` is false.
    """
    out = Path(os.fspath(path))
    if not out.name or out.name in (".", ".."):
        raise UsageError("the output must name a file", path=out)
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"folder {str(parent)!r} does not exist", path=out, hint="create it first")
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CkptError(f"cannot use as output ({e.strerror or e})", path=out) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UsageError("is a folder; the output must be a file path", path=out)
        for p in protect:
            with contextlib.suppress(OSError):
                if os.path.samefile(out, os.fspath(p)):
                    raise UsageError("the output is the input file itself", path=out, hint="write to another path")
        if not force:
            raise OutputExistsError("exists; pass --force to overwrite it", path=out)
    return out


def _open_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, exclusively created temporary file in ``folder`` (permissions per the umask, like any new file)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise CkptError(
                f"cannot create a file in {str(folder)!r} ({e.strerror or e})", path=folder / name
            ) from None
        return fd, tmp
    raise CkptError("cannot find a free temporary file name", path=folder / name)  # pragma: no cover


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, out: Path, *, force: bool) -> None:
    """Move a finished temporary file onto its target name, never clobbering without ``force``."""
    if not force:
        try:
            os.link(tmp, out)  # atomic and refuses an existing target, even one created a moment ago
        except FileExistsError:
            raise OutputExistsError(
                "exists (it appeared while ckptool was writing); pass --force to overwrite it", path=out
            ) from None
        except OSError:
            pass  # no hard links on this filesystem: check, then rename
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        if os.path.lexists(out):
            raise OutputExistsError("exists; pass --force to overwrite it", path=out)
    try:
        os.replace(tmp, out)
    except OSError as e:
        raise CkptError(f"cannot move the finished file into place ({e.strerror or e})", path=out) from None


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises SystemExit(143) instead of killing the process outright, so
    the cleanup of a partial output runs. Only in the main thread, and only if nobody handles SIGTERM yet."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):  # pragma: no cover
        yield
        return
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output(path: PathLike, *, force: bool, protect: Iterable[PathLike] = ()) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically: ``with atomic_output(out, force=False) as fh: fh.write(...)``.

    Yields a binary file object opened for writing on a temporary file in the target's folder (its
    ``.name`` is the temporary path, e.g. for a library that wants a path). When the block ends normally
    the file is flushed, fsynced, closed and renamed onto ``path``; when it raises anything (including
    ``KeyboardInterrupt``) the temporary file is deleted and the exception propagates. ``protect`` lists
    files that must never be overwritten (the inputs): writing onto one is a :class:`UsageError` even
    with ``force``. An existing target without ``force`` is an :class:`OutputExistsError` (exit 2).
    """
    out = check_output(path, force=force, protect=protect)
    fd, tmp = _open_temp(out.parent, out.name)
    fh = open(fd, "w+b")  # noqa: SIM115 - closed below, on every path
    setattr(fh.raw, "name", os.fspath(tmp))  # noqa: B010 - what open(path) sets: .name is the temporary path
    try:
        with _sigterm_as_exit():
            try:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
            except BaseException:
                fh.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            try:
                _publish(tmp, out, force=force)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    finally:
        if not fh.closed:  # pragma: no cover - only if close itself failed
            fh.close()
    _fsync_dir(out.parent)


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[PathLike], *, force: bool, protect: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Write several files that refer to each other by name (e.g. ``model.onnx`` + ``model.onnx.data``).

    Yields a fresh temporary folder inside the (common) target folder. Write each output there under its
    final *base name* (so relative references such as ONNX ``external_data`` locations resolve while you
    verify). When the block ends normally every file is fsynced and renamed into the target folder in the
    order given (put the file that references the others last, so it never points at a missing file),
    then the temporary folder is removed. On any exception the temporary folder and everything in it is
    removed and nothing is renamed. Each target is checked like :func:`atomic_output` (exists without
    ``force`` -> exit 2; an input in ``protect`` -> refused). A file listed in ``paths`` but not written is
    an error; extra files written into the folder are ignored.
    """
    outs = [check_output(p, force=force, protect=protect) for p in paths]
    if not outs:
        raise UsageError("no output files given")
    folders = {o.parent.resolve() for o in outs}
    if len(folders) != 1:
        raise UsageError("all outputs of one group must be in the same folder", path=outs[0])
    if len({o.name for o in outs}) != len(outs):
        raise UsageError("two outputs of one group have the same name", path=outs[0])
    parent = outs[0].parent
    tmpdir: Path | None = None
    for _ in range(100):
        cand = parent / f".{outs[-1].name}.{secrets.token_hex(4)}.tmpdir"
        try:
            os.mkdir(cand)
        except FileExistsError:
            continue
        except OSError as e:
            raise CkptError(f"cannot create a folder in {str(parent)!r} ({e.strerror or e})", path=outs[-1]) from None
        tmpdir = cand
        break
    if tmpdir is None:  # pragma: no cover
        raise CkptError("cannot find a free temporary folder name", path=outs[-1])
    try:
        with _sigterm_as_exit():
            yield tmpdir
            for o in outs:
                f = tmpdir / o.name
                if not f.is_file():
                    raise CkptError("was not written", path=o)
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
            if not force:
                for o in outs:
                    if os.path.lexists(o):
                        raise OutputExistsError("exists; pass --force to overwrite it", path=o)
            for o in outs:
                _publish(tmpdir / o.name, o, force=force)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    _fsync_dir(parent)


@contextlib.contextmanager
def background_fsync(fd: int) -> Iterator[None]:
    """fsync ``fd`` in a thread while the block runs (e.g. while verifying what was just written), so the
    disk flush and the CPU work overlap; the fsync of :func:`atomic_output` then finds nothing left to do.
    Joins on exit and re-raises the fsync's error, if any."""
    errors: list[OSError] = []

    def run() -> None:
        try:
            os.fsync(fd)
        except OSError as e:  # pragma: no cover - disk errors
            errors.append(e)

    th = threading.Thread(target=run, name="ckptool-fsync", daemon=True)
    th.start()
    try:
        yield
    finally:
        th.join()
    if errors:  # pragma: no cover
        raise errors[0]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """os.write until every byte is written; returns the count."""
    mv = memoryview(data).cast("B")
    pos = 0
    while pos < len(mv):
        pos += os.write(fd, mv[pos:])
    return pos
