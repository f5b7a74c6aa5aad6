"""Builders the tests share (never downloaded, never a test module): full-size VGG state_dicts in every on-disk
form, tricky tensor layouts, minimal ONNX models, big-endian and deflated files."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckptool.arch.vgg import vgg_spec
from ckptool.checkpoint import ByteSource, Checkpoint, StorageInfo, TensorInfo
from ckptool.runtime import build_module


def vgg_state_dict(
    name: str = "vgg16_bn", num_classes: int = 1000, *, seed: int = 0, legacy_bn: bool = False, init: str = "fast"
) -> OrderedDict[str, torch.Tensor]:
    """A state_dict with torchvision's exact keys and shapes.

    init="fast": values from a cheap seeded generator (no nn.init cost); init="module": real module init.
    legacy_bn drops num_batches_tracked, as in torchvision's 2017 files.
    """
    if init == "module":
        torch.manual_seed(seed)
        sd = build_module(vgg_spec(name, num_classes)).state_dict()
    else:
        g = torch.Generator().manual_seed(seed)
        sd = OrderedDict()
        for k, shape in vgg_spec(name, num_classes).state_dict_shapes().items():
            if k.endswith("num_batches_tracked"):
                sd[k] = torch.tensor(0)
            elif k.endswith("running_var"):
                sd[k] = torch.rand(shape, generator=g) + 0.5
            else:
                sd[k] = torch.randn(shape, generator=g) * 0.01
    if legacy_bn:
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    return sd


def save(obj: object, path: str | os.PathLike[str], fmt: str = "zip") -> Path:
    """torch.save in the zip (default) or legacy (pre-1.6) format."""
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return Path(path)


# -- writer/reader builders: tricky layouts, ONNX models, big-endian and deflated files ---------------------


def tricky_state_dict(*, legacy: bool = False, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Every layout a writer can get wrong: views with storage offsets, strides, transposes, stride-0
    expansion, several names on one storage, scalars, empty tensors, and many dtypes."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(100, generator=g)
    mat = torch.randn(6, 5, generator=g)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["base"] = base
    sd["view.offset"] = base[10:30]
    sd["view.strided"] = base[1::3]
    sd["view.2d"] = base[40:64].view(4, 6)
    sd["mat.t"] = mat.t()
    sd["mat.cols"] = mat[:, 1:4]
    sd["tied.a"] = mat
    sd["tied.b"] = mat
    sd["expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["bf16"] = torch.randn(7, 3, generator=g).to(torch.bfloat16)
    sd["fp16"] = torch.randn(5, generator=g).half()
    sd["f64"] = torch.randn(4, dtype=torch.float64, generator=g)
    sd["i64"] = torch.arange(-5, 6)
    sd["i32.t"] = torch.arange(12, dtype=torch.int32).reshape(3, 4).t()
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    if not legacy:  # torch's legacy writer cannot save these
        sd["f8"] = torch.randn(4, generator=g).to(torch.float8_e4m3fn)
        sd["u16"] = torch.tensor([1, 65535], dtype=torch.uint16)
    return sd


def save_sd(sd: Any, path: Path, fmt: str = "zip") -> Path:
    torch.save(sd, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert list(sorted(expected)) == list(sorted(got))
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k
        else:
            assert torch.equal(got[k], v), k


def make_onnx(path: Path, arrays: dict[str, np.ndarray], *, raw: bool = True, external: bool = False) -> Path:
    """A minimal ONNX model whose initializers are ``arrays`` (raw_data, typed fields, or external data)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = []
    for name, arr in arrays.items():
        if raw:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            dt = helper.np_dtype_to_tensor_dtype(arr.dtype)
            inits.append(helper.make_tensor(name, dt, arr.shape, arr.flatten().tolist(), raw=False))
    first = next(iter(arrays))
    graph = helper.make_graph(
        [helper.make_node("Identity", [first], ["out"])],
        "g",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def big_endian_checkpoint(path: Path) -> tuple[Checkpoint, dict[str, np.ndarray]]:
    """A checkpoint whose bytes are big-endian (as legacy files from big-endian machines say in sys_info)."""
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5 - 4).astype(">f4")
    i = np.array([1, -2, 3], dtype=">i8")
    path.write_bytes(b"\0" * 16 + w.tobytes() + i.tobytes())
    s1 = StorageInfo("0", "float32", 12, "cpu", ByteSource(str(path), 16, 48))
    s2 = StorageInfo("1", "int64", 3, "cpu", ByteSource(str(path), 64, 24))
    tensors = [
        TensorInfo("w", "float32", (3, 4), s1),
        TensorInfo("w.t", "float32", (4, 3), s1, 0, (1, 4)),
        TensorInfo("w.row", "float32", (4,), s1, 4),
        TensorInfo("i", "int64", (3,), s2),
    ]
    expected = {"w": w.astype("<f4"), "w.t": w.T.astype("<f4"), "w.row": w[1].astype("<f4"), "i": i.astype("<i8")}
    return Checkpoint(path=str(path), format="torch-legacy", tensors=tensors, byteorder="big"), expected


