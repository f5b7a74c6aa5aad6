"""The torch-free reader, checked against the real libraries on files they wrote."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from factory import save

from ckptool import open_checkpoint
from ckptool.errors import (
    CorruptFileError,
    KeyNotFoundError,
    UnreadableError,
    UnsafePickleError,
    UnsupportedFormatError,
)


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def tricky_state_dict() -> OrderedDict[str, torch.Tensor]:
    """Views, storage offsets, non-contiguous strides, shared storages, several dtypes, a scalar."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["base"] = base
    sd["row"] = base[2]  # storage offset 12
    sd["col"] = base[:, 1]  # stride 6
    sd["t"] = base.t()  # transposed
    sd["slice"] = base[1:3, 2:5]  # offset + strides
    sd["half"] = torch.linspace(-1, 1, 7).half()
    sd["bf16"] = torch.linspace(-2, 2, 5).bfloat16()
    sd["i64"] = torch.tensor([1, -2, 3], dtype=torch.int64)
    sd["u8"] = torch.arange(10, dtype=torch.uint8)
    sd["flag"] = torch.tensor([True, False])
    sd["scalar"] = torch.tensor(3.5)
    sd["param"] = torch.nn.Parameter(torch.ones(2, 2))
    sd["empty"] = torch.zeros(0, 3)
    return sd


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_formats_match_torch_load(tmp_path: Path, fmt: str) -> None:
    sd = tricky_state_dict()
    p = save(sd, tmp_path / f"tricky_{fmt}.pth", fmt)
    ck = open_checkpoint(p)
    assert ck.format == ("torch-zip" if fmt == "zip" else "torch-legacy")
    ref = torch.load(p, weights_only=True)
    assert ck.names() == list(ref)
    for t in ck:
        r = ref[t.name]
        assert t.shape == tuple(r.shape), t.name
        assert t.dtype == str(r.dtype).removeprefix("torch."), t.name
        assert t.numel == r.numel()
        assert t.nbytes == r.numel() * r.element_size()
        assert ck.read_bytes(t) == _bytes(r), t.name
    assert ck["col"].stride == (6,)
    assert ck["row"].storage_offset == 12
    assert ck["param"].is_parameter
    assert ck["base"].storage is ck["row"].storage or ck["base"].storage == ck["row"].storage


def test_zip_archive_prefix_and_byte_location(tmp_path: Path) -> None:
    p = save(OrderedDict(w=torch.arange(8.0)), tmp_path / "named.pth")
    ck = open_checkpoint(p)
    assert ck.metadata["archive_prefix"] == "named"
    src = ck["w"].storage.source
    assert src.member == "named/data/0"
    with open(p, "rb") as fh:  # the recorded offset is where the raw bytes really are
        fh.seek(src.offset)
        assert fh.read(32) == torch.arange(8.0).numpy().tobytes()
    # an archive whose folder is called "archive/" (older torch) reads the same
    renamed = tmp_path / "renamed.pth"
    with zipfile.ZipFile(p) as zin, zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr("archive/" + info.filename.split("/", 1)[1], zin.read(info))
    ck2 = open_checkpoint(renamed)
    assert ck2.metadata["archive_prefix"] == "archive"
    assert ck2.read_bytes(ck2["w"]) == torch.arange(8.0).numpy().tobytes()


def test_deflated_zip_members_still_read(tmp_path: Path) -> None:
    p = save(OrderedDict(w=torch.arange(100.0)), tmp_path / "a.pth")
    z = tmp_path / "deflated.pth"
    with zipfile.ZipFile(p) as zin, zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    ck = open_checkpoint(z)
    assert ck.read_bytes(ck["w"]) == torch.arange(100.0).numpy().tobytes()


def test_legacy_type_sizes_from_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.serialization as ts

    monkeypatch.setattr(ts, "LONG_SIZE", 4)
    monkeypatch.setattr(ts, "INT_SIZE", 4)
    p = save(OrderedDict(w=torch.arange(5, dtype=torch.int64)), tmp_path / "win.pth", "legacy")
    ck = open_checkpoint(p)
    assert ck.metadata["type_sizes"]["long"] == 4
    assert ck.read_bytes(ck["w"]) == torch.arange(5, dtype=torch.int64).numpy().tobytes()
    monkeypatch.setattr(ts, "LONG_SIZE", 8)
    p8 = save(OrderedDict(w=torch.arange(5, dtype=torch.int64)), tmp_path / "lin.pth", "legacy")
    assert open_checkpoint(p8).metadata["type_sizes"]["long"] == 8


