"""ckptool's restricted unpickler: a pickle *interpreter* that records tensor metadata and executes nothing.

It walks the opcodes with :func:`pickletools.genops` and implements the stack machine itself. Globals are
looked up in :data:`ALLOWED` (the names a tensor checkpoint needs, like torch's ``weights_only``); the
"call" of an allowed global runs ckptool's own recorder for it (a storage reference, a tensor record, a
dict), never the named function. Any other global, and every opcode that could reach arbitrary code
(``EXT*``, out-of-band buffers), stops the read with :class:`UnsafePickleError` naming it.

Resource bounds: opcode count, memo size, stack size, MARK depth and object nesting depth are capped
(cost is linear in the pickle's bytes: about 1 us and a few dozen bytes per opcode), shared references
(DUP, memo GET) are never copied, and reads never trust a length the pickle claims (the source is clamped
to the bytes that exist). BUILD on anything but an allowed object is refused like an unknown global.
"""

from __future__ import annotations

import _compat_pickle
import functools
import io
import math
import mmap
import pickletools
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from .. import dtypes
from ..errors import CorruptFileError, UnsafePickleError, UsageError

MAX_OPS = 10_000_000
MAX_MEMO = 1_000_000
# The memo and opcode bounds scale with the pickle's size: torch writes 8 memo entries per tensor in about 100
# bytes of pickle (12.7 bytes per entry at 10k..200k tensors), so a 200k-tensor state_dict memoizes 1.6M objects
# in a 20 MB pickle. A pickle may memoize one entry per MEMO_BYTES bytes past MAX_MEMO, and run one opcode per
# byte past MAX_OPS (an opcode is at least one byte). The dense memo costs 8 bytes per entry (a list slot);
# out-of-order (sparse) entries cost ~100 and stay capped at MAX_MEMO whatever the size.
MEMO_BYTES = 8


