"""The CLI's one JSON encoder: the C-encoder pass writes exactly what the finite_json walk writes, strict (no
NaN / Infinity tokens) whatever the result holds."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli.clihelp import strict_json

from ckptool.cli._output import Output, encode_json, finite_json


class Rec:
    def __init__(self, v: object) -> None:
        self.v = v

    def to_dict(self) -> dict:
        return {"v": self.v, "kind": "rec"}


CASES = {
    "plain": {"a": 1, "b": "x", "c": [1, 2.5, None, True], "d": {"e": []}},
    "non-ascii": {"name": "gewicht.ä", "emoji": "\u2603"},
    "inf deep": {"tensors": [{"name": "q", "quantization": {"scale": math.inf, "zero_point": 0}}]},
    "nan and -inf": [math.nan, -math.inf, 1.0],
    "numpy scalars": {"f": np.float32(1.5), "i": np.int64(3), "big": np.float64(2.0), "inf": np.float32(np.inf)},
    "numpy nan (a float subclass)": {"x": np.float64("nan")},
    "to_dict objects": [Rec(1), Rec(math.nan), Rec(Rec("x"))],
    "tuples and sets": {"t": (1, 2), "s": {3}, "f": frozenset({"a"})},
    "paths": {"p": Path("/tmp/x y"), "other": object.__new__(type("Opaque", (), {"__str__": lambda s: "opaque"}))},
    "int keys": {1: "a", 2: {3: "b"}},
    "tuple keys (the walk's str())": {(1, 2): "a"},
    "a set holding inf": {"s": {math.inf}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_pass_writes_what_the_walk_writes(case: str) -> None:
    obj = CASES[case]
    text = encode_json(obj)
    assert text == json.dumps(finite_json(obj), ensure_ascii=False, allow_nan=False)
    strict_json(text)


def test_non_finite_floats_become_strings_wherever_they_are() -> None:
    got = strict_json(encode_json(CASES["inf deep"]))
    assert got == {"tensors": [{"name": "q", "quantization": {"scale": "inf", "zero_point": 0}}]}
    assert strict_json(encode_json(CASES["nan and -inf"])) == ["nan", "-inf", 1.0]


def test_a_large_result_is_one_strict_line() -> None:
    tensors = [{"name": f"t{i}", "shape": [4], "numel": 4, "nbytes": 16} for i in range(50_000)]
    tensors[-1]["scale"] = math.nan  # one non-finite value at the very end: the whole result takes the walk
    out = Output(json_mode=True, file=io.StringIO())
    out.json({"tensors": tensors})
    text = out.file.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    got = strict_json(text)
    assert isinstance(got, dict) and len(got["tensors"]) == 50_000 and got["tensors"][-1]["scale"] == "nan"
