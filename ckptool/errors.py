"""The typed exception hierarchy.

Every error ckptool raises on purpose is a :class:`CkptError`. Its message is meant for a person: it
names the file (and the key, when there is one), the cause, and the fix. The CLI prints it as one line
on stderr and exits with :attr:`CkptError.exit_code` (2: the command could not do its job).
"""

from __future__ import annotations

from pathlib import Path


class CkptError(Exception):
    """Base class of every error ckptool reports to a user."""

    exit_code: int = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(CkptError):
    """The command was asked for something that makes no sense (bad option values, unknown names)."""


class UnreadableError(CkptError):
    """The path cannot be read at all: missing, a directory, permission denied."""


class UnsupportedFormatError(CkptError):
    """The bytes are not any checkpoint format ckptool knows."""


class CorruptFileError(CkptError):
    """The file claims to be a known format but its bytes are inconsistent (truncated, lying headers)."""


class UnsafeFileError(CkptError):
    """The file asks for something ckptool refuses to do (run code, read outside its folder)."""


class UnsafePickleError(UnsafeFileError):
    """A pickle references something outside the allowlist; nothing was executed."""

    def __init__(self, message: str, *, global_name: str | None = None, **kw: object):
        self.global_name = global_name
        super().__init__(message, **kw)  # type: ignore[arg-type]


class KeyNotFoundError(CkptError):
    """``--key`` or a state_dict lookup named something that is not there."""


class OutputExistsError(CkptError):
    """An output file exists and ``--force`` was not given."""


class UnknownArchError(CkptError):
    """An architecture name that is neither in the registry nor an importable ``module:callable``."""


class FindingsError(CkptError):
    """The command ran, and what it found is a failure (exit 1): incompatible, parity failed, unsafe, different.

    The CLI raises it after showing the result; ``ckptool.cli._errors`` turns it into exit 1 and prints nothing
    more."""

    exit_code = 1


class MissingExtraError(CkptError):
    """The command needs an optional dependency that is not installed (``pip install 'ckptool[EXTRA]'``)."""

    def __init__(self, message: str, *, extra: str, module: str, **kw: object):
        self.extra = extra
        self.module = module
        super().__init__(message, **kw)  # type: ignore[arg-type]


class WeightsMismatchError(CkptError):
    """The checkpoint does not load strictly into the architecture (exit 2); the message carries check's findings."""


class InputShapeError(UsageError):
    """The model cannot take inputs of the requested shape (exit 2)."""


class ExportFailedError(CkptError):
    """torch's exporter could not export the model (exit 2)."""


class OnnxCheckError(CkptError):
    """The written model fails ``onnx.checker.check_model(full_check=True)`` (exit 2)."""


def first_line(e: BaseException, limit: int = 400) -> str:
    """The first non-empty line of an exception's message (ANSI colour codes removed), at most ``limit``
    characters; the exception's type name when it has no message."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return (line or type(e).__name__)[:limit]
