"""Files past 4 GB: a ~4.5 GB torch zip (zip64) and a ~4.5 GB safetensors file, through every byte path.

Built in a temporary folder without holding 4.5 GB in memory (torch.save of a tensor mapped from a file; the
safetensors file written by hand), then inspect, scan, diff and export run as the installed script, each with
its peak RSS measured (memory must stay flat: far below the file size) and the outputs hashed in chunks.
Disk: about 14 GB at the peak, every file removed as soon as it is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

BIG = (4 << 30) + (384 << 20)  # 4.375 GiB of uint8: one record past 4 GiB, and offsets past it
BLOCK = 64 << 20
RSS_LIMIT_MB = 500
SCRIPT = [sys.executable, "-m", "ckptool"]


def _blocks(n: int) -> Iterator[np.ndarray]:
    """The big tensor's bytes, deterministic and not periodic within a block: block i is a fixed random block
    xor i."""
    base = np.random.default_rng(0).integers(0, 256, BLOCK, dtype=np.uint8)
    done = 0
    i = 0
    while done < n:
        k = min(BLOCK, n - done)
        yield base[:k] ^ np.uint8(i & 0xFF)
        done += k
        i += 1


def _small() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "head.weight": torch.randn(8, 16, generator=g),
        "head.bias": torch.randn(8, generator=g).to(torch.bfloat16),
        "step": torch.tensor([7], dtype=torch.int64),
    }


def _digest_of(chunks: Iterator[bytes | memoryview | np.ndarray]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _file_range(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length:
            b = f.read(min(BLOCK, length))
            if not b:
                raise AssertionError(f"{path} is short")
            length -= len(b)
            yield b


# A small wrapper execs ckptool and reports that child's own peak RSS. (ru_maxrss of a process forked straight
# from pytest would include pytest's own high-water mark at fork time, which building the files raised.)
_WRAPPER = r"""
import json, os, resource, subprocess, sys
with open(sys.argv[1], "w") as fh:
    r = subprocess.run(sys.argv[2:], stdout=fh, stderr=subprocess.STDOUT)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": r.returncode, "rss_kib": ru.ru_maxrss}))
"""


def run(*args: str) -> tuple[int, str, float]:
    """(exit code, output, peak RSS in MB) of one ckptool run, measured on that child alone."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"ckptool-zip64-{os.getpid()}.out"
    r = subprocess.run([sys.executable, "-c", _WRAPPER, str(out), *SCRIPT, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    text = out.read_text()
    out.unlink()
    return rec["code"], text, rec["rss_kib"] / 1024


def _safetensors_digests(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {
        k: _digest_of(_file_range(path, 8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0]))
        for k, v in header.items()
    }


def _zip_digests(path: Path) -> dict[str, str]:
    """sha256 of each storage record of a torch zip, streamed through zipfile (which reads zip64)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename:
                with z.open(info) as fh:
                    out[info.filename.rsplit("/", 1)[1]] = _digest_of(iter(lambda: fh.read(BLOCK), b""))
    return out


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("zip64")
    try:
        src = root / "src.bin"
        with open(src, "wb") as f:
            for b in _blocks(BIG):
                f.write(b.tobytes())
        big_sha = _digest_of(_blocks(BIG))
        small = _small()
        pth = root / "huge.pth"
        # torch.save of a tensor mapped from the file, in a child (this process never maps the 4.4 GB)
        code = (
            "import sys, torch; sys.path.insert(0, sys.argv[3]); from test_zip64 import BIG, _small; "
            "torch.save({'big': torch.from_file(sys.argv[1], shared=False, size=BIG, dtype=torch.uint8), "
            "**_small()}, sys.argv[2])"
        )
        subprocess.run([sys.executable, "-c", code, str(src), str(pth), str(Path(__file__).parent)], check=True)
        src.unlink()
        # safetensors by hand: the header, then the big tensor streamed, then the small ones
        entries, off = {}, 0
        blobs = []
        for name, t in [("big", None), *small.items()]:
            if t is None:
                dtype, shape, nbytes = "U8", [BIG], BIG
            else:
                raw = t.contiguous().view(torch.uint8).numpy().tobytes()
                dtype, shape, nbytes = (
                    {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}[t.dtype],
                    list(t.shape),
                    len(raw),
                )
                blobs.append(raw)
            entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + nbytes]}
            off += nbytes
        head = json.dumps(entries).encode()
        head += b" " * (-len(head) % 8)
        st = root / "huge.safetensors"
        with open(st, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for b in _blocks(BIG):
                f.write(b.tobytes())
            for raw in blobs:
                f.write(raw)
        small_sha = {
            k: _digest_of(iter([v.contiguous().view(torch.uint8).numpy().tobytes()])) for k, v in small.items()
        }
        yield {"root": root, "pth": pth, "st": st, "sha": {"big": big_sha, **small_sha}}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_torch_zip_is_zip64(huge: dict) -> None:
    pth = huge["pth"]
    assert pth.stat().st_size > 4 << 30
    with zipfile.ZipFile(pth) as z:
        big = next(i for i in z.infolist() if i.file_size == BIG)
        assert big.file_size > 0xFFFFFFFF  # needs zip64 sizes
        assert max(i.header_offset for i in z.infolist()) > 0xFFFFFFFF  # and zip64 offsets


@pytest.mark.parametrize("which", ["pth", "st"])
def test_inspect_and_scan_stay_flat(huge: dict, which: str) -> None:
    path = str(huge[which])
    code, out, rss = run("inspect", "--json", path)
    assert code == 0, out
    doc = json.loads(out)
    tensors = {t["name"]: t for t in doc["tensors"]}
    assert tensors["big"]["nbytes"] == BIG and tensors["big"]["dtype"] == "uint8"
    assert set(tensors) == {"big", "head.weight", "head.bias", "step"}
    assert rss < RSS_LIMIT_MB, f"inspect peaked at {rss:.0f} MB"
    code, out, rss = run("scan", path)  # values included: every byte is read (NaN/Inf, CRCs)
    assert code == 0, out
    assert rss < RSS_LIMIT_MB, f"scan peaked at {rss:.0f} MB"


def test_diff_reads_every_byte_of_both(huge: dict) -> None:
    code, out, rss = run("diff", str(huge["pth"]), str(huge["st"]), "--json")
    assert code == 0, out
    assert json.loads(out)["identical"] is True
    assert rss < RSS_LIMIT_MB, f"diff peaked at {rss:.0f} MB"


@pytest.mark.parametrize(
    ("source", "flag", "suffix"), [("pth", "--safetensors", ".safetensors"), ("st", "--pth", ".pth")]
)
def test_export_is_bit_exact_and_flat(huge: dict, source: str, flag: str, suffix: str) -> None:
    out = huge["root"] / f"out-{source}{suffix}"
    try:
        code, text, rss = run("export", str(huge[source]), flag, str(out))
        assert code == 0, text
        assert rss < RSS_LIMIT_MB, f"export peaked at {rss:.0f} MB"
        if suffix == ".safetensors":
            assert _safetensors_digests(out) == huge["sha"]
        else:
            got = _zip_digests(out)
            assert sorted(got.values()) == sorted(huge["sha"].values())
    finally:
        out.unlink(missing_ok=True)