def memo_bound(nbytes: int) -> int:
    """How many memo entries a pickle of ``nbytes`` bytes may make."""
    return max(MAX_MEMO, nbytes // MEMO_BYTES)


def ops_bound(nbytes: int) -> int:
    """How many opcodes a pickle of ``nbytes`` bytes may run."""
    return max(MAX_OPS, nbytes)


MAX_STACK = 1_000_000
MAX_MARK_DEPTH = 10_000
# torch's (C) unpickler keeps the memo in an array of 2 x the largest PUT index: an index of 2**31 needs
# 32 GiB and fails with MemoryError. Pickles number memo entries from 0, so no real file comes close.
MAX_MEMO_INDEX = 1 << 31
HIGHEST_PROTOCOL = 5  # what Python 3.11-3.13 (and so torch.load) reads; PROTO 6 is refused
# Containers may nest at most this deep. Hashing a deeply nested tuple (a dict key, a set item) recurses
# in C without a guard and crashes CPython 3.11 (SIGSEGV at ~100k levels); recursive code downstream
# (repr, json) would raise RecursionError. Real checkpoints nest < 20 levels.
MAX_DEPTH = 200


# --------------------------------------------------------------------------------------------
# What the recorder builds instead of torch objects
# --------------------------------------------------------------------------------------------
# Set while the C unpickler (formats/fastpickle.py) runs: its BUILD calls ``__setstate__``, which is then the pure
# path's BUILD (:func:`_build`); otherwise ``__setstate__`` is Python's default (copy and pickle keep working).
_C_BUILD: ContextVar[bool] = ContextVar("ckptool_c_build", default=False)


@contextmanager
def c_build() -> Iterator[None]:
    token = _C_BUILD.set(True)
    try:
        yield
    finally:
        _C_BUILD.reset(token)


class _Recorded:
    """What the recorder classes share: BUILD (``__setstate__``) under the C unpickler is :func:`_build`."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if _C_BUILD.get():
            _build(self, state, "pickle")
            return
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        for k, v in {**(state or {}), **(slots or {})}.items():
            object.__setattr__(self, k, v)


@dataclass(frozen=True)
class Global(_Recorded):
    """A reference to an allowed global (never the real object)."""

    module: str
    name: str

    @functools.cached_property
    def qualname(self) -> str:  # (cached in the instance's __dict__: a REDUCE asks for it every call)
        return f"{self.module}.{self.name}"

    def __call__(self, *args: Any) -> Any:
        """What the C unpickler's REDUCE does with it: ckptool's recorder for the name (:func:`call`), never the
        named function."""
        return call(self, args)


@dataclass(slots=True, unsafe_hash=True)  # (not frozen: a frozen dataclass's __init__ costs 1 us more per tensor)
class StorageRef(_Recorded):
    """A persistent-id storage reference: ('storage', <class>, key, location, numel[, view_metadata])."""

    key: str
    dtype: str
    numel: int
    location: str
    view_of: str | None = None  # legacy views: the root storage key
    view_offset: int = 0  # legacy views: element offset into the root storage


@dataclass(slots=True)  # 100k tensors: 100k records (a __dict__ each would be ~30 MB more)
class TensorRecord(_Recorded):
    storage: StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False
    neg: bool = False  # torch's lazy negation bit (``_rebuild_tensor_v2`` metadata): values are -storage
    conj: bool = False  # the lazy conjugation bit (complex): values are conj(storage)
    quant: dict[str, Any] | None = None  # quantized: scheme, scale / zero point (or per-channel tensors), axis


@dataclass
class SparseRecord:
    """A sparse COO tensor (``_rebuild_sparse_tensor``): its indices and values tensors and its dense size."""

    layout: str
    indices: TensorRecord
    values: TensorRecord
    shape: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.values.dtype

    @property
    def nnz(self) -> int:
        return self.values.shape[0] if self.values.shape else 1


class PickledDict(_Recorded, dict):  # type: ignore[type-arg]
    """A dict that also remembers its class (dict / OrderedDict) and BUILD state (state_dict ``_metadata``)."""

    kind: str = "dict"
    state: Any = None


class PickledOrderedDict(PickledDict):
    """An ``OrderedDict``: its kind a class attribute (torch writes an empty one, the backward hooks, with every
    tensor: setting ``kind`` on each gave each a ``__dict__``, 10 MB at 100k tensors)."""

    kind = "OrderedDict"


@dataclass
class Opaque(_Recorded):
    """An allowed object that ckptool does not model (numpy arrays, TorchScript objects, ...)."""

    kind: str
    value: Any = None
    state: Any = None
    fields: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.kind}>" if self.value is None else repr(self.value)


# --------------------------------------------------------------------------------------------
# The allowlist: qualified name -> recorder
# --------------------------------------------------------------------------------------------
def _ordered_dict(*args: Any) -> PickledDict:
    d = PickledOrderedDict()
    if args and args[0]:
        for k, v in args[0]:
            d[k] = v
    return d


def _as_int_tuple(x: Any, what: str) -> tuple[int, ...]:
    if type(x) is tuple:  # what pickles hold: a tuple of exact ints is returned as it is
        for i in x:
            if type(i) is not int:
                break
        else:
            return x
    if isinstance(x, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in x):
        return tuple(x)
    raise CorruptFileError(f"tensor {what} is not a tuple of ints: {type(x).__name__}")


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None) -> TensorRecord:
    if not isinstance(storage, StorageRef):
        raise CorruptFileError("tensor rebuild without a storage reference")
    if not isinstance(offset, int) or offset < 0:
        raise CorruptFileError("tensor storage offset is not a non-negative int")
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides) or (shape and min(shape) < 0):
        raise CorruptFileError("tensor size and stride disagree")
    return TensorRecord(storage, offset, shape, strides, dtype or storage.dtype)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRecord:
    return _tensor(storage, offset, size, stride)


def _set_metadata(t: TensorRecord, metadata: Any) -> None:
    """torch's ``set_tensor_metadata``: the *presence* of "conj" / "neg" sets the bit (its value is ignored);
    other keys are ignored. The conj bit on a non-complex tensor fails in torch (an internal assert)."""
    if not metadata:
        return
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"tensor metadata is a {type(metadata).__name__}, not a dict")
    if "conj" in metadata:
        if not t.dtype.startswith("complex"):
            raise CorruptFileError(f"tensor metadata sets the conj bit on a {t.dtype} tensor (torch.load fails on it)")
        t.conj = True
    if "neg" in metadata:
        t.neg = True


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
    *_: Any,
) -> TensorRecord:
    t = _tensor(storage, offset, size, stride)
    t.requires_grad = bool(requires_grad)
    _set_metadata(t, metadata)
    return t


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
    *_: Any,
) -> TensorRecord:
    name = dtype.name if isinstance(dtype, Global) else None
    if name is None:
        raise CorruptFileError("_rebuild_tensor_v3 without a dtype")
    t = _tensor(storage, offset, size, stride, dtypes.lookup(name).name)
    t.requires_grad = bool(requires_grad)
    _set_metadata(t, metadata)
    return t


def _rebuild_parameter(data: Any, requires_grad: Any = False, *_: Any) -> Any:
    if isinstance(data, TensorRecord):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


# Tensor attributes whose setters change (or reinterpret) the values: a state that sets one is refused.
_VALUE_ATTRS = frozenset({"real", "imag", "T", "H", "mT", "mH", "_cdata", "dtype", "device", "shape", "layout"})


def _take_data(rec: TensorRecord, data: Any) -> None:
    """``param.data = t``: the record now shows t's storage, offset, shape, stride, dtype and view bits."""
    if not isinstance(data, TensorRecord):
        raise CorruptFileError(f"a tensor state sets data to a {type(data).__name__}, not a tensor")
    rec.storage, rec.storage_offset, rec.shape, rec.stride = data.storage, data.storage_offset, data.shape, data.stride
    rec.dtype, rec.neg, rec.conj = data.dtype, data.neg, data.conj


def _set_obj_state(obj: Any, state: Any) -> Any:
    """torch's ``_utils._set_obj_state`` on a tensor: a dict (or a (dict, slots) pair) of attributes set with
    setattr. ``data`` replaces the values (torch.load returns the state's tensor); attributes that change the
    values any other way are refused; other attributes carry no values and are ignored."""
    if isinstance(state, tuple):
        if len(state) != 2:
            raise CorruptFileError(f"invalid serialized tensor state: a tuple of {len(state)}")
        parts = [state[0], state[1]]
    else:
        parts = [state]
    for part in parts:
        if not part:
            continue
        if not isinstance(part, dict):
            raise CorruptFileError(f"invalid serialized tensor state: a {type(part).__name__}")
        for k, v in part.items():
            if not isinstance(k, str):
                raise CorruptFileError("tensor state attribute names must be strings")
            if k == "data":
                if not isinstance(obj, TensorRecord):
                    raise CorruptFileError("a tensor state on something that is not a tensor")
                _take_data(obj, v)
            elif k in _VALUE_ATTRS:
                raise CorruptFileError(
                    f"a tensor state sets {k!r}, which changes its values in torch; ckptool does not apply it"
                )
            elif k == "requires_grad" and isinstance(obj, TensorRecord):
                obj.requires_grad = bool(v)
    return obj


def _rebuild_parameter_with_state(
    data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None, *_: Any
) -> Any:
    return _set_obj_state(_rebuild_parameter(data, requires_grad), state)


QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")


def _rebuild_qtensor(
    storage: Any, offset: Any, size: Any, stride: Any, qparams: Any, requires_grad: Any = False, *_: Any
) -> TensorRecord:
    """A quantized tensor as data: the integer storage, plus its scheme and scale / zero point (torch's checks:
    a known scheme, per-channel axis in range and one scale and zero point per channel)."""
    t = _tensor(storage, offset, size, stride)
    if not t.dtype.startswith(("qint", "quint")):
        raise CorruptFileError(f"_rebuild_qtensor on a {t.dtype} storage")
    t.requires_grad = bool(requires_grad)
    if not isinstance(qparams, tuple) or not qparams or not isinstance(qparams[0], Global):
        raise CorruptFileError("_rebuild_qtensor without a quantization scheme")
    scheme = qparams[0].name
    if scheme == "per_tensor_affine" and len(qparams) == 3:
        _, scale, zero_point = qparams
        if not isinstance(scale, (int, float)) or not isinstance(zero_point, int):
            raise CorruptFileError("per-tensor quantization needs a float scale and an int zero point")
        t.quant = {"scheme": scheme, "scale": float(scale), "zero_point": int(zero_point)}
    elif scheme in QSCHEMES[1:] and len(qparams) == 4:
        _, scales, zero_points, axis = qparams
        if not isinstance(axis, int) or not 0 <= axis < len(t.shape):
            raise CorruptFileError(f"per-channel quantization axis {axis!r} is out of range for {list(t.shape)}")
        n = t.shape[axis]
        lens = [len(x) if isinstance(x, list) else (x.shape[0] if isinstance(x, TensorRecord) and x.shape else -1)
                for x in (scales, zero_points)]  # fmt: skip
        if lens != [n, n]:
            raise CorruptFileError(f"per-channel quantization needs {n} scales and zero points, found {lens}")
        t.quant = {"scheme": scheme, "axis": axis, "channels": n, "scales": scales, "zero_points": zero_points}
    else:
        raise CorruptFileError(f"unsupported quantization scheme {scheme} with {len(qparams)} parameters")
    return t


def _rebuild_sparse_tensor(layout: Any, data: Any) -> SparseRecord:
    name = layout.name if isinstance(layout, Global) else None
    if name != "sparse_coo":
        raise CorruptFileError(f"sparse layout {name or type(layout).__name__} is not supported (sparse COO is)")
    if not isinstance(data, tuple) or len(data) not in (3, 4):
        raise CorruptFileError("sparse COO tensor data is not (indices, values, size[, is_coalesced])")
    indices, values, size = data[:3]
    if not isinstance(indices, TensorRecord) or not isinstance(values, TensorRecord):
        raise CorruptFileError("sparse COO indices and values must be tensors")
    shape = _as_int_tuple(size, "size")
    if len(indices.shape) != 2 or indices.shape[1] != (values.shape[0] if values.shape else 1):
        raise CorruptFileError("sparse COO indices and values disagree")
    return SparseRecord(name, indices, values, shape)


LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")


def _get_layout(name: Any = None, *_: Any) -> Global:
    """``torch.serialization._get_layout("torch.sparse_coo")``: how torch pickles a layout (a name lookup in
    torch's own table, nothing imported)."""
    if not isinstance(name, str) or name.removeprefix("torch.") not in LAYOUTS or not name.startswith("torch."):
        raise CorruptFileError(f"_get_layout of {str(name)[:40]!r}, which is not a torch layout")
    return Global("torch", name.removeprefix("torch."))


def _counter(*args: Any) -> PickledDict:
    d = PickledDict()
    d.kind = "Counter"
    if args and isinstance(args[0], dict):
        d.update(args[0])
    elif args and args[0] is not None:
        raise CorruptFileError("collections.Counter rebuilt from something that is not a dict")
    return d


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if not (isinstance(new_type, Global) and new_type.qualname in ("torch.Tensor", "torch.nn.parameter.Parameter")):
        name = new_type.qualname if isinstance(new_type, Global) else type(new_type).__name__
        raise UnsafePickleError(f"tensor subclass {name} is not allowed", global_name=name)
    if not isinstance(func, Global) or func.qualname not in ALLOWED:
        raise UnsafePickleError("_rebuild_from_type_v2 with a non-allowed function")
    if not isinstance(args, (tuple, list)):
        raise CorruptFileError("_rebuild_from_type_v2 arguments are not a tuple")
    return _set_obj_state(call(func, tuple(args)), state)


def _tensor_setstate(rec: TensorRecord, state: Any, where: str) -> None:
    """BUILD on a rebuilt tensor. torch (weights_only) calls ``tensor.set_(*state)`` on a Tensor and
    ``Tensor.__setstate__`` on a Parameter (which calls ``set_`` for 4 items); the C unpickler calls
    ``__setstate__`` for both. ckptool applies the 4-item form, where both agree: (storage, offset, size,
    stride) replaces what the tensor shows. Anything else is refused."""
    if not (isinstance(state, tuple) and len(state) == 4):
        what = f"a tuple of {len(state)}" if isinstance(state, tuple) else f"a {type(state).__name__}"
        raise CorruptFileError(f"{where}: BUILD on a tensor with {what} (torch calls set_() with it)")
    source, offset, size, stride = state
    if isinstance(source, TensorRecord):
        source = source.storage
    if not isinstance(source, StorageRef):
        raise CorruptFileError(f"{where}: BUILD sets a tensor to a {type(source).__name__}, not a storage")
    if source.dtype != rec.dtype and source.dtype != "uint8":
        raise CorruptFileError(
            f"{where}: BUILD sets a {rec.dtype} tensor to a {source.dtype} storage (torch refuses set_ across dtypes)"
        )
    new = _tensor(source, offset, size, stride, rec.dtype)
    rec.storage, rec.storage_offset, rec.shape, rec.stride = new.storage, new.storage_offset, new.shape, new.stride


def _size(*args: Any) -> tuple[Any, ...]:
    return tuple(args[0]) if args else ()


def _device(*args: Any) -> str:
    if not args:
        return "cpu"
    if len(args) >= 2 and args[1] is not None:
        return f"{args[0]}:{args[1]}"
    return str(args[0])


def _codecs_encode(obj: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise CorruptFileError("_codecs.encode with unexpected arguments")
    return obj.encode(encoding)


_NP_SCALAR_FORMATS = {
    "f8": "<d",
    "f4": "<f",
    "f2": "<e",
    "i8": "<q",
    "i4": "<i",
    "i2": "<h",
    "i1": "<b",
    "u1": "<B",
    "b1": "<?",
}


def _np_dtype(*args: Any) -> Opaque:
    return Opaque("numpy.dtype", value=str(args[0]) if args else None)


def _np_scalar(dt: Any, data: Any = None) -> Any:
    code = dt.value if isinstance(dt, Opaque) else None
    if isinstance(code, str) and isinstance(data, bytes):
        fmt = _NP_SCALAR_FORMATS.get(code.lstrip("<=|"))
        if fmt and struct.calcsize(fmt) == len(data):
            return struct.unpack(fmt, data)[0]
    return Opaque("numpy scalar")


def _np_reconstruct(*_: Any) -> Opaque:
    return Opaque("numpy.ndarray")


def _container(kind: type) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        if not args:
            return kind()
        if kind in (set, frozenset) and isinstance(args[0], (list, tuple, set, frozenset)):
            cache: TupleDepths = {}
            for item in args[0]:
                _hashable(item, cache)
        try:
            return kind(args[0])
        except TypeError as e:
            raise CorruptFileError(f"cannot rebuild {kind.__name__}: {e}") from None

    return make


@dataclass(frozen=True)
class DTypeOrStorage(Global):
    pass


# name -> what a REDUCE/NEWOBJ "call" of it does (None: a value, not callable)
ALLOWED: dict[str, Callable[..., Any] | None] = {
    "collections.OrderedDict": _ordered_dict,
    "collections.Counter": _counter,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_sparse_tensor": _rebuild_sparse_tensor,
    **{f"torch.{q}": None for q in QSCHEMES},
    "torch.serialization._get_layout": _get_layout,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": _size,
    "torch.device": _device,
    "torch.Tensor": None,
    "torch.nn.parameter.Parameter": None,
    "_codecs.encode": _codecs_encode,
    "builtins.set": _container(set),
    "builtins.frozenset": _container(frozenset),
    "builtins.bytearray": _container(bytearray),
    "builtins.complex": lambda *a: complex(*[x for x in a if isinstance(x, (int, float))][:2]),
    "numpy.core.multiarray.scalar": _np_scalar,
    "numpy._core.multiarray.scalar": _np_scalar,
    "numpy.dtype": _np_dtype,
    "numpy.core.multiarray._reconstruct": _np_reconstruct,
    "numpy._core.multiarray._reconstruct": _np_reconstruct,
    "numpy.ndarray": None,
}
for _name in list(dtypes.BY_STORAGE):
    ALLOWED[f"torch.{_name}"] = None
    ALLOWED[f"torch.cuda.{_name}"] = None
ALLOWED["torch.storage.UntypedStorage"] = None
ALLOWED["torch.storage.TypedStorage"] = None
for _d in dtypes.BY_NAME:
    ALLOWED[f"torch.{_d}"] = None
for _alias in dtypes.TORCH_ALIASES:
    ALLOWED[f"torch.{_alias}"] = None


def resolve_name(module: str, name: str) -> tuple[str, str]:
    """The (module, name) that Python would really import, mapping Python 2 spellings (``__builtin__``...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return module, name


# The denylist (code, resolvers, processes, files, network, nested loaders): ckptool.formats.denylist.
from .denylist import DANGEROUS_MODULES as DANGEROUS_MODULES  # noqa: E402
from .denylist import DANGEROUS_NAMES as DANGEROUS_NAMES  # noqa: E402
from .denylist import is_dangerous  # noqa: E402


# -- inert data: classes common in training checkpoints that carry no code ----------------------------------
def _opaque(kind: str) -> Callable[..., Opaque]:
    def make(*_: Any) -> Opaque:
        return Opaque(kind)

    return make


def _pure_path(kind: str) -> Callable[..., Opaque]:
    import pathlib  # pure paths: string arithmetic only, never the file system

    pure = pathlib.PureWindowsPath if "Windows" in kind else pathlib.PurePosixPath

    def make(*parts: Any) -> Opaque:
        return Opaque(kind, value=str(pure(*(p for p in parts if isinstance(p, str)))))

    return make


# Recorded as opaque values (with a note), never constructed: argparse.Namespace (a bag of attributes, filled
# by BUILD), pathlib paths (strings), numpy dtype classes (numpy dtypes, scalars and arrays are in ALLOWED).
INERT: dict[str, Callable[..., Any]] = {
    "argparse.Namespace": _opaque("argparse.Namespace"),
    **{
        f"pathlib.{k}": _pure_path(f"pathlib.{k}")
        for k in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")
    },
}


def is_inert(qualname: str) -> bool:
    if qualname in INERT:
        return True
    head, _, cls = qualname.rpartition(".")
    return head == "numpy.dtypes" and cls.endswith("DType") and cls.isidentifier()


# -- what the user allows: scoped (a context variable), never a global table mutated at import -------------
_USER_ALLOWED: ContextVar[frozenset[str]] = ContextVar("ckptool_allowed_globals", default=frozenset())


def user_allowed() -> frozenset[str]:
    """The globals the caller allowed for the current scope (:func:`allow_globals`)."""
    return _USER_ALLOWED.get()


def check_allowable(names: Iterable[str]) -> frozenset[str]:
    """The resolved ``module.name`` of each name a user wants to allow; UsageError for a bad or dangerous one."""
    out = set()
    for raw in names:
        name = str(raw).strip()
        module, dot, attr = name.rpartition(".")
        if not dot or not module or not attr or not all(p.isidentifier() for p in name.split(".")):
            raise UsageError(
                f"--allow-global {name!r} is not MODULE.NAME", hint="e.g. --allow-global argparse.Namespace"
            )
        module, attr = resolve_name(module, attr)
        qual = f"{module}.{attr}"
        if is_dangerous(qual):
            raise UsageError(
                f"--allow-global {name!r}: {qual} can run code or touch the system, so it can never be allowed",
            )
        out.add(qual)
    return frozenset(out)


@contextmanager
def allow_globals(*names: str) -> Iterator[None]:
    """Allow more globals while the block runs (like torch's ``safe_globals``): the reader records each as an
    opaque value (its arguments and state are kept as data; nothing is imported or called).
    Dangerous names (the scan denylist: os, subprocess, builtins.eval, ...) raise :class:`UsageError`::

        with ckptool.allow_globals("mypkg.config.TrainConfig"):
            ck = ckptool.open_checkpoint("run.ckpt")
    """
    token = _USER_ALLOWED.set(_USER_ALLOWED.get() | check_allowable(names))
    try:
        yield
    finally:
        _USER_ALLOWED.reset(token)


# -- what a format allows in one read of its own metadata pickle: scoped, never the global table -----------
_NO_TABLE: Mapping[str, Callable[..., Any] | None] = MappingProxyType({})
_LOCAL_ALLOWED: ContextVar[Mapping[str, Callable[..., Any] | None]] = ContextVar(
    "ckptool_local_allowlist", default=_NO_TABLE
)


@contextmanager
def extend_allowlist(table: Mapping[str, Callable[..., Any] | None]) -> Iterator[None]:
    """Allow ``table``'s globals (qualified name -> ckptool's recorder for a call of it; None: a value, not
    callable) while the block runs, for a format whose own metadata pickle names its library's data classes
    (torch.distributed.checkpoint's ``.metadata``). The recorders are the format's inert stubs; nothing is
    imported or called, and outside the block the same names are judged as before (scan: dangerous)."""
    token = _LOCAL_ALLOWED.set(MappingProxyType({**_LOCAL_ALLOWED.get(), **table}))
    try:
        yield
    finally:
        _LOCAL_ALLOWED.reset(token)


def is_allowed(qualname: str) -> bool:
    """On the tensor allowlist, allowed by the caller, or by the format reading its own metadata: what scan
    calls safe."""
    return qualname in ALLOWED or qualname in _USER_ALLOWED.get() or qualname in _LOCAL_ALLOWED.get()


def is_torchscript_name(qualname: str) -> bool:
    """A TorchScript archive's own types (``__torch__.*``) and list helpers (``torch.jit._pickle.*``): allowed
    in TorchScript archives only, where they name compiled TorchScript classes, never Python imports."""
    return qualname.startswith(("__torch__.", "torch.jit._pickle.")) or qualname == "__torch__"


def make_global(module: str, name: str, *, torchscript: bool = False, inert: set[str] | None = None) -> Global:
    """The reference to an allowed global (never the real object). Inert and user-allowed globals are added to
    ``inert`` (for the reader's note); anything else is refused."""
    module, name = resolve_name(module, name)
    qual = f"{module}.{name}"
    if torchscript and is_torchscript_name(qual):
        return Global(module, name)
    if qual not in ALLOWED and qual not in _LOCAL_ALLOWED.get():
        if is_inert(qual) or qual in _USER_ALLOWED.get():
            if inert is not None:
                inert.add(qual)
            return Global(module, name)
        hint = "run `ckptool scan` to list every global it references"
        if not module.startswith(("torch", "numpy", "collections", "builtins", "_codecs")):
            hint = (
                "it may pickle a whole model object or code; if you trust it, load it in torch and re-save "
                "model.state_dict(); `ckptool scan` lists every global"
            )
        if not is_dangerous(qual):
            hint += f"; if it is plain data, --allow-global {qual} records it as an opaque value"
        raise UnsafePickleError(
            f"refusing to unpickle: it references {qual}, which is not on ckptool's allowlist of what a "
            "tensor checkpoint needs; nothing was executed",
            global_name=qual,
            hint=hint,
        )
    if module == "torch" or module == "torch.cuda" or module == "torch.storage":
        if name in dtypes.BY_STORAGE or name in ("UntypedStorage", "TypedStorage"):
            return DTypeOrStorage(module, name)
        if name in dtypes.BY_NAME or name in dtypes.TORCH_ALIASES:
            return DTypeOrStorage("torch", dtypes.lookup(name).name)
    return Global(module, name)


def _torchscript_global(g: Global) -> bool:
    """A global :func:`call` hands to :func:`_torchscript_call` (a TorchScript class or list helper)."""
    return g.module.startswith("__torch__") or g.qualname.startswith("torch.jit._pickle.")


def call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    if not isinstance(func, Global):
        raise CorruptFileError(f"pickle calls a {type(func).__name__}, which is not a global")
    qual = func.qualname
    torchscript = _torchscript_global(func)
    # the common case first: an allowlisted recorder without keyword arguments
    handler = None if kwargs or torchscript else ALLOWED.get(qual)
    if handler is None:
        if torchscript:
            return _torchscript_call(func, args)
        local = _LOCAL_ALLOWED.get()
        if qual in ALLOWED:
            handler = ALLOWED[qual]
        elif qual in local:  # a format's own metadata class: its recorder, never the class
            handler = local[qual]
        elif is_inert(qual) or qual in _USER_ALLOWED.get():  # recorded, never constructed
            handler = INERT.get(qual) or _opaque(qual)
            kwargs = None
        if handler is None:  # pragma: no cover - make_global refuses it first
            raise UnsafePickleError(f"refusing to call {qual}: it is not callable in a checkpoint", global_name=qual)
        if kwargs:
            raise CorruptFileError(f"{qual} called with keyword arguments")
    try:
        return handler(*args)
    except (CorruptFileError, UnsafePickleError):
        raise
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise CorruptFileError(f"bad arguments to {qual}: {e}") from None


def _torchscript_call(func: Global, args: tuple[Any, ...]) -> Any:
    # TorchScript archives: modules are rebuilt as __torch__.X objects; torch.jit._pickle helpers wrap lists.
    if func.qualname.startswith("torch.jit._pickle."):
        if func.name in (
            "build_intlist",
            "build_doublelist",
            "build_boollist",
            "build_tensorlist",
            "build_genericlist",
        ):
            return list(args[0]) if args else []
        if func.name == "restore_type_tag":
            return args[0] if args else None
        return Opaque(func.qualname)
    return Opaque(func.qualname)


# --------------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------------
class _Source:
    """A file-like view of ``buf[pos:end]`` for :func:`pickletools.genops`.

    ``read``/``tell`` are the C methods of :class:`io.BytesIO` or :class:`mmap.mmap` (the per-opcode
    ``read(1)`` dominates the interpreter's cost). Both clamp ``read(n)`` to the bytes that exist before
    allocating, so a length the pickle claims (BINBYTES8, LONG4, ...) never allocates more than is there.
    ``readline`` (protocol 0 text opcodes) is bounded to 1 MiB.
    """

    LINE_LIMIT = 1 << 20

    def __init__(self, buf: Any, pos: int = 0, end: int | None = None):
        size = len(buf)
        # reads may run past ``end`` (never past the buffer): the caller checks tell() <= end
        self.end = size if end is None else max(0, min(end, size))
        self._whole: bytes | None = None
        if isinstance(buf, mmap.mmap):
            self._mm: mmap.mmap | None = buf
            buf.seek(min(max(pos, 0), size))
            self.read = buf.read
            self.tell = buf.tell
            return
        self._mm = None
        reader = getattr(buf, "reader", None)
        if reader is not None:  # a lazy remote buffer: read through its cache, never copy buf[pos:end]
            f = reader(pos)
            self._bio, self._base = f, 0
            self.read, self.tell = f.read, f.tell
            return
        if isinstance(buf, bytes):
            bio = io.BytesIO(buf)  # shares the bytes object, no copy
            bio.seek(pos)
            self._base = 0
            self._whole = buf
        else:  # a memoryview/bytearray: copies buf[pos:end] once
            bio = io.BytesIO(bytes(buf[pos : self.end]))
            self._base = pos
        self._bio = bio
        self.read = bio.read
        self.tell = bio.tell if self._base == 0 else self._tell

    def _tell(self) -> int:
        return self._base + self._bio.tell()

    def raw(self) -> Any:
        """The buffer that positions index (a memory map, or a bytes object read in place), else None."""
        return self._mm if self._mm is not None else self._whole

    def seek(self, pos: int) -> None:
        if self._mm is not None:
            self._mm.seek(pos)
        else:
            self._bio.seek(pos - self._base)

    def readline(self) -> bytes:
        if self._mm is None:
            return self._bio.readline(self.LINE_LIMIT)
        mm = self._mm
        pos = mm.tell()
        stop = min(len(mm), pos + self.LINE_LIMIT)
        idx = mm.find(b"\n", pos, stop)
        return mm.read((stop if idx < 0 else idx + 1) - pos)


# --------------------------------------------------------------------------------------------
# The opcode stream: pickletools' genops, with the text integers read the way torch's (C) unpickler does
# --------------------------------------------------------------------------------------------
_C_SPACE = b" \t\n\v\f\r"  # C isspace() in the "C" locale
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def _strtol(s: bytes) -> tuple[int, int, bool]:
    """C ``strtol(s, &end, 0)``: (value, index of end, overflowed). Base 0: ``0x`` is hex, a leading 0 octal."""
    i, n = 0, len(s)
    while i < n and s[i] in _C_SPACE:
        i += 1
    neg = False
    if i < n and s[i] in b"+-":
        neg = s[i] == 0x2D
        i += 1
    base = 10
    if s[i : i + 1] == b"0":
        if s[i + 1 : i + 2] in (b"x", b"X") and s[i + 2 : i + 3] and s[i + 2 : i + 3] in b"0123456789abcdefABCDEF":
            base, i = 16, i + 2
        else:
            base = 8
    digits = "0123456789abcdef"[:base]
    j = i
    while j < n and chr(s[j]).lower() in digits:
        j += 1
    if j == i:  # no conversion: end is the start of the string
        return 0, 0, False
    value = int(s[i:j], base) * (-1 if neg else 1)
    return value, j, not _LONG_MIN <= value <= _LONG_MAX


def _pylong_from_string(s: bytes) -> int:
    """CPython's ``PyLong_FromString(s, NULL, 0)`` on a NUL-terminated C string (``int(text, 0)`` on ASCII)."""
    text = s.split(b"\0", 1)[0]
    core = text.strip(_C_SPACE)
    if not core.isascii() or any(c < 0x21 or c == 0x7F for c in core):
        raise ValueError("could not convert string to int")
    return int(core.decode("ascii"), 0)


def c_int(line: bytes) -> int | bool:
    """The value of an INT opcode's line (without its newline) as ``_pickle.c``'s ``load_int`` reads it:
    ``strtol`` with base 0 (``I0755`` is 493, not 755), ``00``/``01``-like 2-character lines are bools, and
    anything strtol cannot take whole goes to ``PyLong_FromString`` base 0. (pickletools and pickle.py
    disagree with it on octal and hex; torch.load uses the C unpickler.)"""
    if not line:
        raise ValueError("pickle data was truncated (an empty INT line)")
    s = line + b"\n"
    value, end, overflow = _strtol(s)
    if overflow or s[end : end + 1] not in (b"\n", b"\0"):
        try:
            return _pylong_from_string(s)
        except ValueError:
            raise ValueError(f"could not convert string to int: {line[:40]!r}") from None
    if len(s) == 3 and value in (0, 1):
        return bool(value)
    return value


def c_long(line: bytes) -> int:
    """A LONG opcode's line as ``load_long`` reads it: a trailing ``L`` dropped, then ``PyLong_FromString``
    base 0."""
    if line.endswith(b"L"):
        line = line[:-1]
    try:
        return _pylong_from_string(line)
    except ValueError:
        raise ValueError(f"could not convert string to int: {line[:40]!r}") from None


_C_FLOAT = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity|nan))")


def c_float(line: bytes) -> float:
    """A FLOAT opcode's line as the C unpickler's ``load_float`` reads it: ``PyOS_string_to_double`` (no
    whitespace, no underscores; inf / infinity / nan in any case), then the next character must be the end
    of the line or a NUL; a finite literal that overflows is an OverflowError. Python's ``float()`` (what
    ``pickletools`` uses) accepts ``1_0``, ``" 1.5 "`` and returns inf for ``1e999``, which torch refuses."""
    text = line.split(b"\0", 1)[0]
    if not _C_FLOAT.fullmatch(text):
        raise ValueError(f"could not convert string to float: {line[:40]!r}")
    value = float(text)
    if math.isinf(value) and not text.lstrip(b"+-").lower().startswith(b"inf"):
        raise ValueError(f"FLOAT {line[:40]!r} is out of range (the C unpickler raises OverflowError)")
    return value


def _read_line(f: Any) -> bytes:
    data = f.readline()
    if not data.endswith(b"\n"):
        raise ValueError("no newline found when trying to read an integer line")
    return bytes(data[:-1])


_ARG_READERS: dict[str, Callable[[Any], Any]] = {
    "INT": lambda f: c_int(_read_line(f)),
    "LONG": lambda f: c_long(_read_line(f)),
    "FLOAT": lambda f: c_float(_read_line(f)),
}
_CODE2OP = {
    code: (op, _ARG_READERS.get(op.name) or (op.arg.reader if op.arg is not None else None))
    for code, op in pickletools.code2op.items()  # type: ignore[attr-defined]
}


def genops(data: Any) -> Iterator[tuple[pickletools.OpcodeInfo, Any, int]]:
    """:func:`pickletools.genops` over a file-like reader, with INT and LONG read as torch reads them."""
    getpos, read, table = data.tell, data.read, _CODE2OP
    while True:
        pos = getpos()
        code = read(1)
        entry = table.get(code.decode("latin-1"))
        if entry is None:
            if code == b"":
                raise ValueError("pickle exhausted before seeing STOP")
            raise ValueError(f"at position {pos}, opcode {code!r} unknown")
        op, reader = entry
        yield op, (reader(data) if reader is not None else None), pos
        if code == b".":
            break


class Memo:
    """The pickle memo. Pickles number their memo entries 0, 1, 2, ... so a list holds them (8 bytes per
    entry instead of a dict's ~100); out-of-order indexes fall back to a dict. Shared with :mod:`ckptool.scan`."""

    __slots__ = ("dense", "sparse")

    def __init__(self) -> None:
        self.dense: list[Any] = []
        self.sparse: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dense) + len(self.sparse)

    def put(self, index: int, value: Any) -> None:
        n = len(self.dense)
        if index == n and index not in self.sparse:
            self.dense.append(value)
        elif 0 <= index < n:
            self.dense[index] = value
        else:
            self.sparse[index] = value

    def get(self, index: int, where: str = "pickle") -> Any:
        if 0 <= index < len(self.dense):
            return self.dense[index]
        try:
            return self.sparse[index]
        except KeyError:
            raise CorruptFileError(f"{where}: memo key {index} is not defined") from None


PersistentLoad = Callable[[Any], Any]


_PUSH_ARG = frozenset(
    {
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING",
        "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES",
        "SHORT_BINBYTES", "BINBYTES8",
    }
)  # fmt: skip
_CHECK_EVERY = 0xFFF  # resource bounds are checked every 4096 opcodes (and at STOP)
_U4 = struct.Struct("<I").unpack_from
_I4 = struct.Struct("<i").unpack_from


def _int_at(raw: Any, i: int) -> int:
    """The BININT1 / BININT2 / BININT at ``raw[i]`` (a matched record's integer), as pickletools reads it."""
    op = raw[i]
    if op == 0x4B:
        return raw[i + 1]
    if op == 0x4D:
        return raw[i + 1] | raw[i + 2] << 8
    return _I4(raw, i + 1)[0]


def _inline_recorder(g: Any) -> Any:
    """The recorder :func:`call` runs for ``g(*args)`` (no kwargs) when it is an allowlisted one, else None."""
    if not isinstance(g, Global) or _torchscript_global(g):
        return None
    return ALLOWED.get(g.qualname)


# ---- tokens of a matched tensor record (``TENSOR_RECORD``), shared by the guard, the runs and scan's walk ----
def token_index(tok: bytes) -> int:
    """The index of a matched GET / PUT token (the 1- or 4-byte form)."""
    return tok[1] if len(tok) == 2 else int(_U4(tok, 1)[0])


_LONG_PUTS = {k: struct.Struct("<" + "xI" * k).unpack for k in range(5, 8)}  # k LONG_BINPUT indexes at once


def puts_follow(puts: tuple[bytes, ...], start: int) -> bool:
    """Whether a record's 5-7 PUT tokens number ``start``, ``start + 1``, ... (dense and in order, as op_put
    appends them)."""
    k = len(puts)
    joined = b"".join(puts)
    if len(joined) == 5 * k:  # all LONG_BINPUT (past the first 256 entries): one unpack
        return _LONG_PUTS[k](joined) == tuple(range(start, start + k))
    return [token_index(t) for t in puts] == list(range(start, start + k))


_INT_TUPLES: dict[bytes, tuple[tuple[int, ...], int]] = {}  # matched size / stride bytes -> (value, opcodes)


def int_tuple(tok: bytes) -> tuple[tuple[int, ...], int]:
    """A matched size / stride tuple (EMPTY_TUPLE; 1-3 ints and TUPLE1-3; MARK, ints, TUPLE): its value and its
    opcode count; remembered in :data:`_INT_TUPLES` (a few thousand distinct shapes at most)."""
    got = _INT_TUPLES.get(tok)
    if got is None:
        vals = _int_values(tok)
        got = (vals, 1 if tok == b")" else len(vals) + (2 if tok[0] == 0x28 else 1))
        if len(_INT_TUPLES) < 65536:
            _INT_TUPLES[tok] = got
    return got


def _int_values(tok: bytes) -> tuple[int, ...]:
    if len(tok) == 1:
        return ()
    i = 1 if tok[0] == 0x28 else 0
    end = len(tok) - 1
    out = []
    while i < end:
        op = tok[i]
        if op == 0x4B:
            out.append(tok[i + 1])
            i += 2
        elif op == 0x4D:
            out.append(tok[i + 1] | tok[i + 2] << 8)
            i += 3
        else:
            out.append(_I4(tok, i + 1)[0])
            i += 5
    return tuple(out)


class Interpreter:
    """The restricted pickle interpreter: a stack machine over :func:`pickletools.genops`, one handler method
    per opcode, looked up in :attr:`DISPATCH` (a dict lookup instead of a chain of comparisons: about 3x faster
    on opcode-heavy pickles, which is what a memo or DUP bomb is). This policy records metadata: allowed
    globals become :class:`Global` references and their "calls" run ckptool's recorders; nothing in the
    pickle is ever imported or called.

    Each handler takes the opcode's argument and can be driven alone (``Interpreter(b"").op_mark(None)``),
    which is how ``tests/formats/test_unpickler.py`` tests them one by one.
    """

    # opcode name -> handler method name (opcodes that push their argument as it is are in _PUSH_ARG)
    DISPATCH: ClassVar[dict[str, str]] = {
        "PROTO": "op_proto", "FRAME": "op_frame", "MARK": "op_mark", "BYTEARRAY8": "op_bytearray",
        "NONE": "op_none", "NEWTRUE": "op_true", "NEWFALSE": "op_false", "EMPTY_DICT": "op_empty_dict",
        "EMPTY_LIST": "op_empty_list", "EMPTY_TUPLE": "op_empty_tuple", "EMPTY_SET": "op_empty_set",
        "DICT": "op_dict", "LIST": "op_list", "TUPLE": "op_tuple", "TUPLE1": "op_tuple1", "TUPLE2": "op_tuple2",
        "TUPLE3": "op_tuple3", "FROZENSET": "op_frozenset", "APPEND": "op_append", "APPENDS": "op_appends",
        "SETITEM": "op_setitem", "SETITEMS": "op_setitems", "ADDITEMS": "op_additems", "POP": "op_pop",
        "POP_MARK": "op_pop_mark", "DUP": "op_dup", "PUT": "op_put", "BINPUT": "op_put", "LONG_BINPUT": "op_put",
        "MEMOIZE": "op_memoize", "GET": "op_get", "BINGET": "op_get", "LONG_BINGET": "op_get",
        "GLOBAL": "op_global", "STACK_GLOBAL": "op_stack_global", "REDUCE": "op_reduce", "NEWOBJ": "op_newobj",
        "NEWOBJ_EX": "op_newobj_ex", "INST": "op_inst", "OBJ": "op_obj", "BUILD": "op_build",
        "PERSID": "op_persid", "BINPERSID": "op_binpersid",
    }  # fmt: skip
    REFUSED: ClassVar[dict[str, str]] = {  # opcodes refused whatever their argument: name -> handler
        "EXT1": "op_ext", "EXT2": "op_ext", "EXT4": "op_ext", "NEXT_BUFFER": "op_buffer", "READONLY_BUFFER": "op_buffer",
    }  # fmt: skip

    def __init__(
        self,
        buf: Any,
        pos: int = 0,
        *,
        end: int | None = None,
        persistent_load: PersistentLoad | None = None,
        torchscript: bool = False,
        where: str = "pickle",
        inert: set[str] | None = None,
    ):
        self.reader = _Source(buf, pos, end)
        self.limit = self.reader.end
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo = Memo()
        self.tdepth: TupleDepths = {}
        self.persistent_load = persistent_load
        self.torchscript = torchscript
        self.where = where
        self.inert = inert
        self.push = self.stack.append
        self._dense, self._sparse = self.memo.dense, self.memo.sparse  # the memo fast paths below
        self.ops = 0
        self.at: int | None = None  # the position of the opcode being interpreted
        size = max(self.limit - max(pos, 0), 0)
        self.max_memo = memo_bound(size)
        self.max_ops = ops_bound(size)

    # -- stack helpers ----------------------------------------------------------------------------------------
    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise CorruptFileError(f"{self.where}: MARK expected")
        m = self.marks.pop()
        stack = self.stack
        items = stack[m:]
        del stack[m:]
        return items

    def pop(self) -> Any:
        if not self.stack:
            raise CorruptFileError(f"{self.where}: stack underflow")
        return self.stack.pop()

    def _global(self, module: str, name: str) -> Global:
        return make_global(module, name, torchscript=self.torchscript, inert=self.inert)

    # -- handlers: values and containers ------------------------------------------------------------------------
    def op_noop(self, arg: Any) -> None:
        pass

    def op_proto(self, arg: Any) -> None:
        if int(arg or 0) > HIGHEST_PROTOCOL:
            raise CorruptFileError(
                f"{self.where}: unsupported pickle protocol {arg} (torch's unpickler reads protocols 0 to "
                f"{HIGHEST_PROTOCOL} and refuses it)"
            )

    def op_frame(self, arg: Any) -> None:
        left = self.limit - self.reader.tell()
        if int(arg or 0) > left:
            raise CorruptFileError(
                f"{self.where}: a FRAME claims {arg} bytes but only {max(left, 0)} follow (torch's unpickler "
                "refuses it: pickle data was truncated)"
            )

    def op_mark(self, arg: Any) -> None:
        if len(self.marks) >= MAX_MARK_DEPTH:
            raise CorruptFileError(f"{self.where}: nests deeper than {MAX_MARK_DEPTH}")
        self.marks.append(len(self.stack))

    def op_bytearray(self, arg: Any) -> None:
        self.push(bytearray(arg or b""))

    def op_none(self, arg: Any) -> None:
        self.push(None)

    def op_true(self, arg: Any) -> None:
        self.push(True)

    def op_false(self, arg: Any) -> None:
        self.push(False)

    def op_empty_dict(self, arg: Any) -> None:
        self.push(PickledDict())

    def op_empty_list(self, arg: Any) -> None:
        self.push([])

    def op_empty_tuple(self, arg: Any) -> None:
        self.push(())

    def op_empty_set(self, arg: Any) -> None:
        self.push(set())

    def op_dict(self, arg: Any) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise CorruptFileError(f"{self.where}: DICT with an odd number of items")
        d = PickledDict()
        for i in range(0, len(items), 2):
            d[_hashable(items[i], self.tdepth)] = items[i + 1]
        self.push(d)

    def op_list(self, arg: Any) -> None:
        self.push(self.pop_mark())

    def op_tuple(self, arg: Any) -> None:
        t = tuple(self.pop_mark())
        tuple_depth(t, self.tdepth)
        self.push(t)

    def _tuple_n(self, n: int) -> None:
        stack = self.stack
        if len(stack) < n:
            raise CorruptFileError(f"{self.where}: stack underflow")
        t = tuple(stack[-n:])
        del stack[-n:]
        tuple_depth(t, self.tdepth)
        self.push(t)

    def op_tuple1(self, arg: Any) -> None:
        self._tuple_n(1)

    def op_tuple2(self, arg: Any) -> None:
        self._tuple_n(2)

    def op_tuple3(self, arg: Any) -> None:
        self._tuple_n(3)

    def op_frozenset(self, arg: Any) -> None:
        self.push(frozenset(_hashable(x, self.tdepth) for x in self.pop_mark()))

    def op_append(self, arg: Any) -> None:
        v = self.pop()
        _target(self.stack, list, self.where).append(v)

    def op_appends(self, arg: Any) -> None:
        items = self.pop_mark()
        _target(self.stack, list, self.where).extend(items)

    def op_setitem(self, arg: Any) -> None:
        v = self.pop()
        k = self.pop()
        _target(self.stack, dict, self.where)[_hashable(k, self.tdepth)] = v

    def op_setitems(self, arg: Any) -> None:
        items = self.pop_mark()
        d = _target(self.stack, dict, self.where)
        if len(items) % 2:
            raise CorruptFileError(f"{self.where}: SETITEMS with an odd number of items")
        keys = items[0::2]
        if set(map(type, keys)) == {str}:  # a state_dict's batch: strings hash as they are (what _hashable says)
            d.update(zip(keys, items[1::2], strict=True))
            return
        for i in range(0, len(items), 2):
            d[_hashable(items[i], self.tdepth)] = items[i + 1]

    def op_additems(self, arg: Any) -> None:
        items = self.pop_mark()
        _target(self.stack, set, self.where).update(_hashable(x, self.tdepth) for x in items)

    # -- handlers: stack and memo ---------------------------------------------------------------------------
    def op_pop(self, arg: Any) -> None:
        marks = self.marks
        if marks and marks[-1] == len(self.stack):
            marks.pop()
        else:
            self.pop()

    def op_pop_mark(self, arg: Any) -> None:
        self.pop_mark()

    def op_dup(self, arg: Any) -> None:
        stack = self.stack
        if not stack:
            raise CorruptFileError(f"{self.where}: DUP on an empty stack")
        stack.append(stack[-1])

    def op_put(self, arg: Any) -> None:
        stack, marks = self.stack, self.marks
        if not stack or (marks and marks[-1] == len(stack)):
            raise CorruptFileError(f"{self.where}: PUT on an empty stack")
        dense, sparse = self._dense, self._sparse  # the fast path inlines Memo.put
        n = len(dense)
        if n + len(sparse) >= self.max_memo:
            raise CorruptFileError(f"{self.where}: memo exceeds {self.max_memo} entries")
        i = int(arg or 0)
        if i >= MAX_MEMO_INDEX:
            raise CorruptFileError(
                f"{self.where}: memo index {i} (torch's unpickler allocates memo slots up to twice the largest "
                f"index and fails; ckptool refuses indexes from {MAX_MEMO_INDEX})"
            )
        if i == n and not sparse:
            dense.append(stack[-1])
        else:
            if len(sparse) >= MAX_MEMO and i not in sparse and not 0 <= i < n:
                raise CorruptFileError(f"{self.where}: memo exceeds {MAX_MEMO} out-of-order entries")
            self.memo.put(i, stack[-1])

    def op_memoize(self, arg: Any) -> None:
        stack, marks, dense, sparse = self.stack, self.marks, self._dense, self._sparse
        if not stack or (marks and marks[-1] == len(stack)):
            raise CorruptFileError(f"{self.where}: MEMOIZE on an empty stack")
        n = len(dense) + len(sparse)
        if n >= self.max_memo:
            raise CorruptFileError(f"{self.where}: memo exceeds {self.max_memo} entries")
        if sparse:
            self.memo.put(n, stack[-1])
        else:
            dense.append(stack[-1])

    def op_get(self, arg: Any) -> None:
        i = int(arg or 0)
        dense = self._dense
        self.push(dense[i] if 0 <= i < len(dense) else self.memo.get(i, self.where))

    # -- handlers: globals, calls, state ----------------------------------------------------------------------
    def op_global(self, arg: Any) -> None:
        module, _, gname = str(arg).partition(" ")
        self.push(self._global(module, gname))

    def op_stack_global(self, arg: Any) -> None:
        gname = self.pop()
        module = self.pop()
        if not isinstance(module, str) or not isinstance(gname, str):
            raise CorruptFileError(f"{self.where}: STACK_GLOBAL on non-strings")
        self.push(self._global(module, gname))

    def op_reduce(self, arg: Any) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(args, tuple):
            raise CorruptFileError(f"{self.where}: REDUCE arguments are not a tuple")
        self.push(call(func, args))

    def op_newobj(self, arg: Any) -> None:
        args = self.pop()
        cls = self.pop()
        self.push(call(cls, tuple(args) if isinstance(args, (tuple, list)) else ()))

    def op_newobj_ex(self, arg: Any) -> None:
        kwargs = self.pop()
        args = self.pop()
        cls = self.pop()
        self.push(call(cls, tuple(args), dict(kwargs) if kwargs else None))

    def op_inst(self, arg: Any) -> None:
        module, _, gname = str(arg).partition(" ")
        cls = self._global(module, gname)
        self.push(call(cls, tuple(self.pop_mark())))

    def op_obj(self, arg: Any) -> None:
        items = self.pop_mark()
        if not items:
            raise CorruptFileError(f"{self.where}: OBJ without a class")
        self.push(call(items[0], tuple(items[1:])))

    def op_build(self, arg: Any) -> None:
        state = self.pop()
        if not self.stack:
            raise CorruptFileError(f"{self.where}: BUILD on an empty stack")
        _build(self.stack[-1], state, self.where)

    def op_binunicode(self, arg: Any) -> int | None:
        """A string; or, when it is a state_dict key that torch's tensor records follow (``key PUT <record>``, a
        SETITEMS batch), that run of keys and tensors in one step (:meth:`_tensor_run`)."""
        self.push(arg)
        if self.marks and self.persistent_load is not None:
            raw = self.reader.raw()
            if raw is not None:
                return self._tensor_run(raw, self.reader.tell()) or None
        return None

    def _tensor_run(self, raw: Any, pos: int) -> int:
        """``PUT <record>`` after the key just pushed, then ``X key PUT <record>`` units while they come: each
        unit's effect exactly as the opcode-by-opcode walk computes it, in one step. Returns the opcodes taken past
        the key (0: nothing changed, and the walk reads on from the key).

        The record is torch's ``_rebuild_tensor_v2`` sequence (formats/fastpickle.py, ``TENSOR_RECORD``; every
        argument read with its exact length). Its opcodes, in order, do this, and so does this step:

        - the key's PUT memoizes it; the record's GETs (the rebuild global f, the string 'storage', the storage
          class, the location, the ``OrderedDict`` global g) read entries made before the record;
        - the storage key is pushed and memoized; the persistent id ``('storage', class, key, location, numel)``
          is built, memoized and given to :attr:`persistent_load` (BINPERSID);
        - the offset, the size and stride tuples (memoized when torch PUTs them), requires_grad;
        - ``g()`` (REDUCE with no arguments: :func:`call`, as op_reduce calls it), memoized; the argument tuple
          ``(storage, offset, size, stride, requires_grad, hooks)``, memoized; ``f(*arguments)``
          (:func:`call`), memoized and pushed.

        Tuple depths (:func:`tuple_depth`, a cache that hashing a key consults) are computed where a tuple holds
        tuples it did not build (a GET of a memoized tuple); a record's own tuples of ints are left out of the cache
        (1 and 2 levels: computed again if one is ever hashed), which keeps 100k tensors' tuples out of it. The checks the walk makes at these opcodes are made
        first, and the unit is left to the walk when one would fail or a bound is within reach: PUT indexes
        dense and in order (no sparse memo), below :attr:`max_memo`; GETs of existing entries; two MARKs within
        MAX_MARK_DEPTH; the stack within MAX_STACK. The opcode bound cannot be reached (a pickle has fewer
        opcodes than bytes, and :func:`ops_bound` allows one per byte). Past those checks only the calls, and the
        depth of a persistent id or argument tuple that holds a memoized tuple, can fail: in the walk's order, with
        its errors. When f and g are the allowlist's
        ``_rebuild_tensor_v2`` and ``OrderedDict`` recorders, their bodies run inline (the recorder's
        checks on the size, stride, offset and storage made once per distinct size and stride);
        equal size tuples may be one tuple object (immutable: nothing can tell them apart but ``is``)."""
        if self._sparse or len(self.marks) + 3 > MAX_MARK_DEPTH:  # the record's two MARKs, a size's third
            return 0
        match = TENSOR_RECORD.match
        dense, stack, tdepth, limit = self._dense, self.stack, self.tdepth, self.limit
        persistent, max_memo = self.persistent_load, self.max_memo
        assert persistent is not None
        # the five GET tokens (f, 'storage', class, location, g) -> the entries they name and what follows from
        # them: valid for this run (while it runs, only it touches the memo, and it only appends), kept only for
        # tokens naming entries made before the unit (never the unit's own key)
        resolved: dict[tuple[bytes, ...], tuple[Any, ...]] = {}
        shapes: dict[tuple[bytes, bytes], tuple[Any, ...]] = {}  # size and stride tokens -> their values
        taken = 0
        while True:
            if pos + 2 > limit:
                break
            op = raw[pos]
            if op == 0x71:  # BINPUT
                i, r = raw[pos + 1], pos + 2
            elif op == 0x72 and pos + 5 <= limit:  # LONG_BINPUT
                i, r = _U4(raw, pos + 1)[0], pos + 5
            else:
                break
            n = len(dense)
            if i != n or n + 8 > max_memo or len(stack) + 66 > MAX_STACK:
                break
            m = match(raw, r, limit)
            if m is None:
                break
            t_f, t_st, t_cls, t_key, p_key, t_loc, p_pid, t_size, p_size, t_stride, p_stride, t_g, p_hooks, p_args, p_t = (
                m.groups()
            )  # fmt: skip
            key = stack[-1]  # the unit's key (memo entry n)
            gets = (t_f, t_st, t_cls, t_loc, t_g)
            got = resolved.get(gets)
            if got is None:
                # the GETs: entries made before the record (n: the key, memoized first)
                js: tuple[int, ...]
                if len(t_f) + len(t_st) + len(t_cls) + len(t_loc) + len(t_g) == 10:
                    js = (t_f[1], t_st[1], t_cls[1], t_loc[1], t_g[1])
                else:
                    js = tuple(token_index(t) for t in gets)
                if max(js) > n:
                    break
                f, st, cls, loc, gg = (key if j == n else dense[j] for j in js)
                got = (
                    f, st, cls, loc, gg,
                    type(st) is tuple or type(cls) is tuple or type(loc) is tuple,  # the pid's depth to check
                    _inline_recorder(gg) is _ordered_dict,  # g() and f(...) run inline
                    _inline_recorder(f) is _rebuild_tensor_v2,
                )  # fmt: skip
                if max(js) < n:
                    resolved[gets] = got
            f, st, cls, loc, gg, deep, hooks_fast, rebuild_fast = got
            # the PUTs: n + 1, n + 2, ... in order
            puts = (p_key, p_pid, p_size, p_stride, p_hooks, p_args, p_t)
            if p_size is None or p_stride is None:
                puts = tuple(x for x in puts if x is not None)
            if not puts_follow(puts, n + 1):
                break
            try:
                skey = str(t_key[5:], "utf-8", "surrogatepass")  # as pickletools reads BINUNICODE
            except UnicodeDecodeError:
                break
            shape = shapes.get((t_size, t_stride))
            if shape is None:
                size, stride = int_tuple(t_size), int_tuple(t_stride)
                # (the record's size and stride, their opcodes, and whether the recorder's shape checks pass)
                shape = (
                    size[0], stride[0], size[1] + stride[1], len(size[0]) == len(stride[0]) and min(size[0], default=0) >= 0
                )  # fmt: skip
                if len(shapes) < 65536:
                    shapes[(t_size, t_stride)] = shape
            sz, sd, nops, shape_ok = shape
            numel = _int_at(raw, m.end(6))
            offset = _int_at(raw, m.end(7) + 1)
            requires_grad = raw[m.start(12) - 1] == 0x88
            pid = (st, cls, skey, loc, numel)
            # past the checks: the effects that can fail, in the walk's order (the persistent id's TUPLE, BINPERSID,
            # g's REDUCE, the arguments' TUPLE, f's REDUCE)
            if deep:
                tuple_depth(pid, tdepth)  # (raises past MAX_DEPTH, as op_tuple would)
            storage = persistent(pid)
            if hooks_fast:
                hooks: Any = PickledOrderedDict()  # (_ordered_dict with no arguments)
            else:
                hooks = call(gg, ())
            args = (storage, offset, sz, sd, requires_grad, hooks)
            if type(storage) is tuple or type(hooks) is tuple:
                tuple_depth(args, tdepth)
            if rebuild_fast and shape_ok and type(storage) is StorageRef and offset >= 0:
                tensor = TensorRecord(storage, offset, sz, sd, storage.dtype, requires_grad)  # the recorder, inline
            else:
                tensor = call(f, args)
            if p_size is None or p_stride is None:
                dense.extend((key, skey, pid))
                if p_size is not None:
                    dense.append(sz)
                if p_stride is not None:
                    dense.append(sd)
                dense.extend((hooks, args, tensor))
            else:
                dense.extend((key, skey, pid, sz, sd, hooks, args, tensor))
            stack.append(tensor)  # above its key
            taken += 23 + nops + (p_size is not None) + (p_stride is not None)
            pos = m.end()
            # the next unit's key: BINUNICODE
            if pos + 5 > limit or raw[pos] != 0x58:
                break
            q = pos + 5 + _U4(raw, pos + 1)[0]
            if q > limit:
                break
            try:
                nxt = str(raw[pos + 5 : q], "utf-8", "surrogatepass")
            except UnicodeDecodeError:
                break
            stack.append(nxt)
            taken += 1
            pos = q
        if not taken:
            return 0
        self.reader.seek(pos)
        return taken

    def op_persid(self, pid: Any) -> None:
        if self.persistent_load is None:
            raise CorruptFileError(f"{self.where}: persistent id in a pickle that should have none")
        self.push(self.persistent_load(pid))

    def op_binpersid(self, arg: Any) -> None:
        self.op_persid(self.pop())

    def op_ext(self, name: str, arg: Any) -> None:
        raise UnsafePickleError(
            f"refusing to unpickle: {name} (copyreg extension registry) can name any global; nothing was executed",
            global_name=name,
        )

    def op_buffer(self, name: str, arg: Any) -> None:
        raise UnsafePickleError(f"refusing to unpickle: out-of-band buffer opcode {name}", global_name=name)

    # -- the loop -----------------------------------------------------------------------------------------------
    def check_bounds(self) -> None:
        if self.reader.tell() > self.limit:
            raise CorruptFileError(f"{self.where}: runs past the end of its container at byte {self.limit}")
        if self.ops > self.max_ops or len(self.stack) > MAX_STACK:
            raise CorruptFileError(f"{self.where}: exceeds ckptool's size bounds")

    def handlers(self) -> dict[str, Callable[[Any], int | None]]:
        table: dict[str, Callable[[Any], int | None]] = {op: getattr(self, m) for op, m in self.DISPATCH.items()}
        for name, m in self.REFUSED.items():
            table[name] = functools.partial(getattr(self, m), name)
        for name in _PUSH_ARG:
            table[name] = self.push
        if TENSOR_RECORD is not None:
            table["BINUNICODE"] = self.op_binunicode
        return table

    def run(self) -> tuple[Any, int]:
        """Interpret to STOP. Returns (object, position after STOP); every malformed input is a CorruptFileError."""
        where = self.where
        try:
            return self.interpret()
        except (CorruptFileError, UnsafePickleError):
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeDecodeError, struct.error) as e:
            raise CorruptFileError(f"{where}: not a valid pickle ({e})") from None
        except RecursionError:
            raise CorruptFileError(f"{where}: pickle nests too deeply") from None

    def interpret(self) -> Any:
        """The loop both policies share: every opcode through its handler, the bounds checked every 4096
        opcodes and at STOP, whose result is :meth:`op_stop`'s. ``self.at`` is the opcode's position. A handler
        that takes several opcodes in one step (the collector's tensor records) returns how many it took past its
        own, and they are counted; the bounds are checked at the same opcode counts (none can fail inside a
        record: see :meth:`GlobalCollector._tensor_record`)."""
        get_handler = self.handlers().get
        ops = 0
        try:
            for op, arg, at in genops(self.reader):  # type: ignore[arg-type]
                ops += 1
                self.at = at
                if not ops & _CHECK_EVERY:
                    self.ops = ops
                    self.check_bounds()
                name = op.name
                handler = get_handler(name)
                if handler is not None:
                    took = handler(arg)
                    if took:
                        ops += took
                    continue
                if name == "STOP":
                    self.ops = ops
                    self.check_bounds()
                    return self.op_stop()
                raise CorruptFileError(f"{self.where}: unsupported pickle opcode {name}")  # pragma: no cover
        finally:
            self.ops = ops
        raise CorruptFileError(f"{self.where}: pickle is truncated (no STOP opcode)")  # pragma: no cover

    def op_stop(self) -> tuple[Any, int]:
        stack = self.stack
        if len(stack) != 1 or self.marks:
            raise CorruptFileError(f"{self.where}: pickle ended with an unbalanced stack")
        check_nesting(stack[0], self.where)
        return stack[0], self.reader.tell()


