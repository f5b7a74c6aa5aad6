"""Pick the reader from the file's first bytes (never from its extension)."""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterable
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import CkptError, CorruptFileError, UnreadableError, UnsupportedFormatError
from . import onnx, safetensors, torch_legacy, torch_zip, unpickler

LEGACY_HEAD = b"\x8a\x0a" + torch_legacy.MAGIC_NUMBER.to_bytes(10, "little")

READERS = {
    "torch-zip": torch_zip.read,
    "torch-legacy": torch_legacy.read,
    "safetensors": safetensors.read,
    "onnx": onnx.read,
}


def sniff_bytes(head: bytes, size: int) -> str:
    """The format name for a file starting with ``head`` (of total ``size`` bytes)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch-zip"
    if len(head) >= 14 and head[0] == 0x80 and head[2:14] == LEGACY_HEAD:
        return "torch-legacy"
    if head.startswith(LEGACY_HEAD):
        return "torch-legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and n <= size - 8:
            return "safetensors"
    if onnx.looks_like_onnx(head):
        return "onnx"
    if len(head) > 262 and head[257:262] == b"ustar":
        raise UnsupportedFormatError(
            "a tar archive: this is torch's pre-0.4 tar checkpoint format (or not a checkpoint), which ckptool does not read",
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise UnsupportedFormatError(
            "a bare pickle, not a torch.save file (no torch magic number)",
            hint="if it came from pickle.dump, re-save it with torch.save or safetensors",
        )
    if head.startswith(b"\x89HDF"):
        raise UnsupportedFormatError("an HDF5 file (Keras .h5?), not a PyTorch checkpoint")
    if head.startswith(b"GGUF"):
        raise UnsupportedFormatError("a GGUF file, not a PyTorch checkpoint")
    if head.startswith(b"\x1f\x8b"):
        raise UnsupportedFormatError("a gzip file", hint="decompress it first")
    raise UnsupportedFormatError("not a checkpoint ckptool recognises (torch zip, torch legacy, safetensors, ONNX)")


def open_map(path: str) -> tuple[Any, int]:
    """A read-only mmap of a regular, non-empty file and its size; every failure is a CkptError naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnreadableError("no such file", path=path) from None
    except PermissionError:
        raise UnreadableError("permission denied", path=path) from None
    except (OSError, ValueError) as e:
        raise UnreadableError(f"cannot stat ({getattr(e, 'strerror', None) or e})", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableError("is a directory, not a checkpoint file", path=path)
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableError("is not a regular file", path=path)
    if st.st_size == 0:
        raise CorruptFileError("file is empty", path=path)
    try:
        with open(path, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), st.st_size
    except PermissionError:
        raise UnreadableError("permission denied", path=path) from None
    except (OSError, ValueError) as e:
        raise UnreadableError(f"cannot read ({e})", path=path) from None


def detect_format(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    mm, size = open_map(path)
    try:
        return _sniff(mm, size, path)
    finally:
        mm.close()


def _sniff(mm: Any, size: int, path: str) -> str:
    try:
        return sniff_bytes(bytes(mm[:4096]), size)
    except UnsupportedFormatError as e:
        raise UnsupportedFormatError(e.message, path=path, hint=e.hint) from None


def open_checkpoint(
    path: str | os.PathLike[str], *, key: str | None = None, allow_globals: Iterable[str] = ()
) -> Checkpoint:
    """Read a checkpoint's metadata without trusting it and without reading tensor bytes.

    ``key`` selects the state_dict inside a training checkpoint (a key of the root, or a dotted path);
    by default the conventional key holding the largest mapping of tensors is used. ``allow_globals`` adds
    pickle globals to record as opaque data (see :func:`ckptool.allow_globals`). Every error names the file.
    """
    path = os.fspath(path)
    with unpickler.allow_globals(*allow_globals):
        try:
            return _open(path, key)
        except CkptError as e:
            if e.path is None:  # raised below the reader (the unpickler): say which file
                e.path = path
                e.args = (e.render(),)
            raise


def _open(path: str, key: str | None) -> Checkpoint:
    mm, size = open_map(path)
    try:
        fmt = _sniff(mm, size, path)
        try:
            ck = READERS[fmt](path, mm, key=key)
        except RecursionError:
            raise CorruptFileError("structure nests too deeply", path=path) from None
        except MemoryError:
            raise CorruptFileError("file asks for more memory than it can hold", path=path) from None
    finally:
        mm.close()
    return ck