@pytest.fixture
def cuda_tagged(monkeypatch: pytest.MonkeyPatch):
    """Make torch.save tag CPU storages as 'cuda:0', as a file saved on a GPU is (no GPU needed)."""
    import torch.serialization as ts

    entry = (-1000, lambda obj: "cuda:0", lambda obj, loc: obj if loc == "cuda:0" else None)
    ts._package_registry.insert(0, entry)  # type: ignore[attr-defined]
    yield
    ts._package_registry.remove(entry)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_cuda_storage_locations_just_work(tmp_path: Path, fmt: str, cuda_tagged: None) -> None:
    p = save(OrderedDict(w=torch.ones(3)), tmp_path / f"gpu_{fmt}.pth", fmt)
    raw = p.read_bytes()
    assert b"cuda:0" in raw  # the file really names a GPU storage
    ck = open_checkpoint(p)
    assert ck["w"].storage.location == "cuda:0"
    assert ck.metadata["storage_locations"] == ["cuda:0"]
    assert ck.read_bytes(ck["w"]) == torch.ones(3).numpy().tobytes()


def test_nested_training_checkpoint(fixtures_dir: Path) -> None:
    ck = open_checkpoint(fixtures_dir / "tiny_train.ckpt")
    assert ck.state_dict_key == "state_dict"
    assert len(ck) == 20 and all(t.name.startswith("model.") for t in ck)
    assert ck.extras["epoch"] == "7"
    assert ck.extras["optimizer_states"] == "1 entry, 2 tensors"
    assert ck.extras["hyper_parameters"] == "2 entries"
    assert "state_dict" not in ck.extras


def test_largest_conventional_mapping_wins_and_key_overrides(tmp_path: Path) -> None:
    big = OrderedDict((f"l{i}.weight", torch.ones(2)) for i in range(5))
    small = OrderedDict((f"e{i}.weight", torch.ones(2)) for i in range(2))
    other = OrderedDict((f"x{i}", torch.ones(1)) for i in range(9))  # not a conventional key: ignored
    p = save({"epoch": 3, "ema": small, "model": big, "stats": other, "optimizer": {"state": {}}}, tmp_path / "t.pth")
    ck = open_checkpoint(p)
    assert ck.state_dict_key == "model" and len(ck) == 5
    assert ck.extras["stats"] == "9 entries, 9 tensors"
    ck_ema = open_checkpoint(p, key="ema")
    assert ck_ema.state_dict_key == "ema" and ck_ema.names() == ["e0.weight", "e1.weight"]
    with pytest.raises(KeyNotFoundError, match="no entry 'nope'"):
        open_checkpoint(p, key="nope")
    nested = save({"checkpoint": {"model_state": big}}, tmp_path / "deep.pth")
    assert open_checkpoint(nested).state_dict_key == "checkpoint.model_state"
    assert len(open_checkpoint(nested, key="checkpoint.model_state")) == 5


def test_dataparallel_keys_are_reported_as_stored(fixtures_dir: Path) -> None:
    ck = open_checkpoint(fixtures_dir / "tiny_vgg_dp.pth")
    assert ck.names()[0] == "module.features.0.weight"


def test_safetensors_header_only(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    sd = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int32), "c": torch.ones(2).bfloat16()}
    p = tmp_path / "x.safetensors"
    save_file(sd, str(p), metadata={"format": "pt"})
    ck = open_checkpoint(p)
    assert ck.format == "safetensors"
    assert ck.metadata["__metadata__"] == {"format": "pt"}
    with safe_open(str(p), "pt") as f:
        assert sorted(ck.names()) == sorted(f.keys())
        for name in f.keys():  # noqa: SIM118
            assert ck.read_bytes(ck[name]) == _bytes(f.get_tensor(name))