# torch's tensor record (a compiled pattern): formats/fastpickle.py sets it; the reading interpreter then takes runs
# of records (Interpreter._tensor_run) and the collector each record (GlobalCollector._tensor_record) in one step
TENSOR_RECORD: Any = None

# The C-unpickler fast path registers itself here when :mod:`ckptool.formats` is imported
# (``formats/fastpickle.py`` imports this module, never the reverse: the import graph has no cycle). It returns
# (object, position) or None, which means "read it with the Interpreter".
FAST_PATH: Callable[..., tuple[Any, int] | None] | None = None


def load(
    buf: Any,
    pos: int = 0,
    *,
    end: int | None = None,
    persistent_load: PersistentLoad | None = None,
    torchscript: bool = False,
    where: str = "pickle",
    inert: set[str] | None = None,
) -> tuple[Any, int]:
    """Interpret one pickle from ``buf[pos:end]`` with the restricted :class:`Interpreter`. Returns (object,
    position after STOP).

    The C unpickler reads it instead when :mod:`ckptool.formats.fastpickle`'s guard allows (same result,
    several times faster); anything else, and every error, goes through the pure-Python interpreter."""
    if not torchscript and FAST_PATH is not None and not (persistent_load is not None and _record_dense(buf, pos, end)):
        got = FAST_PATH(buf, pos, end=end, persistent_load=persistent_load, where=where, inert=inert)
        if got is not None:
            return got
    return Interpreter(
        buf, pos, end=end, persistent_load=persistent_load, torchscript=torchscript, where=where, inert=inert
    ).run()