def deflate_copy(src: Path, dst: Path) -> Path:
    """The same torch zip with its data records deflated (some tools re-zip checkpoints like that)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    return dst


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def files_in(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def noise_image(path: Path, seed: int = 0, size: tuple[int, int] = (320, 240)) -> Path:
    """A seeded RGB noise picture (width x height) saved at ``path``: an input for predict that no model knows."""
    from PIL import Image

    w, h = size
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# torch's tar checkpoints (torch.save before 0.1.10), written by hand the way 0.1.x wrote them: members
# sys_info, pickle, tensors, storages (torch/serialization.py ``_save`` of 0.1.x; read back by today's
# ``_legacy_load`` -> ``legacy_load``). Keys are integers (0.1.x used ``tensor._cdata``); the object pickle's
# persistent ids are ``str(key)``.
TAR_SYS_INFO = {"protocol_version": 1000, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}


def tar_members(
    obj: Any, *, protocol: int = 2, views: tuple[str, ...] = (), key_base: int = 94_000_000
) -> dict[str, bytes]:
    """The four members' bytes for ``obj`` (tensors anywhere in it). A tensor named in ``views`` (a key of a
    top-level dict; contiguous) is saved on a storage VIEW of its root storage, as 0.1.x saved storage slices."""
    import io
    import pickle

    tensors: dict[int, torch.Tensor] = {}
    by_id: dict[int, int] = {}
    view_of: dict[int, str] = {}
    if isinstance(obj, dict):
        view_of = {id(v): k for k, v in obj.items() if k in views}

    class P(pickle.Pickler):
        def persistent_id(self, o: Any) -> Any:
            if isinstance(o, torch.Tensor):
                if id(o) not in by_id:
                    by_id[id(o)] = key_base + 16 * len(by_id)
                    tensors[by_id[id(o)]] = o
                return str(by_id[id(o)])
            return None

    buf = io.BytesIO()
    P(buf, protocol=protocol).dump(obj)
    members = {"sys_info": pickle.dumps(TAR_SYS_INFO, protocol=protocol), "pickle": buf.getvalue()}

    storages: dict[int, tuple[torch.Tensor, int]] = {}  # root key -> (tensor sharing it, storage key)
    root_of: dict[int, int] = {}
    storage_views: list[tuple[int, int, int, int]] = []
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        root = next((k for k, (u, _) in storages.items() if u.untyped_storage().data_ptr() == ptr), None)
        if root is None:
            root = key + 1
            storages[root] = (t, root)
        if id(t) in view_of:
            assert t.is_contiguous()
            vkey = key + 2
            storage_views.append((vkey, root, t.storage_offset(), t.numel()))
            root_of[key] = vkey
        else:
            root_of[key] = root

    def dump(o: Any) -> bytes:
        return pickle.dumps(o, protocol=protocol)

    tb = io.BytesIO()
    tb.write(dump(len(tensors)))
    for key, t in tensors.items():
        tb.write(dump((key, root_of[key], getattr(torch, _TYPE_NAMES[t.dtype] + "Tensor"))))
        is_view = root_of[key] != next(r for r, (u, _) in storages.items()
                                       if u.untyped_storage().data_ptr() == t.untyped_storage().data_ptr())  # fmt: skip
        offset = 0 if is_view else t.storage_offset()
        tb.write(struct.pack("<i", t.dim()) + b"\0" * 4)
        tb.write(struct.pack(f"<{t.dim()}q", *t.shape) + struct.pack(f"<{t.dim()}q", *t.stride()))
        tb.write(struct.pack("<q", offset))
    members["tensors"] = tb.getvalue()

    sb = io.BytesIO()
    sb.write(dump(len(storages)))
    for key, (t, _) in storages.items():
        st = t.untyped_storage()
        sb.write(dump((key, "cpu", getattr(torch, _TYPE_NAMES[t.dtype] + "Storage"))))
        raw = bytes(st)
        sb.write(struct.pack("<q", len(raw) // t.element_size()) + raw)
    sb.write(dump(storage_views))
    members["storages"] = sb.getvalue()
    return members


_TYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool",
}  # fmt: skip


def write_tar(
    path: Path, members: dict[str, bytes], order: tuple[str, ...] = ("sys_info", "pickle", "tensors", "storages")
) -> Path:
    """A tar checkpoint from member bytes (PAX format, as torch wrote it), members in ``order``."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in order:
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 1_490_000_000
            tar.addfile(info, io.BytesIO(members[name]))
    return path
