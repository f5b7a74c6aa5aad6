"""RemoteSource's extent cache, prefetch merging, runs of tensor bytes and reopening, over an in-process fake remote
(the HTTP side is tested against nginx and the hostile server)."""

from __future__ import annotations

import os

import pytest

from ckptool.errors import CorruptFileError, UsageError
from ckptool.sources import remote
from ckptool.sources.remote import BLOCK, HEAD_BLOCK, RemoteSource


class Fake:
    """A remote file in memory that records every request (start, end) it is asked."""

    name = "https://example.invalid/f.bin"
    multi_ok = True

    def __init__(self, data: bytes):
        self.data = data
        self.calls: list[list[tuple[int, int]]] = []

    def open(self, head: int) -> tuple[int, bytes]:
        self.calls.append([(0, head)])
        return len(self.data), self.data[:head]

    def fetch(self, start: int, end: int) -> list[tuple[int, bytes]]:
        self.calls.append([(start, end)])
        return [(start, self.data[start:end])]

    def fetch_many(self, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        self.calls.append(list(spans))
        return [(s, self.data[s:e]) for s, e in spans]

    def close(self) -> None:
        pass


@pytest.fixture
def data() -> bytes:
    return os.urandom(3 << 20)


def test_reads_are_exact_and_cached(data: bytes) -> None:
    f = Fake(data)
    src = RemoteSource(f)
    assert src.size == len(data)
    assert src.read(10, 100) == data[10:110]  # in the head block: no request
    assert len(f.calls) == 1
    assert src.read(HEAD_BLOCK + 5, 10) == data[HEAD_BLOCK + 5 : HEAD_BLOCK + 15]
    assert f.calls[-1] == [(HEAD_BLOCK, HEAD_BLOCK + BLOCK)]  # one block around it
    assert src.read(HEAD_BLOCK - 3, 10) == data[HEAD_BLOCK - 3 : HEAD_BLOCK + 7]  # across two extents
    assert len(f.calls) == 2
    with pytest.raises(CorruptFileError):
        src.read(len(data) - 5, 10)


def test_prefetch_is_one_round_trip_and_merges_near_ranges(data: bytes) -> None:
    f = Fake(data)
    src = RemoteSource(f)
    spans = [(1 << 20, 40), (1 << 20 | 100, 40), (2 << 20, 40), (10, 40)]  # the last is cached already
    src.prefetch(spans)
    assert f.calls[-1] == [(1 << 20, (1 << 20) + 140), (2 << 20, (2 << 20) + 40)]
    n = len(f.calls)
    for o, k in spans:
        assert src.read(o, k) == data[o : o + k]
    assert len(f.calls) == n


def test_value_reads_go_in_runs_that_grow_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "STREAM_FIRST", 1 << 20)
    monkeypatch.setattr(remote, "STREAM_WINDOW", 4 << 20)
    monkeypatch.setattr(remote, "RUN_MEMORY", 8 << 20)
    data = os.urandom(24 << 20)
    f = Fake(data)
    src = RemoteSource(f)
    chunk = memoryview(bytearray(256 << 10))
    pos = 1 << 20
    for _ in range(40):  # 10 MB read in file order, 256 KB at a time (a storage's chunks)
        src.read_into(pos, chunk)
        assert bytes(chunk) == data[pos : pos + len(chunk)]
        pos += len(chunk) + 100  # a zip local header between storages: skipped, not a new run
    runs = f.calls[1:]
    assert [e - s for ((s, e),) in runs] == [1 << 20, 2 << 20, 4 << 20, 4 << 20]  # doubling, then capped
    assert src._cached == HEAD_BLOCK  # tensor bytes never enter the header cache
    assert src._held[0] <= 8 << 20  # the kept runs stay bounded (the oldest dropped)
    n = len(f.calls)
    back = memoryview(bytearray(100 << 10))
    src.read_into(pos - (1 << 20), back)  # a jump back into a kept run: no request
    assert bytes(back) == data[pos - (1 << 20) : pos - (1 << 20) + len(back)] and len(f.calls) == n
    src.read_into(20 << 20, back)  # a jump elsewhere: a new run at the first window
    assert f.calls[-1] == [(20 << 20, 21 << 20)]
    small = src.read((20 << 20) + (300 << 10), 10)  # a small read inside it: served from it
    assert small == data[(20 << 20) + (300 << 10) : (20 << 20) + (300 << 10) + 10] and len(f.calls) == n + 1


