"""The restricted unpickler's Interpreter: each opcode handler alone, then whole pickles."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest

from ckptool.errors import CorruptFileError, UnsafePickleError
from ckptool.formats.unpickler import (
    ANY,
    MAX_MARK_DEPTH,
    MAX_MEMO,
    Global,
    GlobalCollector,
    GlobalValue,
    Interpreter,
    Opaque,
    PickledDict,
    collect_globals,
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


# -- the second policy: GlobalCollector (what scan walks with), handler by handler --------------------------------
def cvm(*stack: object, marks: list[int] | None = None) -> GlobalCollector:
    it = GlobalCollector(b"")
    it.stack.extend(stack)
    it.marks.extend(marks or [])
    it.at = 7
    return it


def test_collector_has_a_handler_for_every_opcode_but_stop() -> None:
    import pickletools

    assert {op.name for op in pickletools.opcodes} - set(cvm().handlers()) == {"STOP"}


def test_collector_string_is_pushed_symbolically_and_nested_pickles_are_recorded() -> None:
    it = cvm()
    it.op_string("os")
    assert it.stack == ["os"] and it.walk.nested == []
    inner = pickle.dumps(1, protocol=2).decode("latin-1")
    it.op_string(inner)
    assert it.walk.nested == [(7, inner.encode("latin-1"))]


def test_collector_bytes_are_any_and_nested_pickles_are_recorded() -> None:
    it = cvm()
    it.op_bytes(b"plain")
    assert it.stack == [ANY] and it.walk.nested == []
    it.op_bytes(b"\x80\x04K\x01.")
    assert it.walk.nested == [(7, b"\x80\x04K\x01.")]


def test_collector_global_records_offset_and_opcode() -> None:
    it = cvm()
    it.op_global("os system")
    assert it.walk.globals == [("os", "system", 7, "GLOBAL")]
    assert it.stack == [GlobalValue("os", "system")]


def test_collector_stack_global_resolves_constants_and_records_the_rest() -> None:
    it = cvm("posix", "system")
    it.op_stack_global(None)
    assert it.walk.globals == [("posix", "system", 7, "STACK_GLOBAL")]
    it = cvm(ANY, "system")
    it.op_stack_global(None)
    assert it.walk.globals == [] and it.walk.unresolved == [(7, "module and name are not string constants")]
    assert it.stack == [ANY]
    with pytest.raises(CorruptFileError, match="stack underflow"):
        cvm("x", marks=[1]).op_stack_global(None)  # the names must be above the last MARK


def test_collector_inst_records_and_pops_to_the_mark() -> None:
    it = cvm("a", "b", marks=[1])
    it.op_inst("builtins eval")
    assert it.walk.globals == [("builtins", "eval", 7, "INST")] and it.stack == ["a", ANY] and it.marks == []
    with pytest.raises(CorruptFileError, match="INST without a MARK"):
        cvm().op_inst("builtins eval")


def test_collector_build_on_a_global_is_recorded_and_on_values_is_not() -> None:
    it = cvm(GlobalValue("os", "path"), ANY)
    it.op_build(None)
    assert it.walk.builds == [(7, "os.path")] and it.stack == [GlobalValue("os", "path")]
    it = cvm(ANY, ANY)
    it.op_build(None)
    assert it.walk.builds == []
    with pytest.raises(CorruptFileError, match="BUILD on an empty stack"):
        cvm(ANY).op_build(None)


def test_collector_ext_and_buffers_are_recorded_not_refused() -> None:
    it = cvm(ANY)
    it.op_ext("EXT2", 513)
    it.op_buffer("NEXT_BUFFER", None)
    it.op_buffer("READONLY_BUFFER", None)
    assert it.walk.extensions == [(7, "EXT2", 513)]
    assert it.walk.buffers == [(7, "NEXT_BUFFER"), (7, "READONLY_BUFFER")]
    assert it.stack == [ANY, ANY, ANY]


def test_collector_proto_records_the_protocol() -> None:
    it = cvm()
    it.op_proto(4)
    assert it.walk.protocol == 4


def test_collector_generic_effects_respect_the_mark() -> None:
    it = cvm("d", "k", "v")
    table = it.handlers()
    table["SETITEM"](None)  # pickletools: [any, any, any] -> [any]
    assert it.stack == [ANY]
    it = cvm(ANY, "x", marks=[1])
    table = it.handlers()
    table["TUPLE"](None)
    assert it.stack == [ANY, ANY] and it.marks == []
    with pytest.raises(CorruptFileError, match="APPENDS without a MARK"):
        cvm(ANY).handlers()["APPENDS"](None)
    with pytest.raises(CorruptFileError, match="stack underflow"):
        cvm(ANY, marks=[1]).handlers()["REDUCE"](None)


def test_collector_memo_carries_strings_to_stack_global() -> None:
    w = collect_globals(b"\x80\x02U\x05posixq\x00U\x06systemq\x01h\x00h\x01\x93.")
    assert [g[:2] for g in w.globals] == [("posix", "system")] and w.complete and w.protocol == 2


def test_collector_put_on_a_mark_is_refused_by_both_policies() -> None:
    with pytest.raises(CorruptFileError, match="PUT on an empty stack"):
        cvm(ANY, marks=[1]).op_put(0)
    with pytest.raises(CorruptFileError, match="PUT on an empty stack"):
        vm(1, marks=[1]).op_put(0)


def test_collector_never_raises_and_keeps_what_it_saw() -> None:
    w = collect_globals(b"cos\nsystem\n(S'x'\ntR\xff\xff")
    assert [g[:2] for g in w.globals] == [("os", "system")]
    assert not w.complete and w.error and w.opcodes == 5
    w = collect_globals(b"\x80\x04N" + b"\x94" * 3 + b"h\x09.")  # memo key 9 undefined
    assert w.error == "memo key 9 is not defined" and not w.complete
    w = collect_globals(b"cos\nsystem\n.", 0, 5)  # runs past its container
    assert w.error is not None and w.end <= 5


def test_collector_bounds_are_the_interpreters() -> None:
    w = collect_globals(b"(" * (MAX_MARK_DEPTH + 1) + b".")
    assert w.error == f"nests deeper than {MAX_MARK_DEPTH}"
