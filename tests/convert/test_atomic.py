"""ckptool.convert.atomic: atomic output (never a partial file, never a clobber without --force); the writers'
file-to-file copy (ckptool.convert.driver.copy_range) and a local Source's exact reads."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ckptool.convert import atomic as ckio
from ckptool.convert.driver import copy_range
from ckptool.errors import CorruptFileError, OutputExistsError, UsageError
from ckptool.sources import open_source


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_atomic_output_writes_and_renames(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    with ckio.atomic_output(out, force=False) as fh:
        assert Path(fh.name).parent == tmp_path and Path(fh.name).name.startswith(".out.bin.")
        fh.write(b"hello")
        assert not out.exists()  # nothing under the final name until the block ends
    assert out.read_bytes() == b"hello"
    assert listing(tmp_path) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like any new file, not mkstemp's 0600


def test_existing_target_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError) as ei, ckio.atomic_output(out, force=False) as fh:
        fh.write(b"new")
    assert ei.value.exit_code == 2 and "--force" in str(ei.value)
    assert out.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]
    with ckio.atomic_output(out, force=True) as fh:
        fh.write(b"new")
    assert out.read_bytes() == b"new"
    assert listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    out = tmp_path / "out.bin"
    with pytest.raises(type(exc)), ckio.atomic_output(out, force=False) as fh:
        fh.write(b"partial" * 1000)
        raise exc
    assert listing(tmp_path) == []


def test_exception_with_force_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), ckio.atomic_output(out, force=True) as fh:
        fh.write(b"partial")
        raise RuntimeError
    assert out.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]


def test_target_appearing_meanwhile_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    with pytest.raises(OutputExistsError), ckio.atomic_output(out, force=False) as fh:
        fh.write(b"mine")
        out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["out.bin"]


def test_refuses_the_input_file_even_with_force(tmp_path: Path) -> None:
    src = tmp_path / "in.pth"
    src.write_bytes(b"precious")
    link = tmp_path / "alias.pth"
    os.link(src, link)
    for target in (src, link):
        with (
            pytest.raises(UsageError, match="input file itself"),
            ckio.atomic_output(target, force=True, protect=[src]),
        ):
            pass
    assert src.read_bytes() == b"precious"


def test_bad_targets(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a folder"), ckio.atomic_output(tmp_path, force=True):
        pass
    with pytest.raises(UsageError, match="does not exist"), ckio.atomic_output(tmp_path / "no" / "x.bin", force=True):
        pass


def test_publish_without_hard_links_still_refuses_to_clobber(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(*a: object) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / "out.bin"
    with ckio.atomic_output(out, force=False) as fh:
        fh.write(b"a")
    assert out.read_bytes() == b"a"
    with pytest.raises(OutputExistsError), ckio.atomic_output(tmp_path / "late.bin", force=False) as fh:
        (tmp_path / "late.bin").write_bytes(b"theirs")
    assert (tmp_path / "late.bin").read_bytes() == b"theirs"
    assert listing(tmp_path) == ["late.bin", "out.bin"]


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from ckptool.convert.atomic import atomic_output
    with atomic_output(sys.argv[1], force=False) as fh:
        fh.write(b"x" * 100000)
        fh.flush()
        print("ready", flush=True)
        time.sleep(60)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_write_leaves_nothing(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out.bin"
    # SIGINT back to its default in the child: a shell starting the suite in the background (``cmd &``) hands its
    # children SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    assert len(listing(tmp_path)) == 1  # the temporary file exists while writing
    p.send_signal(sig)
    rc = p.wait(timeout=30)
    assert rc != 0
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM
    assert listing(tmp_path) == []


def test_atomic_outputs_group(tmp_path: Path) -> None:
    model, data = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    with ckio.atomic_outputs([data, model], force=False) as d:
        assert d.parent == tmp_path
        (d / "m.onnx.data").write_bytes(b"weights")
        (d / "m.onnx").write_bytes(b"graph -> m.onnx.data")
        assert not model.exists() and not data.exists()
    assert model.read_bytes().startswith(b"graph") and data.read_bytes() == b"weights"
    assert listing(tmp_path) == ["m.onnx", "m.onnx.data"]


def test_atomic_outputs_failures_leave_nothing(tmp_path: Path) -> None:
    model, data = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    with pytest.raises(RuntimeError), ckio.atomic_outputs([data, model], force=False) as d:
        (d / "m.onnx.data").write_bytes(b"weights")
        raise RuntimeError
    assert listing(tmp_path) == []
    with pytest.raises(Exception, match="was not written"), ckio.atomic_outputs([data, model], force=False) as d:
        (d / "m.onnx").write_bytes(b"graph")
    assert listing(tmp_path) == []
    model.write_bytes(b"old")
    with pytest.raises(OutputExistsError), ckio.atomic_outputs([data, model], force=False):
        pass
    assert listing(tmp_path) == ["m.onnx"]


def test_reader_reports_a_short_file(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(bytes(range(100)))
    buf = bytearray(10)
    with open_source(f) as r:
        r.read_into(90, memoryview(buf))
        assert bytes(buf) == bytes(range(90, 100))
        with pytest.raises(CorruptFileError, match="truncated"):
            r.read_into(95, memoryview(buf))


def test_copy_range(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(b"head" + payload)
    seen: list[int] = []
    out = tmp_path / "out.bin"
    with open_source(src) as r, open(out, "wb") as fh:
        ckio.write_all(fh.fileno(), b"XY")
        copy_range(r, 4, len(payload), fh.fileno(), bytearray(1 << 20), progress=seen.append)
    assert out.read_bytes() == b"XY" + payload
    assert sum(seen) == len(payload) and len(seen) == 4