def test_onnx_initializers_inline_and_external(tmp_path: Path, fixtures_dir: Path) -> None:
    import onnx
    from onnx import numpy_helper

    ck = open_checkpoint(fixtures_dir / "tiny_mlp.onnx")
    model = onnx.load(str(fixtures_dir / "tiny_mlp.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert ck.format == "onnx" and sorted(ck.names()) == sorted(inits)
    for t in ck:
        assert t.shape == inits[t.name].shape
        assert ck.read_bytes(t) == inits[t.name].tobytes()
    assert ck.metadata["inputs"][0]["name"] == "input"
    # the same model with its weights in an external file
    ext = tmp_path / "ext.onnx"
    onnx.save_model(
        model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0
    )
    ck2 = open_checkpoint(ext)
    for t in ck2:
        assert t.storage.source.path.endswith("ext.data")
        assert ck2.read_bytes(t) == inits[t.name].tobytes()


def test_onnx_typed_fields_decode(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    vals = {
        "f": (TensorProto.FLOAT, np.array([1.5, -2.0], np.float32)),
        "i64": (TensorProto.INT64, np.array([-3, 4, 1 << 40], np.int64)),
        "i32": (TensorProto.INT32, np.array([-7, 8], np.int32)),
        "u8": (TensorProto.UINT8, np.array([0, 255], np.uint8)),
    }
    inits = [helper.make_tensor(k, dt, a.shape, a.tolist(), raw=False) for k, (dt, a) in vals.items()]
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("f", TensorProto.FLOAT, [2])], inits)
    p = tmp_path / "typed.onnx"
    onnx.save(helper.make_model(graph), str(p))
    ck = open_checkpoint(p)
    for k, (_, a) in vals.items():
        assert ck.read_bytes(ck[k]) == a.tobytes(), k


def test_torchscript_recognised_and_parameters_listed(tmp_path: Path) -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    p = tmp_path / "scripted.pt"
    torch.jit.script(m).save(str(p))
    ck = open_checkpoint(p)
    assert ck.format == "torchscript"
    assert any("TorchScript" in n for n in ck.notes)
    sd = m.state_dict()
    listed = {t.name: t for t in ck}
    for k, v in sd.items():
        assert k in listed, k
        assert listed[k].shape == tuple(v.shape)


class _Evil:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_unsafe_pickle_refused_with_global_named(tmp_path: Path, fmt: str) -> None:
    canary = tmp_path / "canary"
    p = save({"w": torch.ones(1), "x": _Evil(canary)}, tmp_path / f"evil_{fmt}.pth", fmt)
    with pytest.raises(UnsafePickleError) as e:
        open_checkpoint(p)
    assert e.value.global_name in ("posix.system", "os.system")
    assert "posix.system" in str(e.value) or "os.system" in str(e.value)
    assert not canary.exists()


def test_python2_spelling_is_judged_by_what_would_be_imported(tmp_path: Path) -> None:
    payload = b"\x80\x02c__builtin__\neval\nq\x00X\x01\x00\x00\x001q\x01\x85q\x02Rq\x03."
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        from ckptool.formats import unpickler

        unpickler.load(payload)


@pytest.mark.parametrize(
    "content, error",
    [
        (b"", CorruptFileError),
        (os.urandom(4096), UnsupportedFormatError),
        (b"hello world, not a checkpoint", UnsupportedFormatError),
        (pickle.dumps({"a": 1}, protocol=2), UnsupportedFormatError),
        (b"PK\x03\x04" + b"\x00" * 100, CorruptFileError),
    ],
)
def test_bad_input_raises_typed_errors(tmp_path: Path, content: bytes, error: type) -> None:
    p = tmp_path / "bad.pth"
    p.write_bytes(content)
    with pytest.raises(error) as e:
        open_checkpoint(p)
    assert str(p) in str(e.value)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError, match="no such file"):
        open_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(UnreadableError, match="directory"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_files_are_corrupt(tmp_path: Path, fmt: str) -> None:
    p = save(OrderedDict(w=torch.randn(1000)), tmp_path / "full.pth", fmt)
    data = p.read_bytes()
    for cut in (len(data) // 4, len(data) // 2, len(data) - 10):
        q = tmp_path / f"cut{cut}.pth"
        q.write_bytes(data[:cut])
        with pytest.raises((CorruptFileError, UnsupportedFormatError)):
            open_checkpoint(q)


def test_onnx_sniffed_whatever_the_field_order(tmp_path: Path, fixtures_dir: Path) -> None:
    """A valid ModelProto with metadata_props written before the graph is still recognised as ONNX."""
    import onnx

    m = onnx.load(str(fixtures_dir / "tiny_mlp.onnx"))
    meta = onnx.ModelProto()
    meta.metadata_props.add(key="author", value="ckptool")
    rest = onnx.ModelProto()
    rest.CopyFrom(m)
    rest.ir_version = 0
    data = (
        onnx.ModelProto(ir_version=m.ir_version).SerializeToString()
        + meta.SerializeToString()
        + rest.SerializeToString()
    )
    p = tmp_path / "meta_first.onnx"
    p.write_bytes(data)
    assert onnx.load(str(p)).metadata_props[0].key == "author"  # protobuf accepts any field order
    ck = open_checkpoint(p)
    assert ck.format == "onnx" and len(ck) == 4


def test_old_gpu_file_naming_torch_cuda_storage_classes(tmp_path: Path, cuda_tagged: None) -> None:
    """Pre-1.0 files saved on a GPU pickle the CUDA storage class itself (torch.cuda.FloatStorage)."""
    p = save(OrderedDict(w=torch.arange(4.0)), tmp_path / "gpu_legacy.pth", "legacy")
    raw = p.read_bytes()
    assert raw.count(b"ctorch\nFloatStorage\n") == 1
    q = tmp_path / "old_gpu.pth"
    q.write_bytes(raw.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"))
    ck = open_checkpoint(q)
    t = ck["w"]
    assert t.dtype == "float32" and t.storage.location == "cuda:0"
    assert ck.read_bytes(t) == torch.arange(4.0).numpy().tobytes()


def _write_2017_style_legacy(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A legacy file as torch 0.2/0.3 wrote them (torchvision's 2017 VGG files): tensors rebuilt by the 4-argument
    ``torch._utils._rebuild_tensor``, storages tagged 'cuda:0' with ``torch.cuda.FloatStorage``, no
    num_batches_tracked, storage records in sorted-key order."""
    import struct
    import sys as _sys

    from torch._utils import _rebuild_tensor

    class Storage:
        def __init__(self, key: str, data: np.ndarray) -> None:
            self.key, self.data = key, data

    class Tensor:
        def __init__(self, s: Storage, shape: tuple[int, ...]) -> None:
            self.s, self.shape = s, shape

        def __reduce__(self):  # type: ignore[override]
            stride = tuple(int(np.prod(self.shape[i + 1 :])) for i in range(len(self.shape)))
            return (_rebuild_tensor, (self.s, 0, self.shape, stride))

    class P(pickle.Pickler):
        def persistent_id(self, obj: object):  # type: ignore[override]
            if isinstance(obj, Storage):
                return ("storage", torch.cuda.FloatStorage, obj.key, "cuda:0", obj.data.size, None)
            return None

    storages = {
        f"{140000000 + i}": Storage(f"{140000000 + i}", a.astype(np.float32).ravel())
        for i, a in enumerate(tensors.values())
    }
    sd = OrderedDict((k, Tensor(s, a.shape)) for (k, a), s in zip(tensors.items(), storages.values(), strict=True))
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump(
            {
                "protocol_version": 1001,
                "little_endian": _sys.byteorder == "little",
                "type_sizes": {"short": 2, "int": 4, "long": 4},
            },
            f,
            protocol=2,
        )
        P(f, protocol=2).dump(sd)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for k in keys:
            f.write(struct.pack("<q", storages[k].data.size))
            f.write(storages[k].data.tobytes())


def test_2017_style_legacy_file_like_torchvision_vgg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "features.0.weight": rng.standard_normal((64, 3, 3, 3)),
        "features.0.bias": rng.standard_normal(64),
        "features.1.running_var": rng.random(64),
        "classifier.6.weight": rng.standard_normal((10, 16)),
    }
    p = tmp_path / "vgg16_bn-6c64b313.pth"
    _write_2017_style_legacy(p, arrays)
    ref = torch.load(p, map_location="cpu", weights_only=True)  # torch itself accepts the file
    ck = open_checkpoint(p)
    assert ck.format == "torch-legacy" and ck.names() == list(arrays) == list(ref)
    for t in ck:
        assert t.shape == tuple(ref[t.name].shape)
        assert t.storage.location == "cuda:0"
        assert ck.read_bytes(t) == ref[t.name].numpy().tobytes()


def test_onnx_sniffed_when_the_graph_outruns_the_first_bytes(tmp_path: Path) -> None:
    """onnx.helper writes ir_version, then a graph far larger than the 4 KB the sniffer looks at."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    big = numpy_helper.from_array(np.arange(100_000, dtype=np.float32), "w")
    out = helper.make_tensor_value_info("w", TensorProto.FLOAT, [100_000])
    p = tmp_path / "big.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [out], [big])), str(p))
    assert p.read_bytes()[:1] == b"\x08" and p.stat().st_size > 400_000
    ck = open_checkpoint(p)
    assert ck.format == "onnx" and ck["w"].shape == (100_000,)
    assert ck.read_bytes(ck["w"]) == np.arange(100_000, dtype=np.float32).tobytes()
