"""Property-based fuzzing of the header parsers: bytes in -> a parse result or a CkptError, nothing else.

Targets: the restricted unpickler (and scan's opcode walk), the legacy, zip, safetensors and ONNX readers,
``open_checkpoint`` (sniffing included) and ``scan``. Inputs are random bytes, generated pickle opcode
streams, and mutations of real files biased towards their headers.

The suite budget is small and deterministic (``derandomize``). A longer, random run:

    CKPTOOL_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import atexit
import os
import pickle
import pickletools
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from ckptool.errors import CkptError
from ckptool.formats import onnx as onnx_reader
from ckptool.formats import open_checkpoint, safetensors, torch_legacy, torch_zip, unpickler
from ckptool.formats._torch_tree import storage_ref
from ckptool.scan import scan, walk_pickle
from ckptool.sources import MemorySource

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# keep hypothesis' caches out of the work tree
_HOME = os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")
if not _HOME:
    _HOME = tempfile.mkdtemp(prefix="ckptool-hypothesis-")
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
set_hypothesis_home_dir(_HOME)
LONG = int(os.environ.get("CKPTOOL_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=LONG or 200,
    deadline=5000,  # ms per example: a hang or a blow-up fails, a busy CI machine does not
    derandomize=not LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 31, 1 << 32, (1 << 63) - 1]
INTERESTING += [1 << 63, (1 << 64) - 1, 100_000_001]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, hot: list[tuple[int, int]]) -> bytes:
    """``base`` with a few edits (bit flips, bytes, interesting integers, inserts, deletes, truncation),
    placed mostly inside the ``hot`` ranges (headers, pickles)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        if hot and draw(st.booleans()):
            lo, hi = draw(st.sampled_from(hot))
            i = draw(st.integers(lo, max(lo, min(hi, len(data)) - 1)))
        else:
            i = draw(st.integers(0, len(data) - 1))
        i = min(i, len(data) - 1)
        op = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "truncate"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[i] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            v = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            data[i : i + width] = v.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        else:
            del data[i:]
    return bytes(data)


NAMES = ["os system", "posix system", "torch FloatStorage", "collections OrderedDict", "__builtin__ eval",
         "torch._utils _rebuild_tensor_v2", "builtins set", "torch Size", "numpy dtype", "x"]  # fmt: skip


def _arg(op: pickletools.OpcodeInfo) -> st.SearchStrategy[bytes]:
    a = op.arg
    if a is None:
        return st.just(b"")
    if a.n >= 0:
        return st.binary(min_size=a.n, max_size=a.n)
    if a.n == pickletools.UP_TO_NEWLINE:
        text = st.one_of(
            st.sampled_from(NAMES).map(lambda s: s.replace(" ", "\n")),
            st.sampled_from(["'abc'", "'os'", "0", "1", "-5", "1.5", "01", "00", "'x", "L12L"]),
            st.text("0123456789abc.'\" \\", max_size=12),
        )
        return text.map(lambda s: s.encode("latin-1", "replace") + b"\n")
    lengths = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4}
    lengths[pickletools.TAKEN_FROM_ARGUMENT4U] = 4
    lengths[pickletools.TAKEN_FROM_ARGUMENT8U] = 8
    width = lengths.get(a.n, 4)

    @st.composite
    def sized(draw: st.DrawFn) -> bytes:
        payload = draw(st.one_of(st.binary(max_size=24), st.sampled_from([b"os", b"system", b"posix", b"\x80\x02."])))
        n = len(payload) if draw(st.integers(0, 9)) else draw(st.sampled_from(INTERESTING))
        n %= 1 << (8 * width)
        if width == 4 and a.n == pickletools.TAKEN_FROM_ARGUMENT4 and n >= 1 << 31:
            n -= 1 << 32
            return struct.pack("<i", n) + payload
        return n.to_bytes(width, "little") + payload

    return sized()


OPCODES = [op for op in pickletools.opcodes if op.name not in ("STOP",)]
OPCODE = st.sampled_from(OPCODES).flatmap(lambda op: _arg(op).map(lambda a, op=op: op.code.encode("latin-1") + a))


