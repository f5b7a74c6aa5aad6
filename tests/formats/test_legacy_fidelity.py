"""Legacy files (torch.save before 1.6) read the way torch's ``_legacy_load`` reads them: the tar attempt
first, pickle protocols 0/1/2, and the ``little_endian`` flag that torch ignores. Every file is built here
and compared with ``torch.load`` (``weights_only=False`` in a child process: benign files only)."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hostile import legacy_pickles
from proc import run_script
from torch_oracle import ckptool_hex, torch_load

import ckptool


def _state() -> OrderedDict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32)
    return OrderedDict(
        w=torch.arange(6.0).reshape(2, 3),
        i=torch.tensor([1, -2, 3], dtype=torch.int64),
        h=torch.tensor([0.5, -1.25], dtype=torch.float16),
        b=torch.tensor([True, False]),
        view=base[4:10],  # a storage view: legacy files keep it as (root key, offset, size)
        t=base.reshape(4, 6).t(),  # a non-contiguous tensor on the same storage
    )


def _legacy(protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(_state(), buf, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    return buf.getvalue()


def _with_sys_info(info: dict, *, tar_checksum: bool) -> bytes:
    """A legacy file whose sys_info pickle starts with a 400-byte bytes value laid out so that the file's
    first 512 bytes are a tar header (type '0', all numeric fields empty); the checksum is right or not."""
    pk, data = legacy_pickles(_legacy())
    pad = b"\xaa" * 400
    p3 = pickle.dumps({"pad": pad, **info}, protocol=3)
    head = len(pk[0]) + len(pk[1])
    at = head + p3.index(pad)
    assert at <= 100 and at + len(pad) >= 345  # the pad covers every numeric field of the header
    blob = bytearray(pk[0] + pk[1] + p3)
    blob[at : at + len(pad)] = bytes(len(pad))
    blob[156:157] = b"0"
    blob[148:156] = b" " * 8
    chk = sum(blob[:512]) + (0 if tar_checksum else 1)
    blob[148:156] = b"%06o\x00 " % chk
    return bytes(blob) + pk[3] + pk[4] + data


SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("legacy")
    out: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        out[name] = d / f"{name}.pth"
        out[name].write_bytes(data)

    for proto in (0, 1, 2):
        put(f"protocol-{proto}", _legacy(proto))
    put("tar-header", _with_sys_info(SYS_INFO, tar_checksum=True))
    put("tar-checksum-off", _with_sys_info(SYS_INFO, tar_checksum=False))
    put("big-endian-flag", _with_sys_info({**SYS_INFO, "little_endian": False}, tar_checksum=False))
    return out


@pytest.fixture(scope="module")
def torch_view(files: dict[str, Path]) -> dict[str, dict]:
    return torch_load(list(files.values()), weights_only=False)


def test_the_tar_header_is_real(files: dict[str, Path]) -> None:
    with tarfile.open(files["tar-header"], "r:") as tar:
        assert tar.getnames()  # Python's tarfile (torch's first attempt) reads a member
    with pytest.raises(tarfile.TarError), tarfile.open(files["tar-checksum-off"], "r:"):
        pass


@pytest.mark.parametrize("case", ["protocol-1", "protocol-2", "tar-checksum-off", "big-endian-flag"])
def test_values_are_what_torch_load_returns(case: str, files: dict[str, Path], torch_view: dict[str, dict]) -> None:
    want = torch_view[str(files[case])]
    assert want["ok"], want
    with ckptool.open(files[case]) as ck:
        assert sorted(ck.names()) == sorted(want["tensors"])
        for name, t in want["tensors"].items():
            assert ck[name].dtype == t["dtype"] and list(ck[name].shape) == t["shape"], name
            assert ckptool_hex(ck, name) == t["hex"], name


def test_little_endian_false_is_ignored_like_torch(files: dict[str, Path]) -> None:
    with ckptool.open(files["big-endian-flag"]) as ck:
        assert ck.byteorder == "little"
        assert any("little_endian: False" in n and "torch ignores" in n for n in ck.notes)


@pytest.mark.parametrize("case", ["tar-header", "protocol-0"])
def test_refused_where_torch_fails(case: str, files: dict[str, Path], torch_view: dict[str, dict]) -> None:
    assert not torch_view[str(files[case])]["ok"]
    r = run_script("inspect", files[case])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(files[case]) in lines[0] and "torch" in lines[0]


def test_tar_header_message_and_weights_only(files: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError, match=r"legacy \.tar format"):
        torch.load(files["tar-header"], weights_only=True)
    r = run_script("inspect", files["tar-header"])
    assert "valid tar header" in r.stderr and "storages" in r.stderr


def test_export_refuses_the_tar_header_file(files: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "o.safetensors"
    r = cli("export", files["tar-header"], "--safetensors", out)
    assert r.exit_code == 2 and not out.exists() and "valid tar header" in r.output