def _record_dense(buf: Any, pos: int, end: int | None) -> bool:
    """Whether torch's tensor records fill this pickle (a state_dict of many tensors): the interpreter then takes
    them a run at a time (:meth:`Interpreter._tensor_run`), faster than the guard plus the C unpickler, whose
    callbacks into ckptool's recorders cost as much as the records themselves. Judged on the first 64 KB."""
    if TENSOR_RECORD is None or not isinstance(buf, (bytes, mmap.mmap)):
        return False
    stop = len(buf) if end is None else min(end, len(buf))
    if stop - pos < RECORD_DENSE_BYTES:
        return False
    return sum(1 for _ in TENSOR_RECORD.finditer(buf, pos, pos + (1 << 16))) >= 64


RECORD_DENSE_BYTES = 1 << 20  # smaller pickles take the fast path whatever they hold (either is quick)


# --------------------------------------------------------------------------------------------
# The second policy: collect the globals a pickle references (what ``ckptool scan`` judges)
# --------------------------------------------------------------------------------------------
PICKLE_MAGIC = tuple(bytes([0x80, p]) for p in (2, 3, 4, 5))
MAX_NESTED_PICKLE = 64 << 20  # bytes constants walked as pickles up to this size


class _Any:
    """A stack value the collector does not track (anything but a string or a global)."""

    __slots__ = ()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<any>"


