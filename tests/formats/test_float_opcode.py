"""The FLOAT opcode read as the C unpickler reads it (``load_float``: ``PyOS_string_to_double``, then the end of
the line or a NUL), which is what torch.load runs; Python's ``float()`` (pickletools' reader) accepts
underscores and whitespace and returns inf on overflow, which the C unpickler refuses."""

from __future__ import annotations

import math
import pickle

import pytest

from ckptool.errors import CorruptFileError
from ckptool.formats import unpickler

CASES = [b"1.5", b"1_0", b" 1.5", b"1.5 ", b"1e999", b"-1e999", b"inf", b"-Infinity", b"NaN", b"1.5\x00x", b".5",
         b"5.", b"1e5", b"0x10", b"+.5e-3", b"infinit", b"1e", b"\xa01", b"1.5\t"]  # fmt: skip


@pytest.mark.parametrize("text", CASES, ids=[c.decode("latin-1") for c in CASES])
def test_float_line_is_read_like_the_c_unpickler(text: bytes) -> None:
    data = b"F" + text + b"\n."
    try:
        want: float | None = pickle.loads(data)
    except (ValueError, OverflowError, pickle.UnpicklingError):
        want = None
    if want is None:
        with pytest.raises(CorruptFileError):
            unpickler.load(data)
        assert not unpickler.collect_globals(data, 0, len(data)).complete  # scan: pickle.load stops there too
    else:
        got = unpickler.load(data)[0]
        assert (math.isnan(got) and math.isnan(want)) or got == want


def test_python_float_would_differ() -> None:
    """The cases that make this file necessary: float() reads them, the C unpickler does not."""
    for text in (b"1_0", b" 1.5", b"1e999"):
        assert isinstance(float(text), float)
        with pytest.raises((ValueError, OverflowError)):
            pickle.loads(b"F" + text + b"\n.")
