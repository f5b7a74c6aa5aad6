"""Pick the reader from the file's first bytes (never from its extension), or from what a folder holds.

Everything the user names goes through a :class:`~ckptool.sources.Location` (:func:`~ckptool.sources.open_location`):
a file is sniffed and read by its format; a folder is offered to each format with a ``detect_folder(loc)``
hook, in registry order, and read by the first that claims it (``read_location(loc, key=)``). A format whose
file names other files (an ``*.index.json``) supplies ``read_location`` instead of ``read``, and reads its
members through the Location (never through a path of its own making) with :func:`read_file`, which it
finds in :mod:`._members` (set here) so that a format never imports the registry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import ModuleType

from .._gc import paused_gc
from ..checkpoint import Checkpoint
from ..errors import CkptError, CorruptFileError, UnreadableError, UnsupportedFormatError
from ..sources import Location, Source, open_location
from . import _members, dcp, hf_index, onnx, safetensors, torch_legacy, torch_tar, torch_zip, unpickler

# The registry: format name -> its module (``NAME``, ``detect(head, size)``, ``read(source, key=)``,
# optionally ``findings``, ``scan(ctx)``; a format of several files: ``read_location(loc, key=)`` and, for a
# folder, ``detect_folder(loc)``). Detection runs in this order (folders too: the first format whose
# detect_folder claims one reads it). Adding a format is one module plus one line here.
FORMATS: dict[str, ModuleType] = {
    torch_zip.NAME: torch_zip,
    torch_legacy.NAME: torch_legacy,
    torch_tar.NAME: torch_tar,
    safetensors.NAME: safetensors,
    hf_index.NAME: hf_index,
    onnx.NAME: onnx,
    dcp.NAME: dcp,
}
READERS = {name: module.read for name, module in FORMATS.items() if hasattr(module, "read")}


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


def detect_format(path: str | os.PathLike[str] | Location) -> str:
    """The format name of a file (from its first bytes), or of the folder format that claims a folder."""
    loc = open_location(path)
    if loc.is_folder:
        for name, module in FORMATS.items():
            claims = getattr(module, "detect_folder", None)
            if claims is not None and claims(loc):
                return name
        raise UnreadableError(
            "is a directory that holds no checkpoint ckptool recognises (no *.index.json, no weight file)",
            path=loc.name,
        )
    src = loc.open()
    try:
        return sniff(src)
    finally:
        src.close()


def sniff(src: Source) -> str:
    """The format name of a Source, from its first bytes (never from its name)."""
    path = src.name
    try:
        return sniff_bytes(src.read(0, min(4096, src.size)), src.size)
    except UnsupportedFormatError as e:
        raise UnsupportedFormatError(e.message, path=path, hint=e.hint) from None


def open_checkpoint(
    path: str | os.PathLike[str] | Location, *, key: str | None = None, allow_globals: Iterable[str] = ()
) -> Checkpoint:
    """Read a checkpoint's metadata without trusting it and without reading tensor bytes.

    ``key`` selects the state_dict inside a training checkpoint (a key of the root, or a dotted path);
    by default the conventional key holding the largest mapping of tensors is used. ``allow_globals`` adds
    pickle globals to record as opaque data (see :func:`ckptool.allow_globals`). Every error names the file.

    ``path`` may be a file, a folder (a sharded Hugging Face checkpoint, ...) or an ``*.index.json``, or a
    :class:`~ckptool.sources.Location`; a checkpoint of several files lists them in ``Checkpoint.files``.
    """
    loc = open_location(path)
    path = loc.name
    with unpickler.allow_globals(*allow_globals), paused_gc():  # a million small acyclic objects at 100k tensors
        try:
            return _open(loc, key)
        except CkptError as e:
            if e.path is None:  # raised below the reader (the unpickler): say which file
                e.path = path
                e.args = (e.render(),)
            raise


def _open(loc: Location, key: str | None) -> Checkpoint:
    if loc.is_folder:
        for module in FORMATS.values():
            claims = getattr(module, "detect_folder", None)
            if claims is not None and claims(loc):
                ck: Checkpoint = module.read_location(loc, key=key)
                return ck
        raise UnreadableError(
            "is a directory that holds no checkpoint ckptool recognises (no *.index.json, no weight file)",
            path=loc.name,
        )
    return read_file(loc, None, key=key)


def read_file(loc: Location, full: str | None, *, key: str | None = None) -> Checkpoint:
    """Read one file of ``loc`` with its format's reader: the location's own file (``full`` None) or a name
    :meth:`Location.resolve` returned (a shard)."""
    src = loc.open() if full is None else loc.open_path(full)
    path = src.name
    try:
        fmt = sniff(src)
        module = FORMATS[fmt]
        if fmt not in READERS:  # a file that names others (an index): read through its Location
            if full is not None:
                raise UnsupportedFormatError(f"a {fmt} file cannot be a member of another checkpoint", path=path)
            ck: Checkpoint = module.read_location(loc, key=key)
            return ck
        ck = READERS[fmt](src, key=key)
    except RecursionError:
        raise CorruptFileError("structure nests too deeply", path=path) from None
    except MemoryError:
        raise CorruptFileError("file asks for more memory than it can hold", path=path) from None
    except CkptError as e:
        if e.path is None:  # raised below the reader (the unpickler): say which file
            e.path = path
            e.args = (e.render(),)
        raise
    finally:
        src.close()
    ck.opener = loc.open_path
    return ck


_members.READ_FILE = read_file