ANY = _Any()


@dataclass(frozen=True)
class GlobalValue:
    """A stack value that is a global itself (the target of a later BUILD, REDUCE, ...)."""

    module: str
    name: str


@dataclass
class Walk:
    """What :class:`GlobalCollector` saw in one pickle."""

    globals: list[tuple[str, str, int, str]]  # (module, name, offset of the opcode, opcode)
    nested: list[tuple[int, bytes]]  # (offset of the opcode, bytes/str constant that looks like a pickle)
    unresolved: list[tuple[int, str]]  # (offset, why) STACK_GLOBAL whose names are not constant strings
    extensions: list[tuple[int, str, int]]  # (offset, opcode, code) EXT1/2/4
    buffers: list[tuple[int, str]]  # NEXT_BUFFER / READONLY_BUFFER
    builds: list[tuple[int, str]] = field(default_factory=list)  # (offset, module.name) BUILD on a global
    protocol: int | None = None
    opcodes: int = 0
    end: int = 0  # position after the last opcode read
    complete: bool = False
    error: str | None = None


def _effects() -> dict[str, tuple[bool, int, int]]:
    """opcode name -> (pops down to the last MARK, then pops below it, then pushes), from pickletools' own
    opcode table. APPENDS is [list, markobject, stackslice] -> [list]: the slice, then 1, then push 1."""
    out = {}
    for op in pickletools.opcodes:
        before, after = op.stack_before, op.stack_after
        if pickletools.markobject in before:
            out[op.name] = (True, before.index(pickletools.markobject), len(after))
        else:
            out[op.name] = (False, len(before), len(after))
    return out