@st.composite
def opcode_stream(draw: st.DrawFn) -> bytes:
    """A pickle made of valid opcodes with plausible (and some lying) arguments."""
    proto = draw(st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"]))
    body = b"".join(draw(st.lists(OPCODE, max_size=40)))
    return proto + body + draw(st.sampled_from([b".", b".", b""]))


def _pickle_regions(data: bytes, start: int, count: int) -> int:
    pos = start
    import io

    bio = io.BytesIO(data)
    for _ in range(count):
        bio.seek(pos)
        for op, _a, _p in pickletools.genops(bio):
            if op.name == "STOP":
                break
        pos = bio.tell()
    return pos


def _zip_hot(data: bytes) -> list[tuple[int, int]]:
    """Local headers, data.pkl, the central directory and the end record of a zip."""
    hot = []
    with zipfile.ZipFile(Path(FIXTURES / "tiny_vgg.pth")) as zf:
        for info in zf.infolist():
            h = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
            hot.append((h, h + 30 + name_len + extra_len))
            if info.filename.endswith(".pkl"):
                start = h + 30 + name_len + extra_len
                hot.append((start, start + info.compress_size))
        hot.append((zf.start_dir, len(data)))
    return hot


ZIP = (FIXTURES / "tiny_vgg.pth").read_bytes()
TRAIN = (FIXTURES / "tiny_train.ckpt").read_bytes()
LEGACY = (FIXTURES / "tiny_vgg_legacy.pth").read_bytes()
ST = (FIXTURES / "tiny_vgg.safetensors").read_bytes()
ONNX = (FIXTURES / "tiny_mlp.onnx").read_bytes()
with zipfile.ZipFile(FIXTURES / "tiny_vgg.pth") as _zf:
    DATA_PKL = _zf.read(next(n for n in _zf.namelist() if n.endswith("data.pkl")))
with zipfile.ZipFile(FIXTURES / "tiny_train.ckpt") as _zf:
    TRAIN_PKL = _zf.read(next(n for n in _zf.namelist() if n.endswith("data.pkl")))
PLAIN = pickle.dumps({"a": [1, 2.5, "x", b"y", (1, 2), {3}, frozenset([4]), None, True]}, protocol=2)

PICKLES = st.one_of(
    st.binary(max_size=200),
    opcode_stream(),
    mutated(DATA_PKL, [(0, len(DATA_PKL))]),
    mutated(TRAIN_PKL, [(0, len(TRAIN_PKL))]),
    mutated(PLAIN, [(0, len(PLAIN))]),
)


def _persistent_load(pid: Any) -> Any:
    return storage_ref(pid, legacy=False)


def only_ckpt_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except CkptError as e:
        assert e.render() and "\n" not in e.render()  # one line for a person


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
@FUZZ
@given(PICKLES)
def test_unpickler(data: bytes) -> None:
    only_ckpt_errors(lambda: unpickler.load(data, persistent_load=_persistent_load))
    only_ckpt_errors(lambda: unpickler.load(data, torchscript=True))


@FUZZ
@given(PICKLES)
def test_scan_walk_never_raises(data: bytes) -> None:
    w = walk_pickle(data)
    assert w.complete or w.error  # it says where and why it stopped
    assert 0 <= w.end <= len(data)


@FUZZ
@given(
    st.one_of(
        mutated(LEGACY, [(0, _pickle_regions(LEGACY, 0, 5) + 16)]),
        st.binary(max_size=64).map(lambda b: LEGACY[:20] + b),
    )
)
def test_legacy_reader(data: bytes) -> None:
    only_ckpt_errors(lambda: torch_legacy.read(MemorySource("fuzz.pth", data)))


@FUZZ
@given(st.one_of(mutated(ST, [(0, 8 + struct.unpack("<Q", ST[:8])[0])]), st.binary(max_size=64)))
def test_safetensors_reader(data: bytes) -> None:
    only_ckpt_errors(lambda: safetensors.read(MemorySource("fuzz.safetensors", data)))


@st.composite
def safetensors_headers(draw: st.DrawFn) -> bytes:
    """Structurally plausible headers: names, dtypes, shapes and offsets that may or may not agree."""
    import json

    entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X"]),
            "shape": st.lists(st.integers(-1, 5), max_size=3),
            "data_offsets": st.lists(st.sampled_from([0, 4, 8, 12, 16, 1 << 40, -4]), min_size=2, max_size=2),
        }
    )
    header = draw(st.dictionaries(st.text("abc.", min_size=1, max_size=4), entry, max_size=4))
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()))
        )
    raw = json.dumps(header).encode()
    data = b"\0" * draw(st.integers(0, 24))
    n = len(raw) if draw(st.integers(0, 5)) else draw(st.sampled_from(INTERESTING))
    return struct.pack("<Q", n % (1 << 64)) + raw + data


@FUZZ
@given(safetensors_headers())
def test_safetensors_structured(data: bytes) -> None:
    only_ckpt_errors(lambda: safetensors.read(MemorySource("fuzz.safetensors", data)))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(st.one_of(mutated(ONNX, [(0, len(ONNX))]), st.binary(max_size=64).map(lambda b: b"\x08\x07" + b)))
def test_onnx_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        only_ckpt_errors(lambda: onnx_reader.read(MemorySource(os.path.join(d, "m.onnx"), data)))


@FUZZ
@given(st.one_of(mutated(ZIP, _zip_hot(ZIP)), mutated(TRAIN, [(0, 4096), (len(TRAIN) - 2048, len(TRAIN))])))
def test_zip_reader_and_scan(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "fuzz.pth"
    path.write_bytes(data)
    only_ckpt_errors(lambda: open_checkpoint(path))
    only_ckpt_errors(lambda: scan(path))
    only_ckpt_errors(lambda: torch_zip.read(MemorySource(str(path), data)) if data else None)


@FUZZ
@given(
    st.one_of(
        mutated(LEGACY, [(0, 2048)]),
        mutated(ST, [(0, 512)]),
        mutated(ONNX, [(0, len(ONNX))]),
        PICKLES,
    )
)
def test_open_checkpoint_and_scan_any_format(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "any.bin"
    path.write_bytes(data)
    only_ckpt_errors(lambda: open_checkpoint(path))
    only_ckpt_errors(lambda: scan(path))