def test_a_large_header_read_costs_what_it_asks(data: bytes) -> None:
    """read() and the buffer's reader (a pickle, a zip directory) read what they ask in whole blocks, never a
    2 MB run: a 100 KB data.pkl outside the first 64 KB costs 128 KB."""
    f = Fake(data)
    src = RemoteSource(f)
    assert src.read(1 << 20, 100 << 10) == data[1 << 20 : (1 << 20) + (100 << 10)]
    assert f.calls[-1] == [(1 << 20, (1 << 20) + (128 << 10))]
    r = src.buffer().reader(2 << 20)
    assert r.read(40 << 10) == data[2 << 20 : (2 << 20) + (40 << 10)]
    assert f.calls[-1] == [(2 << 20, (2 << 20) + (64 << 10))]
    chunk = memoryview(bytearray(40 << 10))
    src.read_into(1 << 21 | 1 << 19, chunk)  # tensor bytes just past it: a run (4 MB: it follows on), to the end
    assert f.calls[-1] == [((1 << 21) + (1 << 19), len(data))]


def test_a_run_stops_where_a_kept_run_starts(data: bytes) -> None:
    f = Fake(data)
    src = RemoteSource(f)
    view = memoryview(bytearray(64 << 10))
    src.read_into(2 << 20, view)
    src.read_into(1 << 20, view)  # before the first run: this run ends where that one starts
    assert f.calls[-1] == [(1 << 20, 2 << 20)]
    big = memoryview(bytearray(1 << 20))
    src.read_into((1 << 20) + (512 << 10), big)  # across both: no request
    assert bytes(big) == data[(1 << 20) + (512 << 10) : (2 << 20) + (512 << 10)] and len(f.calls) == 3


def test_buffer_slices_like_a_map(data: bytes) -> None:
    src = RemoteSource(Fake(data))
    buf = src.buffer()
    assert len(buf) == len(data)
    assert buf[5:9] == data[5:9] and buf[7] == data[7] and buf[-1] == data[-1]
    assert buf[len(data) - 3 :] == data[-3:]
    needle = data[2_000_000:2_000_008]
    assert buf.find(needle, 1_990_000) == data.find(needle, 1_990_000)
    r = buf.reader(100)
    assert r.read(5) == data[100:105] and r.tell() == 105
    r.seek(len(data) - 2)
    assert r.read(1 << 62) == data[-2:]  # a huge claimed length allocates only what is there


def test_the_same_url_twice_shares_its_bytes(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    f = Fake(data)
    monkeypatch.setattr(remote, "open_remote_file", lambda url: f)
    remote.forget()
    a = remote.open_url("https://example.invalid/f.bin")
    a.read(2 << 20, 10)
    n = len(f.calls)
    b = remote.open_url("https://example.invalid/f.bin")
    assert b.read(2 << 20, 10) == data[2 << 20 : (2 << 20) + 10]
    assert b.size == len(data) and len(f.calls) == n
    remote.forget()


def test_hf_urls() -> None:
    p = remote.parse_hf("hf://org/model@v1.0/sub/pytorch_model.bin")
    assert (p.kind, p.repo, p.revision, p.path) == ("", "org/model", "v1.0", "sub/pytorch_model.bin")
    assert p.url("http://h") == "http://h/org/model/resolve/v1.0/sub/pytorch_model.bin"
    assert str(p) == "hf://org/model@v1.0/sub/pytorch_model.bin"
    q = remote.parse_hf("hf://datasets/org/data/x.safetensors")
    assert q.url("http://h") == "http://h/datasets/org/data/resolve/main/x.safetensors"
    assert remote.parse_hf("hf://gpt2@main/model.safetensors").repo == "gpt2"
    assert remote.parse_hf("hf://org/model").path == ""
    with pytest.raises(UsageError):
        remote.parse_hf("hf://org/model/../../etc/passwd")


def test_relative_locations_stay_under_the_url() -> None:
    assert remote.resolve_relative("https://h/a/m.onnx", "w.bin") == "https://h/a/w.bin"
    assert remote.resolve_relative("https://h/a/m.onnx?sig=1", "d/w 1.bin") == "https://h/a/d/w%201.bin?sig=1"
    assert remote.resolve_relative("hf://org/m@v1/onnx/m.onnx", "w.bin") == "hf://org/m@v1/onnx/w.bin"
    for bad in ("../w.bin", "d/../../w.bin", "/etc/passwd", "https://evil/w.bin", "..\\w.bin"):
        with pytest.raises(UsageError):
            remote.resolve_relative("https://h/a/m.onnx", bad)


def test_is_url() -> None:
    assert remote.is_url("https://h/x") and remote.is_url("hf://o/r") and remote.is_url("s3://b/k")
    assert not remote.is_url("file:///x") and not remote.is_url("/tmp/x") and not remote.is_url("C:\\x")
