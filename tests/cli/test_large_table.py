"""A table of more rows than a terminal table lays out quickly (Output.RICH_MAX_ROWS): on a terminal it is
aligned text with a bold header and a line that says why; piped, the plain table is unchanged."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from cli.clihelp import run_tty, write_safetensors

from ckptool.cli import _output
from ckptool.cli._output import Output


def rich_output() -> Output:
    o = Output(file=io.StringIO())
    o.mode = "rich"
    return o


def test_over_the_limit_a_terminal_gets_aligned_rows_in_one_block() -> None:
    n = _output.RICH_MAX_ROWS + 1
    rows = [[f"layer.{i}.weight", "[4]", "float32", "4", "16 B"] for i in range(n)]
    rows[7][0] = "bell\x07and\rcr.weight"  # rich removes these control codes from text: so does the fast path
    o = rich_output()
    o.table(["name", "shape", "dtype", "numel", "size"], rows, right=(3, 4))
    out = o.file.getvalue()
    lines = out.splitlines()
    assert "\x1b[1m" in lines[0] and "name" in lines[0]  # the header, bold
    assert "┏" not in out and "│" not in out  # not a rich table
    body = lines[1 : n + 1]
    assert len(body) == n and body[0].split() == ["layer.0.weight", "[4]", "float32", "4", "16", "B"]
    assert body[7].startswith("bellandcr.weight")
    assert len({len(ln) for ln in body if not ln.startswith("bell")}) <= 2  # aligned (names differ in length)
    assert f"{n:,} rows, written as aligned text" in lines[-1]


def test_at_the_limit_a_terminal_still_gets_a_rich_table() -> None:
    rows = [[f"w{i}", "[4]"] for i in range(_output.RICH_MAX_ROWS)]
    o = rich_output()
    o.table(["name", "shape"], rows)
    out = o.file.getvalue()
    assert "┏" in out and "aligned text" not in out


def test_plain_tables_are_the_aligned_text_they_always_were() -> None:
    o = Output(file=io.StringIO())
    o.mode = "plain"
    long = "x" * (_output.PLAIN_MAX_COL + 5)
    o.table(["name", "n"], [["a", "1"], ["bbb", "22"], [long, "3"]], right=(1,), footer=["done"])
    assert o.file.getvalue().splitlines() == ["name   n", "a      1", "bbb   22", f"{long}   3", "done"]


def test_inspect_of_many_tensors_on_a_terminal(tmp_path: Path) -> None:
    n = _output.RICH_MAX_ROWS + 50
    path = write_safetensors(tmp_path / "many.safetensors", {f"blk.{i}.w": np.ones(2, np.float32) for i in range(n)})
    r = run_tty("inspect", path)
    assert r.returncode == 0, r
    names = [ln.split()[0] for ln in r.text.splitlines() if ln.startswith("blk.")]
    assert sorted(names) == sorted(f"blk.{i}.w" for i in range(n))
    assert "rows, written as aligned text" in r.text and f"{n}" in r.text
    assert "\x1b[1m" in r.raw
