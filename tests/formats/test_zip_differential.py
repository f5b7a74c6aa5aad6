"""The zip differential harness: ckptool's view of an archive against ``torch._C.PyTorchFileReader``'s.

A corpus of generated archives (hypothesis strategies that mutate the zip structures of a real ``torch.save``
file: end-record and directory offsets and sizes, comments holding end-record signatures, zip64 records,
duplicate, case-variant and NUL names, local-vs-central mismatches, CRC flips, prefix and trailing data, and
raw byte flips) goes through both readers. For each archive the two must agree on: accept or refuse, the
records listed, each record's data offset and bytes, and so ``data.pkl``. Every disagreement fails.

ckptool's reading commands refuse more than torch on purpose (``[parser-differential]``, CRCs): that policy sits
on top of this view and is tested in test_zip_miniz.py; here the view itself must be torch's, exactly.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from zipcraft import Layout, Member, build, members_of

from ckptool.formats import _zipread as zr
from ckptool.sources import MemorySource

SKIP_BIG = 64 << 20  # records torch would allocate more than this for: compared as "big" on both sides


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> list[Member]:
    path = tmp_path_factory.mktemp("zipdiff") / "m.pth"
    torch.save({"w": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, dtype=torch.int64)}, path)
    return members_of(path)


# -- the two views ----------------------------------------------------------------------------------------
def torch_side(path: Path) -> tuple:
    try:
        r = torch._C.PyTorchFileReader(str(path))
    except Exception:
        return ("refuse",)
    try:
        names = r.get_all_records()
    except Exception:
        return ("refuse-records",)
    out = {}
    for name in names:
        try:
            off: object = r.get_record_offset(name)
        except Exception:
            off = "err"
        try:
            if r.get_record_size(name) > SKIP_BIG:
                data: object = "big"
            else:
                data = bytes(r.get_record(name))
        except Exception:
            data = "err"
        out[name] = (off, data)
    return ("ok", names, out)


def ours_side(data: bytes) -> tuple:
    src = MemorySource("mem", data)
    try:
        ar = zr.open_archive(src, max_entries=1 << 32)
        zr.torch_open_checks(ar, src)
    except zr.ZipError as e:
        return ("undefined",) if e.kind == "unspecified" else ("refuse",)
    try:
        raw = zr.torch_view(ar)["records"]
        names = [n.decode("utf-8") for n in raw]
    except (zr.ZipError, UnicodeDecodeError):
        return ("refuse-records",)
    out = {}
    for name in names:
        e = ar.record(name)
        assert e is not None, name
        try:
            off: object = zr.torch_record_offset(ar, e)
        except zr.ZipError:
            off = "err"
        if e.size > SKIP_BIG:
            body: object = "big"
        else:
            try:
                body = zr.torch_record_bytes(ar, src, e)
            except zr.ZipError:
                body = "err"
            except zr.Unspecified:
                body = "unspecified"
        out[name] = (off, body)
    return ("ok", names, out)


def same(t: tuple, o: tuple) -> bool:
    if o[0] == "undefined":  # torch parses a buffer it never filled: it opens the file or not, run to run
        return True
    if t[0] != o[0] or t[0] != "ok":
        return t[0] == o[0]
    if t[1] != o[1]:
        return False
    for name, (toff, tdata) in t[2].items():
        ooff, odata = o[2][name]
        if toff != ooff:
            return False
        if (odata == b"" or odata == "unspecified") and tdata != "err":  # torch returns uninitialised memory
            continue
        if tdata != odata:
            return False
    return True


# -- mutations of the zip structures -------------------------------------------------------------------------
def case_variant(rng: random.Random, name: bytes) -> bytes:
    out = bytes(c ^ 0x20 if 97 <= c <= 122 and rng.random() < 0.5 else c for c in name)
    return out if out != name else name.upper()


def mutate(members: list[Member], lay: Layout, op: str, rng: random.Random) -> tuple[list[Member], Layout]:
    ms = list(members)
    k = rng.randrange(len(ms)) if ms else 0
    evil = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R."
    if not ms and op not in ("trailing", "comment", "prefix"):
        return ms, lay
    m = ms[k] if ms else None
    if op == "dup":
        ms.insert(rng.randrange(len(ms) + 1), replace(m, data=evil))
    elif op == "case-dup":
        ms.insert(rng.randrange(len(ms) + 1), replace(m, name=case_variant(rng, m.name), data=evil))
    elif op == "case-rename":
        ms[k] = replace(m, name=case_variant(rng, m.name))
    elif op == "nul":
        ms.insert(rng.randrange(len(ms) + 1), replace(m, name=m.name + b"\x00" + bytes([rng.randrange(32, 127)])))
    elif op == "local-name":
        ms[k] = replace(m, local_name=ms[rng.randrange(len(ms))].name + rng.choice([b"", b"x"]))
    elif op == "local-sizes":
        ms[k] = replace(m, local_fields=(rng.getrandbits(32), rng.randrange(0, 200), rng.randrange(0, 200)))
    elif op == "local-method":
        ms[k] = replace(m, local_method=rng.choice([0, 8, 12]))
    elif op == "crc":
        ms[k] = replace(m, crc=rng.getrandbits(32))
    elif op == "deflate":
        ms[k] = replace(m, method=8, size=rng.choice([None, None, len(m.data) + rng.randrange(-2, 3)]))
    elif op == "stored-size":
        ms[k] = replace(m, size=len(m.data) + rng.randrange(1, 4), time=rng.choice([0, 0x6000]))
    elif op == "header-offset":
        ms[k] = replace(m, header_offset=rng.randrange(0, 400))
    elif op == "dir-attr":
        ms[k] = replace(m, external_attr=0x10)
    elif op == "drop":
        del ms[k]
    elif op == "byteorder":
        ms = [replace(x, data=rng.choice([b"big", b"LITTLE", b"little\n"])) if x.name.endswith(b"byteorder") else x for x in ms]  # fmt: skip
    elif op == "version":
        ms = [replace(x, data=rng.choice([b"3", b"0", b"11", b" 2", b"abc", b""])) if x.name.endswith(b"version") else x for x in ms]  # fmt: skip
    elif op == "outside":
        ms.insert(rng.randrange(1, len(ms) + 1), Member(b"zzz/data.pkl", evil))
    elif op == "flags":
        ms[k] = replace(m, flags=rng.choice([0x1, 0x8, 0x20, 0x800, 0x2000]))
    elif op == "method":
        ms[k] = replace(m, method=rng.choice([1, 12, 14]))
    elif op == "zip64-entry":
        ms[k] = replace(m, zip64=True)
    elif op == "zip64":
        lay = replace(lay, zip64=True, zip64_32bit_sentinels=rng.random() < 0.7)
    elif op == "trailing":
        lay = replace(lay, trailing=rng.choice([b"PK\x05\x06", b"\x00" * rng.randrange(1, 40), rng.randbytes(20), b"PK\x05\x06" + rng.randbytes(18)]))  # fmt: skip
    elif op == "comment":
        lay = replace(lay, comment=rng.choice([b"hi", b"PK\x05\x06", rng.randbytes(30)]), fake_eocd_in_comment=rng.random() < 0.4)  # fmt: skip
    elif op == "comment-len":
        lay = replace(lay, comment_len_delta=rng.randrange(-3, 4))
    elif op == "cd-size":
        lay = replace(lay, cd_size_delta=rng.choice([rng.randrange(-60, 0), rng.randrange(1, 30)]))
    elif op == "cd-offset":
        lay = replace(lay, cd_offset_delta=rng.randrange(-50, 50))
    elif op == "count":
        lay = replace(lay, count_delta=rng.choice([-1, 1, 2]))
    elif op == "gap":
        lay = replace(lay, gap_after_cd=rng.randbytes(rng.randrange(1, 30)))
    elif op == "prefix":
        lay = replace(lay, prefix=rng.choice([b"\x00" * 100, b"PK\x03\x04" + rng.randbytes(60), rng.randbytes(10)]))
    return ms, lay


OPS = [
    "dup", "case-dup", "case-rename", "nul", "local-name", "local-sizes", "local-method", "crc", "deflate",
    "stored-size", "header-offset", "dir-attr", "drop", "byteorder", "version", "outside", "flags", "method",
    "zip64-entry", "zip64", "trailing", "comment", "comment-len", "cd-size", "cd-offset", "count", "gap", "prefix",
]  # fmt: skip
POST = ["none", "none", "flip", "prepend-unadjusted", "truncate"]


def make(base: list[Member], ops: list[str], post: str, rnd: int) -> bytes:
    rng = random.Random(rnd)
    ms, lay = list(base), Layout()
    for op in ops:
        ms, lay = mutate(ms, lay, op, rng)
    data = build(ms, lay)
    if post == "flip" and data:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            # mostly in the structures: the directory and the end records at the tail
            i = rng.randrange(max(0, len(b) - 600), len(b)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        data = bytes(b)
    elif post == "prepend-unadjusted":
        data = rng.randbytes(rng.randrange(1, 80)) + data  # offsets now count from the wrong place
    elif post == "truncate":
        data = data[: max(0, len(data) - rng.randrange(1, 40))]
    return data


def check(tmp: Path, data: bytes, label: str) -> None:
    path = tmp / "a.pth"
    path.write_bytes(data)
    t, o = torch_side(path), ours_side(data)
    assert same(t, o), f"{label}: torch {summary(t)} vs ckptool {summary(o)}"


def summary(v: tuple) -> str:
    if v[0] != "ok":
        return v[0]
    return f"ok {v[1]} " + ", ".join(f"{n}@{off}:{d if isinstance(d, str) else len(d)}" for n, (off, d) in v[2].items())


# -- the fixed corpus: every op alone and in pairs, with each post-processing (deterministic) ------------------
FIXED = [([op], post, i) for i, op in enumerate(OPS) for post in POST] + [
    ([a, b], "none", 1000 + i) for i, (a, b) in enumerate(zip(OPS, OPS[7:] + OPS[:7], strict=True))
]


def test_the_fixed_corpus_agrees_with_torch(base, tmp_path: Path) -> None:
    assert len(FIXED) >= 150
    for ops, post, rnd in FIXED:
        check(tmp_path, make(base, ops, post, rnd), f"{ops} {post} seed={rnd}")


@seed(14)
@settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=4),
    post=st.sampled_from(POST),
    rnd=st.integers(0, 2**32),
)
def test_generated_archives_agree_with_torch(base, tmp_path: Path, ops: list[str], post: str, rnd: int) -> None:
    check(tmp_path, make(base, ops, post, rnd), f"{ops} {post} seed={rnd}")


def test_the_harness_can_fail(base, tmp_path: Path) -> None:
    """The comparison sees a wrong offset and a wrong record."""
    data = build(base)
    t = torch_side(_write(tmp_path, data))
    o = ours_side(data)
    assert same(t, o)
    name = t[1][0]
    off, body = o[2][name]
    assert not same(t, ("ok", o[1], {**o[2], name: (off + 1, body)}))
    assert not same(t, ("ok", o[1], {**o[2], name: (off, b"x")}))
    assert not same(t, ("refuse",))


def _write(tmp: Path, data: bytes) -> Path:
    p = tmp / "w.pth"
    p.write_bytes(data)
    return p


def test_end_record_search_window_matches_miniz(base, tmp_path: Path) -> None:
    """miniz searches 4096-byte blocks backwards and stops once 65,557 bytes are behind it, or when the next
    block would start before byte 0 (small files: the last 4096 bytes only). Both sides of each edge."""
    big = [*base, Member(b"m/big", b"\x01" * 200_000)]
    for members in (base, big):
        for n in (4074, 4075, 10_000, 61_417, 65_535, 69_000, 69_700):
            check(tmp_path, build(members, Layout(trailing=b"\x00" * n)), f"{len(members)} members, {n} trailing bytes")