_EFFECTS = _effects()
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_BYTES_OPS = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})


def _nested_str(arg: Any) -> bytes | None:
    """A str constant that holds a pickle (protocol 2 pickles bytes as _codecs.encode(<latin-1 str>))."""
    if isinstance(arg, str) and arg[:1] == "\x80" and arg[1:2] in ("\x02", "\x03", "\x04", "\x05"):
        try:
            data = arg.encode("latin-1")
        except UnicodeEncodeError:
            return None
        return data if len(data) <= MAX_NESTED_PICKLE else None
    return None


class GlobalCollector(Interpreter):
    """The same interpreter with the *collect globals* policy (torch's ``get_globals_in_pkl``, but complete).

    Only string constants and globals are tracked (on the stack and through the memo, so STACK_GLOBAL resolves
    through BINGET/MEMOIZE); every other value is :data:`ANY`, and every opcode without a handler here takes
    its generic stack effect from pickletools' opcode table. Globals are recorded with their offsets and
    opcodes, never looked up; STACK_GLOBAL on non-constants, EXT codes, out-of-band buffers, BUILD on a
    global and pickles nested in bytes/str constants are recorded too. :meth:`run` never raises for a
    malformed pickle: it stops and records why in :attr:`Walk.error`, keeping everything seen before.
    The stack, the memo fast paths and the resource bounds are :class:`Interpreter`'s.
    """

    COLLECT: ClassVar[dict[str, str]] = {
        "PROTO": "op_proto", "FRAME": "op_noop", "MARK": "op_mark", "POP": "op_pop", "DUP": "op_dup",
        "PUT": "op_put", "BINPUT": "op_put", "LONG_BINPUT": "op_put", "MEMOIZE": "op_memoize", "GET": "op_get",
        "BINGET": "op_get", "LONG_BINGET": "op_get", "GLOBAL": "op_global", "INST": "op_inst",
        "STACK_GLOBAL": "op_stack_global", "BUILD": "op_build",
        **dict.fromkeys(_STRING_OPS, "op_string"), **dict.fromkeys(_BYTES_OPS, "op_bytes"),
    }  # fmt: skip

    def __init__(self, buf: Any, pos: int = 0, end: int | None = None):
        super().__init__(buf, pos, end=end)
        self.walk = Walk(globals=[], nested=[], unresolved=[], extensions=[], buffers=[], end=pos)

    def _here(self) -> int:
        return self.at if self.at is not None else -1

    def pop_n(self, n: int) -> list[Any]:
        stack, marks = self.stack, self.marks
        if n > len(stack) - (marks[-1] if marks else 0):
            raise CorruptFileError(f"{self.where}: stack underflow")
        items = stack[-n:]
        del stack[-n:]
        return items

    def _effect(self, name: str, to_mark: bool, pops: int, pushes: int) -> Callable[[Any], None]:
        """The handler of an opcode that only moves values around: its generic stack effect."""
        stack, marks, push, pop_n = self.stack, self.marks, self.push, self.pop_n
        if not to_mark and not pops:
            return (lambda arg: push(ANY)) if pushes else self.op_noop

        def effect(arg: Any) -> None:
            if to_mark:
                if not marks:
                    raise CorruptFileError(f"{self.where}: {name} without a MARK")
                del stack[marks.pop() :]
            if pops:
                pop_n(pops)
            if pushes:
                push(ANY)

        return effect

    def handlers(self) -> dict[str, Callable[[Any], int | None]]:
        table: dict[str, Callable[[Any], int | None]] = {
            name: self._effect(name, *e) for name, e in _EFFECTS.items() if name != "STOP"
        }
        table.update({op: getattr(self, m) for op, m in self.COLLECT.items()})
        for name in ("EXT1", "EXT2", "EXT4"):
            table[name] = functools.partial(self.op_ext, name)
        for name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            table[name] = functools.partial(self.op_buffer, name)
        return table

    # -- handlers -----------------------------------------------------------------------------------------
    def op_get(self, arg: Any) -> int | None:  # type: ignore[override]
        """A GET; or, when it starts one of torch's tensor records (formats/fastpickle.py, ``TENSOR_RECORD``), the
        whole record in one step: the number of opcodes taken past this one (see :meth:`_tensor_record`)."""
        if self.marks and TENSOR_RECORD is not None and self.at is not None:
            raw = self.reader.raw()
            if raw is not None:
                m = TENSOR_RECORD.match(raw, self.at, self.limit)
                if m is not None:
                    k = self._tensor_record(m)
                    if k:
                        return k
        Interpreter.op_get(self, arg)
        return None

    def _tensor_record(self, m: re.Match[bytes]) -> int:
        """One tensor record as the opcode-by-opcode walk would take it, or 0 (nothing changed: walk it).

        The record pushes only values this policy does not track (:data:`ANY`: tuples, the persistent id, REDUCE
        results) except its storage key, a string, which its PUT memoizes; it has no global, no bytes and no
        string but that key (checked not to look like a pickle). So its effect is: one ANY on the stack, and the
        memo entries of its PUTs (the key, then ANY), which must be dense and in order (as op_put stores them
        without the sparse dict); its GETs must name entries made before it; two MARKs within MAX_MARK_DEPTH;
        the stack within MAX_STACK at its peak (64 above its start), so no bound checked every 4096 opcodes can
        fail inside it. The opcodes it takes are counted exactly (``Walk.opcodes``)."""
        g = m.groups()
        dense = self._dense
        n = len(dense)
        if self._sparse or len(self.marks) + 3 > MAX_MARK_DEPTH or len(self.stack) + 64 > MAX_STACK:
            return 0
        if max(token_index(g[i]) for i in (0, 1, 2, 5, 11)) >= n:  # the GETs
            return 0
        puts = tuple(t for t in (g[4], g[6], g[8], g[10], g[12], g[13], g[14]) if t is not None)
        if n + len(puts) > self.max_memo or not puts_follow(puts, n):
            return 0
        try:
            key = str(g[3][5:], "utf-8", "surrogatepass")  # as pickletools reads BINUNICODE
        except UnicodeDecodeError:
            return 0
        if key[:1] == "\x80":  # (a nested pickle candidate: op_string records it)
            return 0
        ops = 22 + int_tuple(g[7])[1] + int_tuple(g[9])[1] + (g[8] is not None) + (g[10] is not None)
        dense.append(key)
        dense.extend([ANY] * (len(puts) - 1))
        self.push(ANY)
        self.reader.seek(m.end())
        return ops - 1

    def op_proto(self, arg: Any) -> None:
        self.walk.protocol = int(arg or 0)

    def op_string(self, arg: Any) -> None:
        if arg[:1] == "\x80":
            data = _nested_str(arg)
            if data:
                self.walk.nested.append((self._here(), data))
        self.push(arg)

    def op_bytes(self, arg: Any) -> None:
        data = arg or b""
        if data[:2] in PICKLE_MAGIC and len(data) <= MAX_NESTED_PICKLE:
            self.walk.nested.append((self._here(), bytes(data)))
        self.push(ANY)

    def op_global(self, arg: Any) -> None:
        module, _, gname = str(arg).partition(" ")
        self.walk.globals.append((module, gname, self._here(), "GLOBAL"))
        self.push(GlobalValue(module, gname))

    def op_stack_global(self, arg: Any) -> None:
        gname, module = self.pop_n(2)[::-1]
        if isinstance(module, str) and isinstance(gname, str):
            self.walk.globals.append((module, gname, self._here(), "STACK_GLOBAL"))
            self.push(GlobalValue(module, gname))
        else:
            self.walk.unresolved.append((self._here(), "module and name are not string constants"))
            self.push(ANY)

    def op_inst(self, arg: Any) -> None:
        module, _, gname = str(arg).partition(" ")
        self.walk.globals.append((module, gname, self._here(), "INST"))
        if not self.marks:
            raise CorruptFileError(f"{self.where}: INST without a MARK")
        del self.stack[self.marks.pop() :]
        self.push(ANY)

    def op_build(self, arg: Any) -> None:
        self.pop_n(1)
        stack, marks = self.stack, self.marks
        if not stack or (marks and marks[-1] == len(stack)):
            raise CorruptFileError(f"{self.where}: BUILD on an empty stack")
        target = stack[-1]
        if isinstance(target, GlobalValue):
            self.walk.builds.append((self._here(), f"{target.module}.{target.name}"))

    def op_ext(self, name: str, arg: Any) -> None:
        self.walk.extensions.append((self._here(), name, int(arg or 0)))
        self.push(ANY)

    def op_buffer(self, name: str, arg: Any) -> None:
        self.walk.buffers.append((self._here(), name))
        if name == "READONLY_BUFFER":
            self.pop_n(1)
        self.push(ANY)

    def op_stop(self) -> tuple[Any, int]:
        self.walk.complete = True
        return None, self.reader.tell()

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> Walk:  # type: ignore[override]
        """Walk to STOP (or to the first malformed opcode); never raises for a malformed pickle."""
        w = self.walk
        error: str | None = None
        try:
            self.interpret()
        except CorruptFileError as e:
            error = e.message
            prefix = f"{self.where}: "
            if error.startswith(prefix):
                error = error[len(prefix) :]
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeDecodeError, struct.error) as e:
            error = str(e) or type(e).__name__
        except (MemoryError, RecursionError) as e:
            error = f"{type(e).__name__}: too large to walk"
        w.error = error
        w.opcodes = self.ops
        if not w.complete and w.error is None:
            w.error = "pickle exhausted before seeing STOP"
        w.end = min(self.reader.tell(), self.limit)
        return w


