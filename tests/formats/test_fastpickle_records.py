"""The guard's one-step tensor records (formats/fastpickle.py, ``_TENSOR``) against its opcode-by-opcode walk.

``guard(data)`` and ``guard(data, tensors=False)`` must agree on every pickle: torch's own, and crafted variants
of it (every byte of a record changed, memo indexes and GET targets moved, tuples where strings were).
"""

from __future__ import annotations

import collections
import functools
import io
import random
import struct
import zipfile
from typing import Any

import pytest
import torch

from ckptool.errors import CorruptFileError, UnsafePickleError
from ckptool.formats import fastpickle, unpickler
from ckptool.formats._torch_tree import storage_ref


def data_pkl(obj: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return z.read(name)


def _steps(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every record the guard took in one step (True) or handed back to the walk (False)."""
    seen: list[bool] = []
    real = fastpickle._tensor_record

    def counted(*a: Any) -> bool:
        ok = real(*a)
        seen.append(ok)
        return ok

    monkeypatch.setattr(fastpickle, "_tensor_record", counted)
    return seen


def _same(data: bytes) -> int | None:
    fast = fastpickle.guard(data)
    assert fast == fastpickle.guard(data, tensors=False)
    return fast


SHAPES = [(), (3,), (2, 3), (2, 3, 4), (1, 2, 1, 2), (1, 1, 1, 1, 1, 2), (0, 4)]


def _state_dicts() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    mixed = collections.OrderedDict()
    for i in range(300):  # past 256 memo entries: BINPUT then LONG_BINPUT, BINGET then LONG_BINGET
        shape = SHAPES[i % len(SHAPES)]
        dt = (torch.float32, torch.float16, torch.int64, torch.bfloat16)[i % 4]
        mixed[f"layer.{i}.w"] = torch.zeros(shape, dtype=dt)
    base = torch.randn(8, 6, generator=g)
    return {
        "mixed": mixed,
        "module": torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict(),  # _metadata, BUILD
        "views": {"a": base[2:].view(3, 12), "t": base.t(), "s": base[::2], "b": base},
        "grad": {"p": torch.zeros(3, requires_grad=True), "q": torch.ones(2, 2)},
        "tied": {"emb": base, "head": base},
        "nested": {"model": mixed, "epoch": 3, "opt": {"lr": 0.1, "betas": (0.9, 0.99)}},
        "big": {f"k{i}": torch.zeros(2, i % 5 + 1) for i in range(2000)},
        "long_keys": {"x" * 300 + str(i): torch.zeros(i + 1) for i in range(5)},
    }


@pytest.mark.parametrize("proto", [2, 4])
@pytest.mark.parametrize("name", list(_state_dicts()))
def test_torch_pickles_guard_the_same(name: str, proto: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_pkl(_state_dicts()[name], pickle_protocol=proto)
    steps = _steps(monkeypatch)
    assert _same(data) == len(data)
    if name in ("mixed", "big") and proto == 2:
        assert sum(steps) > 0.9 * (300 if name == "mixed" else 2000), "torch's records should take one step"


def _mutants(data: bytes, rng: random.Random, k: int) -> list[bytes]:
    """``k`` copies of data with one byte changed in its tensor records (and a few with two)."""
    starts = [m.start() for m in fastpickle.TENSOR_RECORD.finditer(data)]
    assert starts
    out = []
    for _ in range(k):
        b = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2))):
            at = rng.choice(starts) + rng.randrange(60)
            b[min(at, len(b) - 2)] = rng.choice((rng.randrange(256), 0x68, 0x6A, 0x71, 0x72, 0x28, 0x74, 0x85, 0x52))
        out.append(bytes(b))
    return out


def test_changed_records_guard_the_same() -> None:
    rng = random.Random(12)
    data = data_pkl(_state_dicts()["mixed"])
    accepted = 0
    for m in _mutants(data, rng, 3000):
        accepted += _same(m) is not None
    assert accepted > 50  # some changes keep a valid pickle (an int's value, a key's byte), and both accept them


def _records(data: bytes) -> list[Any]:
    return list(fastpickle.TENSOR_RECORD.finditer(data))


def _put_index(tok_at: int, data: bytearray) -> int:
    return data[tok_at + 1] if data[tok_at] == 0x71 else struct.unpack_from("<I", data, tok_at + 1)[0]


def test_memo_indexes_out_of_order_are_walked() -> None:
    data = bytearray(data_pkl(_state_dicts()["big"]))
    recs = _records(bytes(data))
    for group in (5, 7, 14, 15):  # the storage key's, persistent id's, arguments' and tensor's PUTs
        b = bytearray(data)
        at = recs[500].start(group)
        assert b[at] == 0x72
        struct.pack_into("<I", b, at + 1, _put_index(at, b) + 1)
        assert _same(bytes(b)) is None


def _retarget(data: bytes, recs: list[Any], group: int, target: int) -> bytes:
    """data with the GET of ``group`` in each of ``recs`` pointing at memo entry ``target`` (as LONG_BINGET)."""
    b = bytearray(data)
    for r in sorted(recs, key=lambda r: -r.start()):
        lo, hi = r.span(group)
        b[lo:hi] = b"j" + struct.pack("<I", target)
    return bytes(b)


def test_gets_of_tuples_weigh_as_the_walk_weighs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage GETs of later records point at a memoized tuple (a persistent id, weight 1): each record's
    persistent id weighs more, as the walk weighs it; the step still takes them."""
    data = data_pkl(_state_dicts()["big"])
    recs = _records(data)
    pid_entry = _put_index(recs[10].start(7), bytearray(data))  # the memo entry of record 10's persistent id
    changed = _retarget(data, recs[20:], 2, pid_entry)  # the 'storage' GET
    steps = _steps(monkeypatch)
    assert _same(changed) == len(changed)
    assert sum(steps) > 1900


def test_gets_of_later_entries_are_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The location GET of one record naming an entry not made yet (far ahead, or the record's own persistent id,
    PUT after it): the walk refuses the pickle. Naming the record's own key (PUT just before it) is valid: the step
    declines it (it takes GETs of earlier entries only) and the walk accepts it."""
    data = data_pkl(_state_dicts()["big"])
    recs = _records(data)
    own = bytearray(data)
    for target in (10**6, _put_index(recs[30].start(7), own)):
        assert _same(_retarget(data, recs[30:31], 6, target)) is None
    steps = _steps(monkeypatch)
    changed = _retarget(data, recs[30:31], 6, _put_index(recs[30].start(5), own))
    assert _same(changed) == len(changed)
    assert False in steps and steps.count(True) == len(recs) - 1  # declined (from the key, then the GET), once


def test_records_near_the_mark_bound_are_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside 9,998 MARKs a record's two nested MARKs reach MAX_MARK_DEPTH: the step declines, the walk decides."""
    inner = data_pkl({"a": torch.zeros(2), "b": torch.zeros(3)})
    assert inner.startswith(b"\x80\x02") and inner.endswith(b"u.")
    depth = fastpickle.MAX_MARK_DEPTH - 3
    body = inner[2:-1]  # the dict (the SETITEMS included), without PROTO and STOP
    data = b"\x80\x02" + b"(" * depth + body + b"1" * depth + b"."  # POP_MARKs close them
    steps = _steps(monkeypatch)
    _same(data)
    assert steps and False in steps


# -- the same step in scan's walk (unpickler.GlobalCollector) --------------------------------------------------------
def _walks(data: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    """scan's walk of data with the one-step records, which must equal the opcode-by-opcode walk."""
    fast = unpickler.collect_globals(data)
    with monkeypatch.context() as m:
        m.setattr(unpickler, "TENSOR_RECORD", None)
        slow = unpickler.collect_globals(data)
    assert fast == slow
    return fast


@pytest.mark.parametrize("name", list(_state_dicts()))
def test_torch_pickles_walk_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for proto in (2, 4):
        data = data_pkl(_state_dicts()[name], pickle_protocol=proto)
        w = _walks(data, monkeypatch)
        assert w.complete and w.error is None and w.opcodes > 10


def test_changed_records_walk_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    data = data_pkl(_state_dicts()["mixed"])
    errors = 0
    for m in _mutants(data, rng, 2000):
        errors += _walks(m, monkeypatch).error is not None
    assert 0 < errors < 2000


def test_a_storage_key_that_holds_a_pickle_is_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage key that looks like a pickle is a nested-pickle finding: the step leaves it to the walk."""
    data = data_pkl({"a": torch.zeros(2), "b": torch.zeros(3)})
    rec = list(fastpickle.TENSOR_RECORD.finditer(data))[-1]
    lo, hi = rec.span(4)
    key = "\x80\x02K\x01.".encode()  # U+0080 ... in UTF-8
    changed = data[:lo] + b"X" + struct.pack("<I", len(key)) + key + data[hi:]
    w = _walks(changed, monkeypatch)
    assert w.nested and w.error is None


# -- the same records in the reading interpreter (unpickler.Interpreter._tensor_run) ---------------------------------
def _canon(x: Any) -> Any:
    """A comparable form of a read object: PickledDicts with their class and BUILD state, containers by value."""
    if isinstance(x, unpickler.PickledDict):
        return ("PickledDict", x.kind, _canon(x.state), [(_canon(k), _canon(v)) for k, v in x.items()])
    if isinstance(x, dict):
        return ("dict", [(_canon(k), _canon(v)) for k, v in x.items()])
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_canon(v) for v in x])
    return x


def _outcome(data: bytes) -> Any:
    refs: dict[str, Any] = {}

    def persistent_load(pid: Any) -> Any:
        ref = storage_ref(pid, legacy=False)
        return refs.setdefault(ref.key, ref)

    try:
        root, end = unpickler.Interpreter(data, persistent_load=persistent_load).run()
    except (CorruptFileError, UnsafePickleError) as e:
        return ("error", type(e).__name__, e.message)
    return ("ok", _canon(root), end, list(refs.values()))


def _reads(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[int]]:
    """The interpreter's reading of data with its one-step runs, which must equal (the object, or the error) its
    opcode-by-opcode reading; and the opcodes each run took."""
    taken: list[int] = []
    real = unpickler.Interpreter._tensor_run

    def counted(self: Any, raw: Any, pos: int) -> int:
        k = real(self, raw, pos)
        taken.append(k)
        return k

    with monkeypatch.context() as m:
        m.setattr(unpickler.Interpreter, "_tensor_run", counted)
        fast = _outcome(data)
    with monkeypatch.context() as m:
        m.setattr(unpickler, "TENSOR_RECORD", None)
        slow = _outcome(data)
    assert fast == slow
    return fast, taken


@pytest.mark.parametrize("proto", [2, 4])
@pytest.mark.parametrize("name", list(_state_dicts()))
def test_torch_pickles_read_the_same(name: str, proto: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_pkl(_state_dicts()[name], pickle_protocol=proto)
    got, taken = _reads(data, monkeypatch)
    assert got[0] == "ok" and got[2] == len(data)
    if name in ("mixed", "big") and proto == 2:  # (protocol 4 memoizes with MEMOIZE: the walk reads it)
        n = 300 if name == "mixed" else 2000
        assert sum(taken) > 0.9 * n * 25, "torch's records should be taken a run at a time"


def test_changed_records_read_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """One or two bytes changed in the records: every outcome (an object, or an error and its message) is the
    opcode-by-opcode one, and both kinds occur."""
    rng = random.Random(5)
    data = data_pkl(_state_dicts()["mixed"])
    kinds = collections.Counter()
    for m in _mutants(data, rng, 1500):
        kinds[_reads(m, monkeypatch)[0][0]] += 1
    assert kinds["ok"] > 50 and kinds["error"] > 50


@pytest.mark.parametrize(
    ("group", "what"),
    [(1, "the rebuild global"), (2, "the 'storage' string"), (3, "the storage class"), (6, "the location"),
     (12, "the OrderedDict global")],
)  # fmt: skip
@pytest.mark.parametrize("target", ["key", "pid", "own", "ahead", "global"])
def test_retargeted_gets_read_the_same(group: int, what: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record's GET naming another entry: the unit's own key (valid), an earlier persistent id (a tuple: its
    depth recorded as the walk records it), the record's own storage key (made after the GET: the walk reads
    it), an entry not made yet (an error), another global (another recorder runs). Same outcome either way."""
    data = data_pkl(_state_dicts()["big"])
    recs = _records(data)
    b = bytearray(data)
    at = {
        "key": recs[30].start(1) - (2 if data[recs[30].start(1) - 2] == 0x71 else 5),  # the PUT before the record
        "pid": recs[10].start(7),
        "own": recs[30].start(5),
    }
    idx = {t: _put_index(a, b) for t, a in at.items()}
    idx["ahead"] = 10**6
    idx["global"] = data[recs[20].start(12) + 1] if group != 12 else data[recs[20].start(1) + 1]
    got, _ = _reads(_retarget(data, recs[30:31], group, idx[target]), monkeypatch)
    if target == "ahead":
        assert got[0] == "error"


@pytest.mark.parametrize("group", [1, 2, 3, 6, 12])
@pytest.mark.parametrize("target", ["same", "pid", "global"])
def test_one_retargeted_get_in_many_units_reads_the_same(
    group: int, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same changed GET in 1,900 consecutive units (a run resolves each distinct set of GET tokens once and
    reuses it): the entry it named, now as a LONG_BINGET (valid), an earlier persistent id, or another global.
    The objects, or the error, are the opcode-by-opcode walk's; a valid change is still read a run at a time."""
    data = data_pkl(_state_dicts()["big"])
    recs = _records(data)
    b = bytearray(data)
    if target == "same":
        idx = unpickler.token_index(recs[100].group(group))
        recs = [r for r in recs if unpickler.token_index(r.group(group)) == idx]  # (the class GET: one dtype's)
    else:
        idx = (
            _put_index(recs[10].start(7), b) if target == "pid" else data[recs[20].start(12 if group != 12 else 1) + 1]
        )
    got, taken = _reads(_retarget(data, recs[100:], group, idx), monkeypatch)
    if target == "same":
        assert got[0] == "ok" and got[1] == _reads(data, monkeypatch)[0][1]  # (the same objects; 3 bytes a GET longer)
        assert sum(taken) > 1800 * 25  # the changed units went through the runs


def test_a_negative_size_is_the_recorders_error(monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_pkl({"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(4)})
    rec = _records(data)[-1]
    lo, hi = rec.span(8)
    assert data[lo:hi] == b"K\x04\x85"
    got, _ = _reads(data[:lo] + b"J" + struct.pack("<i", -4) + b"\x85" + data[hi:], monkeypatch)
    assert got[0] == "error" and "size" in got[2]


def test_record_dense_pickles_skip_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle of more than 1 MB that torch's records fill is read by the interpreter's runs; a small one, and
    one without records, by the guard and the C unpickler."""
    calls: list[int] = []
    real = unpickler.FAST_PATH
    assert real is not None

    def spy(buf: Any, pos: int = 0, **kw: Any) -> Any:
        calls.append(len(buf))
        return real(buf, pos, **kw)

    monkeypatch.setattr(unpickler, "FAST_PATH", spy)
    big = data_pkl({f"layer.{i}.weight": torch.zeros(2) for i in range(12_000)})
    assert len(big) > unpickler.RECORD_DENSE_BYTES
    small = data_pkl({"a": torch.zeros(2)})
    plain = b"\x80\x02]q\x00(" + b"K\x01" * 600_000 + b"e."
    for data in (big, small, plain):
        unpickler.load(data, persistent_load=functools.partial(storage_ref, legacy=False))
    assert calls == [len(small), len(plain)]


def test_a_tuple_too_deep_fails_where_the_walk_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record whose 'storage' GET names a memoized tuple MAX_DEPTH levels deep: its persistent id is one level
    deeper, which the walk refuses at the id's TUPLE, before the reader's persistent_load sees the id."""

    def x(text: bytes) -> bytes:
        return b"X" + struct.pack("<I", len(text)) + text

    deep = b"K\x01" + b"\x85" * unpickler.MAX_DEPTH  # (((1,),),...) at the depth limit
    data = (
        b"\x80\x02}q\x00("
        + deep + b"q\x010"  # memo 1, popped: the memo entries a record GETs, made under the root's MARK
        + b"ctorch._utils\n_rebuild_tensor_v2\nq\x020" + b"ctorch\nFloatStorage\nq\x030" + x(b"cpu") + b"q\x040"
        + b"ccollections\nOrderedDict\nq\x050"
        + x(b"a") + b"q\x06"  # the key, then the record with its 'storage' GET aimed at the deep tuple
        + b"h\x02((h\x01h\x03" + x(b"0") + b"q\x07h\x04K\x04tq\x08QK\x00K\x04\x85q\x09K\x01\x85q\x0a\x89h\x05)Rq\x0btq\x0cRq\x0d"
        + b"u."
    )  # fmt: skip
    assert len(_records(data)) == 1
    got, _ = _reads(data, monkeypatch)
    assert got[0] == "error" and "deeper than" in got[2]
    # one level deep: the run takes the record, and the reader's persistent_load refuses the id ('storage' is a
    # tuple), as in the walk; with the depth checked after that call, the deep case above would say this too
    got, _ = _reads(data.replace(deep, b"K\x01\x85"), monkeypatch)
    assert got[0] == "error" and "unexpected persistent id" in got[2]
