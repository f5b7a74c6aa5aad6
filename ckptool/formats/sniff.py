"""Pick the reader from the file's first bytes (never from its extension)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import ModuleType

from ..checkpoint import Checkpoint
from ..errors import CkptError, CorruptFileError, UnsupportedFormatError
from ..sources import Source, open_source
from . import dcp, onnx, safetensors, torch_legacy, torch_zip, unpickler

# The registry: format name -> its module (``NAME``, ``detect(head, size)``, ``read(source, key=)``,
# optionally ``findings``; a format that is a folder adds ``detect_folder(path)`` and ``read_location(path, key=)``).
# Detection runs in this order. Adding a format is one module plus one line here.
FORMATS: dict[str, ModuleType] = {
    torch_zip.NAME: torch_zip,
    torch_legacy.NAME: torch_legacy,
    safetensors.NAME: safetensors,
    onnx.NAME: onnx,
    dcp.NAME: dcp,
}
READERS = {name: module.read for name, module in FORMATS.items()}


def detect(head: bytes, size: int) -> str | None:
    """The registered format whose detector claims a file starting with ``head`` (of ``size`` bytes), or None."""
    for name, module in FORMATS.items():
        if module.detect(head, size):
            return name
    return None


def sniff_bytes(head: bytes, size: int) -> str:
    """The format name for a file starting with ``head`` (of total ``size`` bytes); else why it is none."""
    name = detect(head, size)
    if name is not None:
        return name
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


def detect_format(path: str | os.PathLike[str]) -> str:
    with open_source(os.fspath(path), allow_empty=False) as src:
        return sniff(src)


def sniff(src: Source) -> str:
    """The format name of a Source, from its first bytes (never from its name)."""
    path = src.name
    try:
        return sniff_bytes(src.read(0, min(4096, src.size)), src.size)
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
    if os.path.isdir(path):
        for module in FORMATS.values():
            hook = getattr(module, "detect_folder", None)
            if hook is not None and hook(path):
                return module.read_location(path, key=key)  # type: ignore[no-any-return]
    with open_source(path, allow_empty=False) as src:
        fmt = sniff(src)
        try:
            return READERS[fmt](src, key=key)
        except RecursionError:
            raise CorruptFileError("structure nests too deeply", path=path) from None
        except MemoryError:
            raise CorruptFileError("file asks for more memory than it can hold", path=path) from None