def collect_globals(buf: Any, pos: int = 0, end: int | None = None) -> Walk:
    """Walk one pickle from ``buf[pos:]`` (never past ``end``) with the :class:`GlobalCollector` policy."""
    return GlobalCollector(buf, pos, end).run()


TupleDepths = dict[int, tuple[tuple[Any, ...], int, int]]
# Hashing a tuple visits every tuple inside it, shared ones each time they are reached (CPython does not cache
# tuple hashes): ``t = (t, t)`` 40 levels deep is 170 bytes of pickle and 2**40 steps to hash. A dict key or set
# item may hold at most this many tuples, counted that way (real checkpoints: a handful).
MAX_KEY_WEIGHT = MAX_DEPTH


def tuple_depth(x: Any, cache: TupleDepths) -> int:
    """How deeply tuples nest in ``x`` (0 for a non-tuple), iteratively and memoised; raises past MAX_DEPTH.

    Only tuple-in-tuple chains matter for hashing: hashing stops at the first unhashable item, and a
    frozenset caches its items' hashes. ``cache`` maps id -> (tuple, depth, weight) and keeps the tuple alive so
    that an id is never reused for another object while the cache lives; the weight is how many tuples hashing
    it visits (see :data:`MAX_KEY_WEIGHT`), capped just past that bound.
    """
    if type(x) is not tuple:
        return 0
    hit = cache.get(id(x))
    if hit is not None and hit[0] is x:
        return hit[1]
    todo: list[tuple[Any, ...]] = [x]
    while todo:
        t = todo[-1]
        pending = [c for c in t if type(c) is tuple and (cache.get(id(c)) or (None,))[0] is not c]
        if pending:
            todo.extend(pending)
            continue
        todo.pop()
        kids = [cache[id(c)] for c in t if type(c) is tuple]
        d = 1 + max((k[1] for k in kids), default=0)
        if d > MAX_DEPTH:
            raise CorruptFileError(f"pickle nests tuples deeper than {MAX_DEPTH} levels")
        cache[id(t)] = (t, d, min(1 + sum(k[2] for k in kids), MAX_KEY_WEIGHT + 1))
    return cache[id(x)][1]


