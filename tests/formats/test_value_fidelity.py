"""Values are what torch.load returns: each case builds a benign file, loads it with torch and with ckptool,
and compares the numbers (or checks that ckptool refuses it with a clear message)."""

from __future__ import annotations

import pickle

import pytest

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
