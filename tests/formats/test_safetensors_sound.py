# ruff: noqa: UP031  (JSON text with %s holes reads better than doubled braces)
"""safetensors: the fast acceptance of a sound header (column checks, duplicate keys by counting quotes) agrees
with the entry-by-entry rules on every header, sound or broken, and is the path a sound header takes."""

from __future__ import annotations

import json
import struct

import pytest

from ckptool.formats import safetensors as st


def ent(begin: int, end: int, shape: list[int] | None = None, dtype: str = "F32") -> str:
    shape = [(end - begin) // 4] if shape is None else shape
    return json.dumps({"dtype": dtype, "shape": shape, "data_offsets": [begin, end]})


def fileof(header: str, data_len: int) -> bytes:
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * data_len


SOUND = {
    "plain": ('{"a": %s, "b": %s}' % (ent(0, 16), ent(16, 32)), 32),
    "offsets out of header order": ('{"b": %s, "a": %s, "c": %s}' % (ent(16, 32), ent(0, 16), ent(32, 40)), 40),
    "metadata": ('{"__metadata__": {"format": "pt", "k": "v"}, "a": %s}' % ent(0, 16), 16),
    "metadata null": ('{"__metadata__": null, "a": %s}' % ent(0, 16), 16),
    "metadata last": ('{"a": %s, "__metadata__": {"x": "y"}}' % ent(0, 16), 16),
    "empty": ("{}", 0),
    "zero-size first": ('{"z": %s, "a": %s}' % (ent(0, 0, [0]), ent(0, 16)), 16),
    "zero-size after": ('{"a": %s, "z": %s}' % (ent(0, 16), ent(0, 0, [0])), 16),  # tie: only _rules orders it
    "scalar and 0-d": ('{"s": %s, "m": %s}' % (ent(0, 4, []), ent(4, 28, [2, 3])), 28),
    "dtypes": ('{"h": %s, "d": %s, "b": %s}' % (ent(0, 4, [2], "F16"), ent(4, 12, [1], "I64"), ent(12, 13, [1], "BOOL")), 13),
    "backslash in a name": ('{"a\\\\b": %s, "q\\"x": %s}' % (ent(0, 16), ent(16, 32)), 32),
    "unicode name": ('{"gewicht.ä": %s}' % ent(0, 16), 16),
    "spaces": ('{ "a" : { "dtype" : "F32" , "shape" : [ 4 ] , "data_offsets" : [ 0 , 16 ] } }', 16),
}  # fmt: skip
BROKEN = {
    "duplicate tensor": ('{"a": %s, "a": %s}' % (ent(0, 16), ent(0, 16)), 16),
    "duplicate inside an entry": ('{"a": {"dtype": "F32", "dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', 16),
    "duplicate metadata key": ('{"__metadata__": {"k": "v", "k": "w"}, "a": %s}' % ent(0, 16), 16),
    "duplicate with a number value": ('{"__metadata__": {"k": "v"}, "a": %s, "a": 3}' % ent(0, 16), 16),
    "duplicate metadata": ('{"__metadata__": {"k": "v"}, "__metadata__": {"k": "v"}, "a": %s}' % ent(0, 16), 16),
    "duplicate behind a backslash": ('{"a\\\\b": %s, "a\\\\b": %s}' % (ent(0, 16), ent(0, 16)), 16),
    "bool in a shape": ('{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', 4),
    "float offset": ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}', 4),
    "negative dim": ('{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', 4),
    "unknown dtype": ('{"a": %s}' % ent(0, 16, dtype="Q7"), 16),
    "dtype not a string": ('{"a": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}', 16),
    "extra key": ('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "x": 1}}', 16),
    "missing key": ('{"a": {"dtype": "F32", "shape": [4], "offsets": [0, 16]}}', 16),
    "size": ('{"a": %s}' % ent(0, 8, [4]), 8),
    "gap": ('{"a": %s, "b": %s}' % (ent(0, 16), ent(20, 36)), 36),
    "overlap": ('{"a": %s, "b": %s}' % (ent(0, 16), ent(8, 24)), 24),
    "uncovered": ('{"a": %s}' % ent(0, 16), 20),
    "past the end": ('{"a": %s}' % ent(0, 16), 12),
    "metadata not strings": ('{"__metadata__": {"a": 1}, "a": %s}' % ent(0, 16), 16),
    "not an object": ("[1, 2]", 0),
    "not json": ("{not json", 0),
    "entry not an object": ('{"a": [1]}', 0),
    "three offsets": ('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 16]}}', 16),
    "end before begin": ('{"a": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}', 16),
}  # fmt: skip


def by_rules(buf: bytes) -> tuple[list[st.Finding], st.Parsed]:
    (n,) = struct.unpack("<Q", buf[:8])
    out = st.Parsed()
    return list(st._rules(buf[8 : 8 + n].decode(), len(buf) - 8 - n, 8 + n, out)), out


def columns(p: st.Parsed) -> tuple:
    return p.names, [d.name for d in p.dtypes], p.shapes, p.begins, p.ends, p.metadata, p.data_start


@pytest.mark.parametrize("case", sorted(SOUND))
def test_a_sound_header_is_accepted_as_the_rules_accept_it(case: str) -> None:
    header, data_len = SOUND[case]
    buf = fileof(header, data_len)
    out = st.Parsed()
    assert list(st.findings(buf, out)) == []
    want, ref = by_rules(buf)
    assert want == []
    assert columns(out) == columns(ref)
    assert out.data_start == 8 + len(header.encode()) and (out.names or case == "empty")


@pytest.mark.parametrize("case", sorted(SOUND))
def test_the_fast_path_takes_the_sound_headers_it_can_vouch_for(case: str) -> None:
    header, data_len = SOUND[case]
    taken = st._sound(json.loads(header), header, data_len) is not None
    # a backslash makes quote counting unsound, and a zero-size tensor after its tie is ordered by _rules
    assert taken == (case not in ("backslash in a name", "zero-size after")), case


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_header_gets_every_finding_of_the_rules(case: str) -> None:
    header, data_len = BROKEN[case]
    buf = fileof(header, data_len)
    got = list(st.findings(buf, st.Parsed()))
    want, _ = by_rules(buf)
    assert got and got == want, (got, want)
    try:
        doc = json.loads(header)
    except ValueError:
        return
    assert st._sound(doc, header, data_len) is None


def test_duplicates_are_named_even_when_the_rest_is_sound() -> None:
    header = '{"a": %s, "b": %s, "a": %s}' % (ent(0, 16), ent(16, 32), ent(0, 16))
    got = list(st.findings(fileof(header, 32)))
    assert got == [(st.KIND, "duplicate key 'a': which entry a reader keeps is ambiguous", "header")]


def test_many_tensors_in_shuffled_offset_order_read_in_header_order() -> None:
    names = [f"t{i}" for i in range(500)]
    order = sorted(range(500), key=lambda i: (i * 7919) % 500)  # header order != offset order
    header = "{" + ", ".join(f'"{names[i]}": {ent(16 * k, 16 * k + 16)}' for k, i in enumerate(order)) + "}"
    out = st.Parsed()
    assert list(st.findings(fileof(header, 16 * 500), out)) == []
    assert out.names == [names[i] for i in order] and out.begins == [16 * k for k in range(500)]
    assert st._sound(json.loads(header), header, 16 * 500) is not None
