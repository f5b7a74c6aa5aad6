"""One table of element types, shared by every format reader and writer (torch-free).

Names are torch's dtype names without the ``torch.`` prefix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # torch name without "torch."
    itemsize: int  # bytes per element (sub-byte types are not listed)
    safetensors: str | None  # safetensors header code
    onnx: int | None  # onnx.TensorProto.DataType value
    storage: str | None  # torch typed-storage class name
    is_float: bool = False
    numpy: str | None = None  # numpy dtype string, when numpy has one


_TABLE = [
    DType("float32", 4, "F32", 1, "FloatStorage", True, "<f4"),
    DType("float64", 8, "F64", 11, "DoubleStorage", True, "<f8"),
    DType("float16", 2, "F16", 10, "HalfStorage", True, "<f2"),
    DType("bfloat16", 2, "BF16", 16, "BFloat16Storage", True, None),
    DType("int64", 8, "I64", 7, "LongStorage", False, "<i8"),
    DType("int32", 4, "I32", 6, "IntStorage", False, "<i4"),
    DType("int16", 2, "I16", 5, "ShortStorage", False, "<i2"),
    DType("int8", 1, "I8", 3, "CharStorage", False, "i1"),
    DType("uint8", 1, "U8", 2, "ByteStorage", False, "u1"),
    DType("uint16", 2, "U16", 4, None, False, "<u2"),
    DType("uint32", 4, "U32", 12, None, False, "<u4"),
    DType("uint64", 8, "U64", 13, None, False, "<u8"),
    DType("bool", 1, "BOOL", 9, "BoolStorage", False, "?"),
    DType("complex64", 8, "C64", 14, "ComplexFloatStorage", True, "<c8"),
    DType("complex128", 16, None, 15, "ComplexDoubleStorage", True, "<c16"),
    DType("float8_e4m3fn", 1, "F8_E4M3", 17, None, True, None),
    DType("float8_e4m3fnuz", 1, None, 18, None, True, None),
    DType("float8_e5m2", 1, "F8_E5M2", 19, None, True, None),
    DType("float8_e5m2fnuz", 1, None, 20, None, True, None),
    DType("qint8", 1, None, None, "QInt8Storage", False, None),
    DType("quint8", 1, None, None, "QUInt8Storage", False, None),
    DType("qint32", 4, None, None, "QInt32Storage", False, None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _TABLE if d.safetensors}
BY_ONNX: dict[int, DType] = {d.onnx: d for d in _TABLE if d.onnx is not None}
BY_STORAGE: dict[str, DType] = {d.storage: d for d in _TABLE if d.storage}
BY_STORAGE["UntypedStorage"] = BY_NAME["uint8"]
BY_STORAGE["ByteStorage"] = BY_NAME["uint8"]

# torch attribute names that name a dtype (torch.float is float32, torch.half is float16, ...)
TORCH_ALIASES: dict[str, str] = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}

# bytes per element by every spelling :func:`lookup` accepts (``float32``, ``float``, ``torch.float``): one dict
# probe for the per-tensor paths (TensorInfo, StorageInfo), where ``lookup``'s string work adds up at 100k tensors
ITEMSIZE: dict[str, int] = {d.name: d.itemsize for d in _TABLE}
ITEMSIZE.update({alias: BY_NAME[name].itemsize for alias, name in TORCH_ALIASES.items()})
ITEMSIZE.update({f"torch.{k}": v for k, v in list(ITEMSIZE.items())})


def itemsize(name: str) -> int:
    """Bytes per element of the dtype called ``name`` (as :func:`lookup` spells it; KeyError when unknown)."""
    size = ITEMSIZE.get(name)
    return size if size is not None else lookup(name).itemsize


def lookup(name: str) -> DType:
    """The DType called ``name`` (torch spelling, with or without ``torch.``)."""
    name = name.removeprefix("torch.")
    name = TORCH_ALIASES.get(name, name)
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r}") from None
