"""Where a checkpoint is: what the user typed (a file, a folder, an ``*.index.json``), resolved to the files
to open, and how to open a name relative to it without leaving it (torch-free, format-free).

A :class:`Location` is the layer above :class:`~ckptool.sources.Source`: a Source is one file's bytes; a
Location is a file or a folder and the files around it. Formats that span several files (a Hugging Face
index and its shards, a torch.distributed.checkpoint folder, ONNX external data) reach their members only
through :meth:`Location.resolve` / :meth:`Location.open`, which refuse a relative name that escapes the
folder: ``..``, an absolute name, a NUL byte, or a symlink whose target is outside it.

:func:`open_location` picks the implementation from the string: a registered scheme prefix
(:func:`register_scheme`, e.g. ``hf://`` or ``https://`` from the remote sources), else a local path
(:class:`LocalLocation`). Nothing here knows a format.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import UnreadableError, UnsafeFileError
from .local import LocalFile

if TYPE_CHECKING:
    from . import Source


def open_source(path: str | os.PathLike[str], *, allow_empty: bool = True) -> Any:
    """A local file (or a URL: :mod:`ckptool.sources.remote`) as a Source; every failure is a
    :class:`~ckptool.errors.CkptError` naming it. (Here, not in :mod:`.local`: the remote sources build on
    :class:`~.local.LocalFile` for ``--download``, so the local file may not import them.)"""
    if isinstance(path, str) and "://" in path:  # (every URL has one; the remote sources import http.client, ssl)
        from .remote import is_url, open_url

        if is_url(path):
            return open_url(path, allow_empty=allow_empty)
    return LocalFile(path, allow_empty=allow_empty)


@runtime_checkable
class Location(Protocol):
    """A file or folder that a checkpoint is read from. Implementations: :class:`LocalLocation`, the remote ones."""

    name: str  # what output and errors name: the path or URL as given

    @property
    def is_folder(self) -> bool:
        """True for a folder; False for a single file (whose members resolve relative to its parent folder)."""
        ...

    @property
    def folder(self) -> str:
        """The folder's display name: ``name`` for a folder, its parent for a file."""
        ...

    def names(self) -> list[str]:
        """The names of the regular files directly in :attr:`folder`, sorted (no recursion, no dot-files)."""
        ...

    def resolve(self, rel: str) -> str:
        """The full name of ``rel`` (relative to :attr:`folder`), or :class:`~ckptool.errors.UnsafeFileError`
        when it escapes the folder (``..``, absolute, NUL, a symlink whose target is outside)."""
        ...

    def exists(self, rel: str) -> bool:
        """Does ``rel`` (checked with :meth:`resolve` first) name a regular file in the folder?"""
        ...

    def open(self, rel: str | None = None) -> Source:
        """The file itself (``rel`` None, files only) or a member of the folder, as a Source."""
        ...

    def open_path(self, full: str) -> Source:
        """Open a full name that :meth:`resolve` returned (what :attr:`Checkpoint.opener` calls)."""
        ...


def check_relative(rel: str, *, where: str, what: str = "file name") -> str:
    """``rel`` with '/' separators, or UnsafeFileError when it is not a plain relative name inside a folder."""
    if "\0" in rel:
        raise UnsafeFileError(f"{what} {rel!r} contains a NUL byte", path=where)
    norm = rel.replace("\\", "/")
    if not norm or norm.startswith("/") or os.path.isabs(rel) or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeFileError(f"{what} {rel!r} is absolute: it must name a file inside the folder", path=where)
    if ".." in norm.split("/"):
        raise UnsafeFileError(f"{what} {rel!r} points outside the folder ('..')", path=where)
    return norm


class LocalLocation:
    """A local file or folder."""

    def __init__(self, path: str | os.PathLike[str]):
        self.name = os.fspath(path)
        try:
            st = os.stat(self.name)
        except FileNotFoundError:
            raise UnreadableError("no such file", path=self.name) from None
        except PermissionError:
            raise UnreadableError("permission denied", path=self.name) from None
        except (OSError, ValueError) as e:
            raise UnreadableError(f"cannot stat ({getattr(e, 'strerror', None) or e})", path=self.name) from None
        self._is_folder = stat.S_ISDIR(st.st_mode)
        self._folder = self.name if self._is_folder else (os.path.dirname(self.name) or ".")

    def __repr__(self) -> str:
        return f"<LocalLocation {self.name!r}{' (folder)' if self._is_folder else ''}>"

    @property
    def is_folder(self) -> bool:
        return self._is_folder

    @property
    def folder(self) -> str:
        return self._folder

    def names(self) -> list[str]:
        try:
            with os.scandir(self._folder) as it:
                return sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())
        except PermissionError:
            raise UnreadableError("permission denied (cannot list the folder)", path=self._folder) from None
        except OSError as e:
            raise UnreadableError(f"cannot list the folder ({e.strerror or e})", path=self._folder) from None

    def resolve(self, rel: str) -> str:
        norm = check_relative(rel, where=self.name)
        full = os.path.join(self._folder, *norm.split("/"))
        base = os.path.realpath(self._folder)
        real = os.path.realpath(full)
        if os.path.commonpath([real, base]) != base:
            raise UnsafeFileError(f"{rel!r} resolves outside the folder (a symlink out of it?)", path=self.name)
        return full

    def exists(self, rel: str) -> bool:
        full = self.resolve(rel)
        try:
            return stat.S_ISREG(os.stat(full).st_mode)
        except OSError:
            return False

    def open(self, rel: str | None = None) -> Source:
        if rel is None:
            if self._is_folder:
                raise UnreadableError("is a folder: name a file in it", path=self.name)
            return open_source(self.name, allow_empty=False)
        return open_source(self.resolve(rel), allow_empty=False)

    def open_path(self, full: str) -> Source:
        return open_source(full)


# scheme prefix ("hf://", "https://", ...) -> factory; the remote sources register theirs
SCHEMES: dict[str, Callable[[str], Location]] = {}


def register_scheme(prefix: str, factory: Callable[[str], Location]) -> None:
    """Make :func:`open_location` hand strings starting with ``prefix`` to ``factory``."""
    SCHEMES[prefix] = factory


def open_location(where: str | os.PathLike[str] | Location) -> Location:
    """The Location for what the user typed: a registered scheme's, else a local file or folder."""
    if not isinstance(where, (str, os.PathLike)):
        return where
    text = os.fspath(where)
    for prefix, factory in SCHEMES.items():
        if text.startswith(prefix):
            return factory(text)
    return LocalLocation(text)
