"""Values are what torch.load returns: each case builds a benign file, loads it with torch and with ckptool,
and compares the numbers (or checks that ckptool refuses it with a clear message)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import FakeStorage, FakeTensor, torch_like_pickle, write_zip
from torch_oracle import ckptool_hex, torch_load

import ckptool
from ckptool.errors import CorruptFileError
from ckptool.formats.unpickler import c_int, c_long, load

INT_LINES = [
    b"0755", b"0x1f", b"0X1F", b"+1", b"-0", b"00", b"01", b" 01", b"1_000", b"12 ", b"0", b"-12",
    b"99999999999999999999", b"-9223372036854775809", b"9223372036854775807", b"1\x00zz", b"0755L", b"0x", b"",
    b"  ", b"abc", b"08", b"0o17",
]  # fmt: skip


@pytest.mark.parametrize("line", INT_LINES)
def test_int_opcode_reads_like_the_c_unpickler(line: bytes) -> None:
    data = b"I" + line + b"\n."
    try:
        want: object = pickle.loads(data)  # the C unpickler, which torch.load uses
    except Exception:
        want = ValueError
    try:
        got: object = c_int(line)
        assert load(data)[0] == got and type(load(data)[0]) is type(got)
    except ValueError:
        got = ValueError
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("line", [b"0755L", b"0x10L", b"10", b"1_0L", b"00L", b"-5L", b"L", b"12L "])
def test_long_opcode_reads_like_the_c_unpickler(line: bytes) -> None:
    try:
        want: object = pickle.loads(b"L" + line + b"\n.")
    except Exception:
        want = ValueError
    try:
        got: object = c_long(line)
    except ValueError:
        got = ValueError
    assert got == want


# -- files: each built here, read by torch.load and by ckptool ----------------------------------------------
class _State:
    """A tensor pickled as torch.save pickles one, followed by BUILD with ``state`` (torch calls set_())."""

    def __init__(self, tensor: FakeTensor, state: tuple) -> None:
        self.tensor, self.state = tensor, state

    def __reduce__(self) -> tuple:
        func, args = self.tensor.__reduce__()
        return (func, args, self.state)


def _records(**arrays: np.ndarray) -> dict[str, bytes]:
    return {k: np.ascontiguousarray(v).tobytes() for k, v in arrays.items()}


def _zip(path: Path, data_pkl: bytes, records: dict[str, bytes]) -> Path:
    members = [
        ("archive/data.pkl", data_pkl),
        ("archive/byteorder", b"little"),
        *((f"archive/data/{k}", v) for k, v in records.items()),
        ("archive/version", b"3\n"),
    ]
    return write_zip(path, members)


def _build_files(d: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    f32 = np.arange(10, dtype="<f4") * 1.5 - 3

    # BUILD with a state on a rebuilt tensor: torch calls set_(storage 1, offset 2, size (3,), stride (2,))
    s0, s1 = FakeStorage("0", 4), FakeStorage("1", 10)
    obj = {"w": _State(FakeTensor(s0, 0, (4,), (1,)), (s1, 2, torch.Size((3,)), (2,)))}
    out["build-set"] = _zip(d / "build-set.pth", torch_like_pickle(obj), _records(**{"0": f32[:4] * 0, "1": f32}))

    # a storage key declared as FloatStorage, then as IntStorage: torch keeps the first declaration
    a, b = FakeStorage("0", 10), FakeStorage("0", 10, "IntStorage")
    obj = {"f": FakeTensor(a, 0, (10,), (1,)), "i": FakeTensor(b, 0, (10,), (1,))}
    out["two-dtypes"] = _zip(d / "two-dtypes.pth", torch_like_pickle(obj), _records(**{"0": f32}))

    # an INT opcode in octal: I010 is 8 for torch's C unpickler (pickletools would say 10)
    pkl = torch_like_pickle({"w": FakeTensor(FakeStorage("0", 10), 0, (8,), (1,))})
    assert pkl.count(b"K\x08\x85") == 1
    out["int-octal"] = _zip(d / "int-octal.pth", pkl.replace(b"K\x08\x85", b"I010\n\x85"), _records(**{"0": f32}))

    # neg and conj views as torch.save writes them (metadata bits on _rebuild_tensor_v2)
    z = torch.tensor([1 + 2j, 3 - 4j, -0.5 + 0j], dtype=torch.complex64)
    x = torch.tensor([1.5, -2.0, 0.0, float("inf")])
    h = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    views = {"conj": z.conj(), "neg": torch._neg_view(x), "neg-bf16": torch._neg_view(h), "plain": x}
    views["neg-complex"] = torch._neg_view(z)
    torch.save(views, d / "neg-conj.pth")
    out["neg-conj"] = d / "neg-conj.pth"

    # a Parameter whose state sets data (_rebuild_parameter_with_state), a Tensor with state (_rebuild_from_type_v2)
    p = torch.nn.Parameter(torch.zeros(3))
    p.__dict__["data"] = torch.tensor([7.0, 8.0, 9.0])
    t = torch.zeros(2)
    t.__dict__["data"] = torch.tensor([5.0, 6.0])
    t.__dict__["note"] = "an attribute without values"
    torch.save({"p": p, "t": t}, d / "state-data.pth")
    out["state-data"] = d / "state-data.pth"
    return out


WEIGHTS_ONLY = {"build-set": True, "two-dtypes": True, "int-octal": False, "neg-conj": True, "state-data": True}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_files(tmp_path_factory.mktemp("values"))


@pytest.fixture(scope="module")
def torch_views(files: dict[str, Path]) -> dict[bool, dict[str, dict]]:
    return {
        wo: torch_load([files[c] for c, w in WEIGHTS_ONLY.items() if w == wo], weights_only=wo) for wo in (True, False)
    }


@pytest.mark.parametrize("case", list(WEIGHTS_ONLY))
def test_values_are_what_torch_load_returns(case: str, files: dict[str, Path], torch_views) -> None:
    want = torch_views[WEIGHTS_ONLY[case]][str(files[case])]
    assert want["ok"], want
    with ckptool.open(files[case]) as ck:
        assert sorted(ck.names()) == sorted(want["tensors"])
        for name, t in want["tensors"].items():
            assert ck[name].dtype == t["dtype"] and list(ck[name].shape) == t["shape"], name
            assert ckptool_hex(ck, name) == t["hex"], f"{case}: {name}"


def test_int_octal_is_refused_by_weights_only_torch(files: dict[str, Path]) -> None:
    with pytest.raises(pickle.UnpicklingError):
        torch.load(files["int-octal"], weights_only=True)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("case", list(WEIGHTS_ONLY))
def test_export_writes_torchs_numbers(
    case: str, fmt: str, files: dict[str, Path], torch_views, tmp_path: Path, cli
) -> None:
    want = torch_views[WEIGHTS_ONLY[case]][str(files[case])]["tensors"]
    out = tmp_path / f"out.{fmt}"
    r = cli("export", files[case], f"--{fmt}", out)
    assert r.exit_code == 0, r.output
    if fmt == "pth":
        got = {k: v.resolve_conj().resolve_neg().contiguous() for k, v in torch.load(out, weights_only=True).items()}
    else:
        from safetensors.torch import load_file

        got = load_file(out)
    for name, t in want.items():
        assert str(got[name].dtype).removeprefix("torch.") == t["dtype"], f"{case}: {name}"
        assert got[name].view(torch.uint8).numpy().tobytes().hex() == t["hex"], f"{case}: {name}"


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ((), "BUILD on a tensor with a tuple of 0"),
        ((1, 2), "BUILD on a tensor with a tuple of 2"),
        ("x", "BUILD on a tensor with a str"),
    ],
)
def test_build_states_torch_would_not_apply_alike_are_refused(state: object, says: str, tmp_path: Path) -> None:
    s0 = FakeStorage("0", 4)
    obj = {"w": _State(FakeTensor(s0, 0, (4,), (1,)), state)}  # type: ignore[arg-type]
    p = _zip(tmp_path / "b.pth", torch_like_pickle(obj), {"0": bytes(16)})
    with pytest.raises(CorruptFileError, match=says):
        ckptool.open(p)


def test_onnx_uses_raw_data_when_data_location_is_default(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = numpy_helper.from_array(w, "w")
    for k, v in (("location", "elsewhere.bin"), ("offset", "0"), ("length", "24")):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = onnx.TensorProto.DEFAULT
    (tmp_path / "elsewhere.bin").write_bytes(np.full(6, 99, dtype=np.float32).tobytes())
    out = helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 3])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [out], [t])), str(p))
    want = numpy_helper.to_array(onnx.load(str(p)).graph.initializer[0])
    assert (want == w).all()  # onnx reads raw_data
    with ckptool.open(p) as ck:
        assert (ck.numpy("w") == want).all()
