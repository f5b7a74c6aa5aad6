"""The restricted unpickler's Interpreter: each opcode handler alone, then whole pickles."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest

from ckptool.errors import CorruptFileError, UnsafePickleError
from ckptool.formats.unpickler import (
    MAX_MARK_DEPTH,
    MAX_MEMO,
    Global,
    Interpreter,
    Opaque,
    PickledDict,
    load,
)


def vm(*stack: object, marks: list[int] | None = None) -> Interpreter:
    it = Interpreter(b"")
    it.stack.extend(stack)
    it.marks.extend(marks or [])
    return it


def test_every_pickle_opcode_has_a_handler_or_is_stop() -> None:
    import pickletools

    table = vm().handlers()
    assert {op.name for op in pickletools.opcodes} - set(table) == {"STOP"}


# -- values and containers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("handler", "value"),
    [("op_none", None), ("op_true", True), ("op_false", False), ("op_empty_list", []), ("op_empty_tuple", ()),
     ("op_empty_set", set())],
)  # fmt: skip
def test_constant_pushes(handler: str, value: object) -> None:
    it = vm()
    getattr(it, handler)(None)
    assert it.stack == [value] and type(it.stack[0]) is type(value)


def test_empty_dict_is_a_pickled_dict() -> None:
    it = vm()
    it.op_empty_dict(None)
    assert isinstance(it.stack[0], PickledDict) and it.stack[0] == {}


def test_bytearray() -> None:
    it = vm()
    it.op_bytearray(b"ab")
    assert it.stack == [bytearray(b"ab")]


def test_mark_and_its_depth_bound() -> None:
    it = vm(1, 2)
    it.op_mark(None)
    assert it.marks == [2]
    it.marks[:] = [0] * MAX_MARK_DEPTH
    with pytest.raises(CorruptFileError, match="nests deeper"):
        it.op_mark(None)


def test_dict_list_tuple_frozenset_from_mark() -> None:
    it = vm("x", "k", 1, "j", 2, marks=[1])
    it.op_dict(None)
    assert it.stack == ["x", {"k": 1, "j": 2}] and isinstance(it.stack[1], PickledDict)
    it = vm(1, 2, marks=[0])
    it.op_list(None)
    assert it.stack == [[1, 2]]
    it = vm(1, 2, marks=[0])
    it.op_tuple(None)
    assert it.stack == [(1, 2)]
    it = vm(1, 2, marks=[0])
    it.op_frozenset(None)
    assert it.stack == [frozenset({1, 2})]


def test_a_mark_is_needed() -> None:
    for h in ("op_dict", "op_list", "op_tuple", "op_frozenset", "op_appends", "op_setitems", "op_pop_mark"):
        with pytest.raises(CorruptFileError, match="MARK expected"):
            getattr(vm(1), h)(None)


@pytest.mark.parametrize(("handler", "n"), [("op_tuple1", 1), ("op_tuple2", 2), ("op_tuple3", 3)])
def test_tuple_n(handler: str, n: int) -> None:
    it = vm("base", *range(n))
    getattr(it, handler)(None)
    assert it.stack == ["base", tuple(range(n))]
    with pytest.raises(CorruptFileError, match="underflow"):
        getattr(vm(*range(n - 1)), handler)(None)


def test_append_appends_setitem_setitems_additems() -> None:
    it = vm([], 1)
    it.op_append(None)
    assert it.stack == [[1]]
    it = vm([0], 1, 2, marks=[1])
    it.op_appends(None)
    assert it.stack == [[0, 1, 2]]
    it = vm({}, "k", "v")
    it.op_setitem(None)
    assert it.stack == [{"k": "v"}]
    it = vm({}, "a", 1, "b", 2, marks=[1])
    it.op_setitems(None)
    assert it.stack == [{"a": 1, "b": 2}]
    it = vm(set(), 1, 2, marks=[1])
    it.op_additems(None)
    assert it.stack == [{1, 2}]


def test_container_ops_check_their_target() -> None:
    with pytest.raises(CorruptFileError, match="expected a list"):
        vm({}, 1).op_append(None)
    with pytest.raises(CorruptFileError, match="expected a dict"):
        vm([], "k", "v").op_setitem(None)
    with pytest.raises(CorruptFileError, match="odd number"):
        vm({}, "a", marks=[1]).op_setitems(None)
    with pytest.raises(CorruptFileError, match="unhashable"):
        vm({}, [1], "v").op_setitem(None)


# -- stack and memo ------------------------------------------------------------------------------------------------
def test_pop_pops_a_value_or_a_mark() -> None:
    it = vm(1, 2)
    it.op_pop(None)
    assert it.stack == [1]
    it = vm(1, marks=[1])
    it.op_pop(None)
    assert it.stack == [1] and it.marks == []
    with pytest.raises(CorruptFileError, match="underflow"):
        vm().op_pop(None)


def test_dup_shares_never_copies() -> None:
    x: list[int] = []
    it = vm(x)
    it.op_dup(None)
    assert it.stack[0] is it.stack[1] is x
    with pytest.raises(CorruptFileError, match="empty stack"):
        vm().op_dup(None)


def test_put_get_memoize_share_the_object() -> None:
    x: dict[str, int] = {}
    it = vm(x)
    it.op_put(0)
    it.op_memoize(None)
    it.op_get(1)
    it.op_get("0")
    assert it.stack[1] is x and it.stack[2] is x
    it.op_put(7)  # sparse index
    it.op_get(7)
    assert it.stack[-1] is it.stack[-2]
    with pytest.raises(CorruptFileError, match="memo key 3 is not defined"):
        it.op_get(3)
    with pytest.raises(CorruptFileError, match="empty stack"):
        vm().op_put(0)
    with pytest.raises(CorruptFileError, match="empty stack"):
        vm().op_memoize(None)


def test_memo_bound() -> None:
    it = vm(1)
    it.memo.dense.extend([None] * MAX_MEMO)
    with pytest.raises(CorruptFileError, match="memo exceeds"):
        it.op_put(MAX_MEMO)
    with pytest.raises(CorruptFileError, match="memo exceeds"):
        it.op_memoize(None)


# -- globals, calls, state -----------------------------------------------------------------------------------------
def test_global_and_stack_global_resolve_allowed_names_only() -> None:
    it = vm()
    it.op_global("collections OrderedDict")
    assert it.stack == [Global("collections", "OrderedDict")]
    it = vm("torch._utils", "_rebuild_tensor_v2")
    it.op_stack_global(None)
    assert it.stack == [Global("torch._utils", "_rebuild_tensor_v2")]
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        vm().op_global("os system")
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):  # the name Python 2 spelling imports
        vm("__builtin__", "eval").op_stack_global(None)
    with pytest.raises(CorruptFileError, match="non-strings"):
        vm(1, "x").op_stack_global(None)


def test_inert_globals_are_recorded_in_the_set() -> None:
    seen: set[str] = set()
    it = Interpreter(b"", inert=seen)
    it.op_global("argparse Namespace")
    it.push(())
    it.op_newobj(None)
    it.push({"lr": 0.1})
    it.op_build(None)
    assert seen == {"argparse.Namespace"}
    ns = it.stack[-1]
    assert isinstance(ns, Opaque) and ns.kind == "argparse.Namespace" and ns.fields == {"lr": 0.1}


def test_reduce_newobj_inst_obj_call_recorders_never_the_function() -> None:
    od = Global("collections", "OrderedDict")
    it = vm(od, ([("a", 1)],))
    it.op_reduce(None)
    assert it.stack == [OrderedDict(a=1)] and isinstance(it.stack[0], PickledDict)
    it = vm(od, ())
    it.op_newobj(None)
    assert it.stack == [{}]
    it = vm(od, (), {})
    it.op_newobj_ex(None)
    assert it.stack == [{}]
    it = vm(marks=[0])
    it.op_inst("collections OrderedDict")
    assert it.stack == [{}]
    it = vm(od, marks=[0])
    it.op_obj(None)
    assert it.stack == [{}]
    with pytest.raises(CorruptFileError, match="not a tuple"):
        vm(od, [1]).op_reduce(None)
    with pytest.raises(CorruptFileError, match="OBJ without a class"):
        vm(marks=[0]).op_obj(None)
    with pytest.raises(CorruptFileError, match="not a global"):
        vm(len, ()).op_reduce(None)


def test_build_on_a_global_is_refused() -> None:
    with pytest.raises(UnsafePickleError, match="BUILD would set attributes"):
        vm(Global("collections", "OrderedDict"), {}).op_build(None)
    d = PickledDict()
    it = vm(d, {"_metadata": {}})
    it.op_build(None)
    assert d.state == {"_metadata": {}}
    with pytest.raises(CorruptFileError, match="empty stack"):
        vm({}).op_build(None)


def test_persistent_ids_go_to_the_reader_or_are_refused() -> None:
    got: list[object] = []
    it = Interpreter(b"", persistent_load=lambda pid: got.append(pid) or "ref")
    it.op_persid("abc")
    it.push(("storage", 1))
    it.op_binpersid(None)
    assert got == ["abc", ("storage", 1)] and it.stack == ["ref", "ref"]
    with pytest.raises(CorruptFileError, match="should have none"):
        vm().op_persid("x")


@pytest.mark.parametrize("name", ["EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"])
def test_refused_opcodes_name_themselves(name: str) -> None:
    with pytest.raises(UnsafePickleError, match=name) as e:
        vm().handlers()[name](0)
    assert e.value.global_name == name


# -- whole pickles ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_data_round_trips(protocol: int) -> None:
    obj = {"a": [1, 2.5, "x", b"y", None, True], "t": (1, (2, 3)), "s": {1, 2}, "f": frozenset({3}), "n": -(2**70)}
    got, end = load(pickle.dumps(obj, protocol=protocol))
    assert got == obj and end == len(pickle.dumps(obj, protocol=protocol))


def test_unbalanced_and_truncated_pickles_are_corrupt() -> None:
    with pytest.raises(CorruptFileError, match="unbalanced"):
        load(b"\x80\x02K\x01K\x02.")
    with pytest.raises(CorruptFileError):
        load(pickle.dumps([1, 2, 3], protocol=2)[:-1])