def _kids(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        out = [*obj.keys(), *obj.values()]
        if isinstance(obj, PickledDict) and obj.state is not None:
            out.append(obj.state)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Opaque):
        return [obj.value, obj.state, *obj.fields.values()]
    return []


_NESTS = (dict, list, tuple, set, frozenset, Opaque)  # what can hold other objects


def check_nesting(root: Any, where: str = "pickle") -> None:
    """Refuse an object graph nested deeper than MAX_DEPTH (iterative; each node visited once; cycles allowed)."""
    if not isinstance(root, _NESTS):
        return
    height: dict[int, int] = {}
    on_path: set[int] = set()
    keep: list[Any] = []  # keeps visited objects alive, so their ids stay unique
    # (object, None) to visit; (object, its children that can hold others) when they are done (a leaf child,
    # a string or a tensor record, adds nothing to a height: a state_dict's 100k of them are filtered out once)
    todo: list[tuple[Any, list[Any] | None]] = [(root, None)]
    while todo:
        obj, kids = todo.pop()
        oid = id(obj)
        if kids is not None:
            on_path.discard(oid)
            h = 1 + max([height.get(id(c), 0) for c in kids], default=0)
            if h > MAX_DEPTH:
                raise CorruptFileError(f"{where}: objects nest deeper than {MAX_DEPTH} levels")
            height[oid] = h
            continue
        if oid in height or oid in on_path:
            continue
        if len(on_path) > MAX_DEPTH:
            raise CorruptFileError(f"{where}: objects nest deeper than {MAX_DEPTH} levels")
        on_path.add(oid)
        keep.append(obj)
        kids = [c for c in _kids(obj) if isinstance(c, _NESTS)]
        todo.append((obj, kids))
        todo.extend([(c, None) for c in kids])


def _hashable(k: Any, cache: TupleDepths | None = None) -> Any:
    cache = {} if cache is None else cache
    if tuple_depth(k, cache) and cache[id(k)][2] > MAX_KEY_WEIGHT:
        raise CorruptFileError(
            f"pickle uses a tuple of more than {MAX_KEY_WEIGHT} tuples (shared ones counted each time) as a key: "
            "hashing it could take exponential time"
        )
    try:
        hash(k)
    except TypeError:
        raise CorruptFileError(f"pickle uses an unhashable {type(k).__name__} as a key") from None
    return k


def _target(stack: list[Any], kind: type, where: str) -> Any:
    if not stack or not isinstance(stack[-1], kind):
        got = type(stack[-1]).__name__ if stack else "nothing"
        raise CorruptFileError(f"{where}: expected a {kind.__name__} on the stack, found {got}")
    return stack[-1]


def _build(obj: Any, state: Any, where: str) -> None:
    if isinstance(obj, PickledDict):
        obj.state = state
    elif isinstance(obj, Opaque):
        obj.state = state
        if isinstance(state, dict):
            obj.fields.update(state)
    elif isinstance(obj, TensorRecord):
        _tensor_setstate(obj, state, where)
    elif isinstance(obj, Global):
        # pickle's BUILD on a class or function sets attributes on it (``setattr(os, ...)``): never allowed
        raise UnsafePickleError(
            f"refusing to unpickle: BUILD would set attributes on {obj.qualname}; nothing was executed",
            global_name=obj.qualname,
        )
    else:
        raise CorruptFileError(f"{where}: BUILD on a {type(obj).__name__}")
