"""The C-unpickler fast path (formats/fastpickle.py) against the pure interpreter: same results, same bounds.

The differential tests are the contract: whoever changes an Interpreter handler or a recorder runs
``python -m pytest -q tests/formats/test_fastpickle.py`` and keeps the two paths in agreement.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile import build_corpus

from ckptool.errors import CkptError, CorruptFileError
from ckptool.formats import fastpickle, open_checkpoint, unpickler
from ckptool.formats._torch_tree import storage_ref
from ckptool.formats.unpickler import Interpreter, Opaque, PickledDict, TensorRecord

ROOT = Path(__file__).resolve().parents[2]


def norm(x: Any, seen: dict[int, int] | None = None) -> Any:
    """A comparable form of a recorded object tree, linear in its objects (a container met again is a
    back-reference, as in the pickle's own memo; so a "billion laughs" DAG stays small). EMPTY_DICT gives a
    plain dict in C and a PickledDict in Python: both read as the same dict with no class and no BUILD state."""
    seen = {} if seen is None else seen
    if isinstance(x, (dict, list, set, frozenset, TensorRecord, Opaque)) or (isinstance(x, tuple) and x):
        if id(x) in seen:
            return ("ref", seen[id(x)])
        seen[id(x)] = len(seen)
    if isinstance(x, dict):
        kind, state = (x.kind, x.state) if isinstance(x, PickledDict) else ("dict", None)
        return ("dict", kind, norm(state, seen), [(norm(k, seen), norm(v, seen)) for k, v in x.items()])
    if isinstance(x, list):
        return ("list", [norm(v, seen) for v in x])
    if isinstance(x, tuple):
        return ("tuple", tuple(norm(v, seen) for v in x))
    if isinstance(x, (set, frozenset)):
        return (type(x).__name__, sorted(repr(norm(v, {})) for v in x))
    if isinstance(x, TensorRecord):
        return ("T", x.storage, x.storage_offset, x.shape, x.stride, x.dtype, x.requires_grad, x.is_parameter)
    if isinstance(x, Opaque):
        return ("O", x.kind, norm(x.value, seen), norm(x.state, seen), norm(x.fields, seen))
    if isinstance(x, float) and math.isnan(x):
        return ("nan",)
    return (type(x).__name__, x)


def sharing(x: Any) -> list[int]:
    """Which containers are the same object: for each container met (depth first), the index of its first visit."""
    ids: dict[int, int] = {}
    out: list[int] = []
    todo = [x]
    while todo:
        cur = todo.pop()
        if isinstance(cur, (dict, list, TensorRecord)):
            k = ids.get(id(cur))
            out.append(len(ids) if k is None else k)
            if k is not None:
                continue
            ids[id(cur)] = len(ids)
        if isinstance(cur, dict):
            todo.extend(cur.values())
        elif isinstance(cur, (list, tuple)):
            todo.extend(cur)
    return out


def both(data: bytes, persistent: bool = False) -> tuple[Any, Any]:
    """(fast result or None, pure result) for one pickle; when the pure path refuses it, the fast path must not
    have read it."""
    pl = (lambda pid: storage_ref(pid, legacy=False)) if persistent else None
    fast = fastpickle.load(data, persistent_load=pl)
    try:
        pure = Interpreter(data, persistent_load=pl).run()
    except CkptError:
        assert fast is None, "the fast path read a pickle the pure path refuses"
        raise
    return fast, pure


def data_pkl(obj: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return z.read(name)


PLAIN: list[Any] = [
    0, -1, 2**31, -(2**63), 2**200, 1.5, float("inf"), True, None, "", "é🙂", b"", b"\x00" * 300, "x" * 70000,
    [], (), {}, set(), frozenset(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [1, [2, [3]]],
    {"a": 1, "b": [1, 2], "c": {"d": (1, (2, 3))}}, {(1, 2): "k", 3: None, "s": {1, 2}},
    collections.OrderedDict(a=1, b=2), frozenset({(1, 2), "x"}), {i: str(i) for i in range(2500)},
    [list(range(1200))] * 3, ((),), [(1,), (1,)], bytearray(b"ab"), complex(1, 2), {"nested": [[[[{"x": ()}]]]]},
]  # fmt: skip


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
@pytest.mark.parametrize("i", range(len(PLAIN)))
def test_plain_pickles_read_the_same(proto: int, i: int) -> None:
    data = pickle.dumps(PLAIN[i], protocol=proto)
    try:
        fast, pure = both(data)
    except CkptError:  # e.g. protocol 2 spells bytes as builtins.bytes, which is not allowed
        return
    if fast is not None:
        assert norm(fast[0]) == norm(pure[0])
        assert fast[1] == pure[1] == len(data)


def test_shared_objects_stay_shared() -> None:
    shared = [1, 2]
    data = pickle.dumps({"a": shared, "b": shared, "c": [shared, [3]]}, protocol=2)
    fast, pure = both(data)
    assert fast is not None
    assert fast[0]["a"] is fast[0]["b"] is fast[0]["c"][0]
    assert sharing(fast[0]) == sharing(pure[0])


def _module_sd() -> Any:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    return m.state_dict()


def _objects() -> dict[str, Any]:
    sd = _module_sd()
    base = torch.arange(24, dtype=torch.float32)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    opt.zero_grad()
    return {
        "module_state_dict": sd,
        "training": {"state_dict": sd, "epoch": 3, "optimizer": opt.state_dict(), "best": 0.5, "args": {"lr": 0.1}},
        "parameters": {"p": torch.nn.Parameter(torch.randn(3)), "q": torch.nn.Parameter(torch.randn(2), False)},
        "dtypes": {
            d: torch.zeros(2, dtype=getattr(torch, d))
            for d in ("float16", "bfloat16", "int64", "bool", "complex64", "uint8", "int8", "float64")
        },
        "views": {"a": base[2:10].view(2, 4), "t": base.view(4, 6).t(), "b": base, "s": base[::3]},
        "values": {"dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2, 3]), "w": base},
        "empty": {"e": torch.zeros(0, 3), "scalar": torch.tensor(1.5)},
        "tied": {"emb": base, "head": base},
    }


@pytest.mark.parametrize("proto", [2, 4])
@pytest.mark.parametrize("name", list(_objects()))
def test_torch_pickles_read_the_same(name: str, proto: int) -> None:
    data = data_pkl(_objects()[name], pickle_protocol=proto)
    fast, pure = both(data, persistent=True)
    assert norm(pure[0]) == norm(fast[0] if fast is not None else pure[0])
    if name != "training":  # the optimizer's state holds no class instances either, but keep the check honest
        assert fast is not None, "a plain torch.save pickle should take the fast path"
    if fast is not None:
        assert fast[1] == pure[1]
        assert sharing(fast[0]) == sharing(pure[0])


def _reads(path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool) -> Any:
    monkeypatch.setenv("CKPTOOL_PURE_PICKLE", "1" if pure else "0")
    try:
        ck = open_checkpoint(str(path))
    except CkptError as e:
        return ("error", type(e).__name__, e.message)
    with ck:
        return ("ok", ck.to_dict(), norm(ck.root), ck.notes)


def _took_fast_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of pickles the fast path read (where it declined, both reads are the pure path by construction)."""
    hits: list[int] = []
    real = fastpickle.load

    def counted(*a: Any, **kw: Any) -> Any:
        got = real(*a, **kw)
        if got is not None:
            hits.append(1)
        return got

    monkeypatch.setattr(fastpickle, "load", counted)
    return hits


def test_every_fixture_reads_the_same(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = sorted(p for p in (ROOT / "fixtures").iterdir() if p.suffix in (".pth", ".ckpt"))
    for i, obj in enumerate(_objects().values()):
        torch.save(obj, tmp_path / f"z{i}.pth")
        torch.save(obj, tmp_path / f"l{i}.pth", _use_new_zipfile_serialization=False)
    files += sorted(tmp_path.iterdir())
    assert len(files) > 10
    for path in files:
        assert _reads(path, monkeypatch, pure=False) == _reads(path, monkeypatch, pure=True), path.name


def test_hostile_corpus_reads_the_same(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every hostile file the fast path reads: the same refusal (or the same result) on the pure path, and nothing
    runs."""
    canary = tmp_path / "canary"
    cases = build_corpus(tmp_path / "corpus", canary)
    hits = _took_fast_path(monkeypatch)
    compared = 0
    for case in cases:
        if case.path.is_dir() or not case.path.exists():
            continue
        hits.clear()
        fast = _reads(case.path, monkeypatch, pure=False)
        if hits:
            compared += 1
            assert fast == _reads(case.path, monkeypatch, pure=True), case.name
    assert compared > 10
    assert list(canary.iterdir()) == []


# -- the guard: what the C unpickler never sees ---------------------------------------------------------------------
def _dag_key(levels: int) -> bytes:
    """{t: 1} where t = (t', t') nested ``levels`` deep through the memo: tiny, and 2**levels steps to hash."""
    b = b"\x80\x02}K\x01\x85q\x000"
    for i in range(levels):
        b += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0"
    return b + b"h" + bytes([levels]) + b"K\x01s."


BOMBS = {
    "deep_tuple_key": b"\x80\x02})" + b"\x85" * 150_000 + b"K\x01s.",
    "dag_tuple_key": _dag_key(40),
    "memo_index_2**31": b"\x80\x02]r" + struct.pack("<I", 2**31) + b".",
    "memo_out_of_order": b"\x80\x02]q\x05.",
    "bytes8_claims_exabytes": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x" * 16 + b".",
    "binunicode_claims_4gb": b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b"x.",
    "frame_claims_more": b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",
    "long4_claims_2gb": b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01" * 16 + b".",
    "mark_bomb": b"\x80\x02" + b"(" * 200_000 + b".",
    "newobj": pickle.dumps(collections.Counter(a=1), protocol=2).replace(b"R", b"\x81", 1),
    "ext": b"\x80\x02\x82\x01)R.",
    "unbalanced_stop": b"\x80\x02K\x01K\x02.",
    "setitem_on_list": b"\x80\x02]K\x00K\x01s.",
    "append_on_dict": b"\x80\x02}K\x01a.",
    "build_on_list": b"\x80\x02]}b.",
    "truncated": b"\x80\x02X\x05\x00\x00\x00ab",
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_guard_sends_bombs_to_the_pure_path(name: str) -> None:
    assert fastpickle.guard(BOMBS[name]) is None
    assert fastpickle.load(BOMBS[name]) is None


@pytest.mark.parametrize("name", ["deep_tuple_key", "dag_tuple_key"])
def test_tuple_key_bombs_are_refused_quickly(name: str, tmp_path: Path) -> None:
    """Both bombs hang or crash CPython's own unpickler; the reader refuses them, in a child so a crash shows."""
    path = tmp_path / f"{name}.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/data.pkl", BOMBS[name])
        z.writestr("a/version", "3\n")
    code = f"import ckptool; ckptool.open_checkpoint({str(path)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "CorruptFileError" in r.stderr, r.stderr[-500:]
    with pytest.raises(CorruptFileError, match="tuple"):
        unpickler.load(BOMBS[name])


def test_globals_resolve_to_recorders_only() -> None:
    """find_class never imports: an unknown global is refused (the pure path says why), an allowed one is
    ckptool's own inert reference whose call runs the recorder."""
    evil = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."
    assert fastpickle.load(evil) is None
    with pytest.raises(CkptError, match=r"os\.system"):
        unpickler.load(evil)
    g = unpickler.make_global("collections", "OrderedDict")
    assert isinstance(g(), PickledDict)


def test_memo_bound_scales_with_the_pickle() -> None:
    assert unpickler.memo_bound(100) == unpickler.MAX_MEMO
    assert unpickler.memo_bound(20_000_000) == 20_000_000 // unpickler.MEMO_BYTES
    # 1.05M memo entries in a 14 MB list pickle: past the old fixed bound, within the scaled one
    items = [str(i) for i in range(1_050_000)]
    data = pickle.dumps(items, protocol=2)
    assert len(data) // unpickler.MEMO_BYTES > len(items) > unpickler.MAX_MEMO
    assert Interpreter(data).max_memo == len(data) // unpickler.MEMO_BYTES
    fast = fastpickle.load(data)
    assert fast is not None and fast[0] == items


def test_pure_path_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTOOL_PURE_PICKLE", "1")
    assert not fastpickle.enabled()
    monkeypatch.setenv("CKPTOOL_PURE_PICKLE", "0")
    assert fastpickle.enabled()
