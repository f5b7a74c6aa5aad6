"""safetensors: one set of rules (formats.safetensors.findings); the reader raises the first, scan lists all."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ckptool import open_checkpoint
from ckptool.errors import CorruptFileError
from ckptool.formats import safetensors as st
from ckptool.scan import scan


def write(path: Path, header: bytes | dict, data: bytes, n: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


def ent(begin: int, end: int, shape: list[int] | None = None, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape or [(end - begin) // 4], "data_offsets": [begin, end]}


DUP = (
    b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
    + b'"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
)
BROKEN = {
    "gap": ({"a": ent(0, 16), "b": ent(20, 36)}, b"\0" * 36, None),
    "overlap": ({"a": ent(0, 16), "b": ent(8, 24)}, b"\0" * 24, None),
    "size": ({"a": ent(0, 8, [4])}, b"\0" * 8, None),
    "dtype": ({"a": ent(0, 16, dtype="Q7")}, b"\0" * 16, None),
    "uncovered": ({"a": ent(0, 16)}, b"\0" * 20, None),
    "metadata": ({"__metadata__": {"a": 1}, "a": ent(0, 16)}, b"\0" * 16, None),
    "too_long": ({"a": ent(0, 16)}, b"\0" * 16, 100_000_001),
    "overflows": ({"a": ent(0, 16)}, b"\0" * 16, 10_000),
    "not_json": (b"{not json", b"\0" * 16, None),
    "duplicate": (
        b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
        b"\0" * 16,
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_reader_raises_the_first_finding_that_scan_lists(tmp_path: Path, case: str) -> None:
    header, data, n = BROKEN[case]
    path = write(tmp_path / f"{case}.safetensors", header, data, n)
    report = scan(path)
    assert report.format == "safetensors"
    found = [f for f in report.findings if f.kind == st.KIND]
    assert found, report.findings
    with pytest.raises(CorruptFileError) as e:
        open_checkpoint(path)
    assert e.value.message == f"safetensors {found[0].message}"


def test_every_rule_is_listed_at_once(tmp_path: Path) -> None:
    header = {"a": ent(0, 16), "b": ent(20, 28, [3]), "c": ent(28, 36, dtype="nope")}
    got = [m for _k, m, _w in st.findings(write(tmp_path / "x.safetensors", header, b"\0" * 36).read_bytes())]
    assert any("'b'" in m and "needs 12" in m for m in got)
    assert any("'b'" in m and "gap of 4" in m for m in got)
    assert any("'c'" in m and "unknown dtype" in m for m in got)


def test_a_valid_file_has_no_findings_and_reads(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "ok.safetensors"
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(3, dtype=np.int64)}
    save_file(arrays, str(path), metadata={"k": "v"})
    assert list(st.findings(path.read_bytes())) == []
    with open_checkpoint(path) as ck:
        assert ck.metadata["__metadata__"] == {"k": "v"}
        for name, want in arrays.items():
            np.testing.assert_array_equal(ck.numpy(name), want)


def test_detection_is_the_same_for_reader_and_scan(tmp_path: Path) -> None:
    """A header that lies about its length is still recognised (and reported) as safetensors, by both."""
    from ckptool.formats.sniff import detect

    path = write(tmp_path / "lies.safetensors", {"a": ent(0, 16)}, b"\0" * 16, n=1 << 40)
    head = path.read_bytes()[:4096]
    assert detect(head, path.stat().st_size) == "safetensors"
    assert scan(path).format == "safetensors"
    with pytest.raises(CorruptFileError, match="exceeds the 100 MB limit"):
        open_checkpoint(path)
    assert detect(b"\xff" * 8 + b"{" + b"\xff" * 100, 109) is None  # a huge length and no header after the brace
