"""torch's tar checkpoints (torch.save before 0.1.10): ``torch.load`` still tries this format first on every
non-zip file and, with ``weights_only=False``, unpickles all three of its members. ckptool reads them in
place (inspect / export) and ``scan`` walks every pickle torch would run. The files are built by hand the
way torch 0.1.x wrote them (tests/factory.py ``tar_members``), and the benign ones are checked against
``torch.load(weights_only=False)`` in a child process."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from factory import tar_members, write_tar
from proc import run_script
from torch_oracle import ckptool_hex, torch_load

import ckptool
from ckptool.errors import CorruptFileError

PAYLOAD = b"cos\nsystem\n(S'touch /nonexistent/canary'\ntR."  # never loaded by torch in these tests


def _state() -> OrderedDict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32)
    return OrderedDict(
        w=torch.arange(6.0).reshape(2, 3),
        i=torch.tensor([1, -2, 3], dtype=torch.int64),
        h=torch.tensor([0.5, -1.25], dtype=torch.float16),
        bf=torch.tensor([1.5, -3.0], dtype=torch.bfloat16),
        b=torch.tensor([True, False]),
        view=base[4:10],  # saved on a storage view (root, offset, size), as 0.1.x saved storage slices
        t=base.reshape(4, 6).t(),  # a non-contiguous tensor on the root storage
        tail=base[20:],  # a storage offset on the root
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tar")
    out = {}
    for proto in (1, 2):
        out[f"protocol-{proto}"] = write_tar(
            d / f"p{proto}.pth", tar_members(_state(), protocol=proto, views=("view",))
        )
    nested = {"epoch": 3, "model": _state(), "opt": {"lr": 0.1}}
    out["training"] = write_tar(d / "train.pth", tar_members(nested))
    m = tar_members(_state())
    out["reordered"] = write_tar(
        d / "reordered.pth", m, order=("storages", "tensors", "pickle")
    )  # torch looks up names
    return out


@pytest.fixture(scope="module")
def torch_view(files: dict[str, Path]) -> dict[str, dict]:
    return torch_load(list(files.values()), weights_only=False)


@pytest.mark.parametrize("case", ["protocol-1", "protocol-2", "reordered"])
def test_values_are_what_torch_load_returns(case: str, files: dict[str, Path], torch_view: dict[str, dict]) -> None:
    want = torch_view[str(files[case])]
    assert want["ok"], want
    with ckptool.open(files[case]) as ck:
        assert ck.format == "torch-tar"
        assert list(ck.names()) == list(want["tensors"])
        for name, t in want["tensors"].items():
            assert ck[name].dtype == t["dtype"] and list(ck[name].shape) == t["shape"], name
            assert ckptool_hex(ck, name) == t["hex"], name


def test_training_checkpoint_locates_the_state_dict(files: dict[str, Path], torch_view: dict[str, dict]) -> None:
    want = torch_view[str(files["training"])]
    with ckptool.open(files["training"]) as ck:
        assert ck.state_dict_key == "model" and ck.extras["epoch"] == "3"
        for name in ck.names():
            assert ckptool_hex(ck, name) == want["tensors"][f"model.{name}"]["hex"], name


def test_torch_refuses_it_under_weights_only(files: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError, match=r"legacy \.tar format"):
        torch.load(files["protocol-2"], weights_only=True)


def test_inspect_and_export_on_the_installed_script(files: dict[str, Path], tmp_path: Path) -> None:
    r = run_script("inspect", files["protocol-2"], "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "torch-tar" and len(doc["tensors"]) == len(_state())
    out = tmp_path / "o.safetensors"
    r = run_script("export", files["protocol-2"], "--safetensors", out)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    got = load_file(out)
    for k, v in _state().items():
        assert torch.equal(got[k], v), k


def test_scan_of_a_clean_tar_checkpoint_is_ok(files: dict[str, Path], cli) -> None:
    r = cli("scan", files["protocol-2"], "--json", "--no-policy")
    assert r.exit_code == 0, r.stdout
    f = json.loads(r.stdout)["files"][0]
    assert f["format"] == "torch-tar" and f["findings"] == [] and f["values_checked"] is True
    wheres = [p["where"] for p in f["pickles"]]
    # every pickle torch unpickles: count + 6 storage records (view, t and tail share one) + views,
    # count + 8 tensor records, and the object
    assert sum(w.startswith("tar member 'storages'") for w in wheres) == 1 + 6 + 1
    assert sum(w.startswith("tar member 'tensors'") for w in wheres) == 1 + len(_state())
    assert "tar member 'pickle'" in wheres
    assert {g["name"] for g in f["globals"]} >= {"torch.FloatStorage", "torch.FloatTensor"}


def _with(members: dict[str, bytes], name: str, data: bytes, tmp: Path) -> Path:
    return write_tar(tmp / f"evil-{name}.pth", {**members, name: data})


def _views_pickle_len(protocol: int = 2) -> int:
    return len(pickle.dumps([], protocol=protocol))


@pytest.mark.parametrize("where", ["pickle", "tensors", "storages-count", "storages-views"])
def test_scan_flags_a_payload_in_any_member_torch_unpickles(where: str, tmp_path: Path, cli) -> None:
    m = tar_members(_state())
    if where == "pickle":
        path = _with(m, "pickle", PAYLOAD, tmp_path)
    elif where == "tensors":
        path = _with(m, "tensors", PAYLOAD + m["tensors"], tmp_path)  # the count pickle torch loads first
    elif where == "storages-count":
        path = _with(m, "storages", PAYLOAD, tmp_path)
    else:  # the storage views pickle, after every storage's raw bytes
        path = _with(m, "storages", m["storages"][: -_views_pickle_len()] + PAYLOAD, tmp_path)
    r = cli("scan", path, "--json", "--no-policy")
    assert r.exit_code == 1, r.stdout
    f = json.loads(r.stdout)["files"][0]
    hits = [x for x in f["findings"] if x["kind"] == "dangerous-global"]
    assert hits and "os.system" in hits[0]["message"]
    assert hits[0]["where"].startswith(f"tar member '{where.split('-')[0]}'")
    r = cli("inspect", path)
    assert r.exit_code == 2 and "os.system" in r.output


def test_scan_walks_the_last_member_of_a_name_as_tarfile_does(tmp_path: Path, cli) -> None:
    """``TarFile.getmember`` returns the LAST member of a name: a benign first ``pickle`` hides nothing."""
    m = tar_members(_state())
    path = tmp_path / "dup.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [*m.items(), ("pickle", PAYLOAD)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    r = cli("scan", path, "--json", "--no-policy")
    assert r.exit_code == 1
    f = json.loads(r.stdout)["files"][0]
    assert any(x["kind"] == "dangerous-global" for x in f["findings"])


def test_a_link_member_is_refused(tmp_path: Path, cli) -> None:
    """torch extracts the member and opens it: a symlink ``pickle`` makes it unpickle any file on the machine."""
    m = tar_members(_state())
    path = tmp_path / "link.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("tensors", "storages"):
            info = tarfile.TarInfo(name)
            info.size = len(m[name])
            tar.addfile(info, io.BytesIO(m[name]))
        link = tarfile.TarInfo("pickle")
        link.type, link.linkname = tarfile.SYMTYPE, "/tmp/somewhere/evil.pkl"
        tar.addfile(link)
    r = cli("scan", path, "--json", "--no-policy")
    assert r.exit_code == 1
    f = json.loads(r.stdout)["files"][0]
    assert [x["kind"] for x in f["findings"]] == ["unsafe"] and "symbolic link" in f["findings"][0]["message"]
    r = run_script("inspect", path)
    assert r.returncode == 2 and "symbolic link" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_tar_that_is_no_checkpoint(tmp_path: Path, cli) -> None:
    """A plain tar archive: torch.load fails (KeyError 'storages') before unpickling anything."""
    path = tmp_path / "data.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    r = cli("scan", path, "--json", "--no-policy")
    assert r.exit_code == 0, r.stdout
    f = json.loads(r.stdout)["files"][0]
    assert f["findings"] == [] and any("'storages'" in n and "before unpickling" in n for n in f["notes"])
    r = run_script("inspect", path)
    assert r.returncode == 2 and "no 'storages' member" in r.stderr


def test_a_lying_storage_size_is_refused(tmp_path: Path) -> None:
    m = tar_members(OrderedDict(w=torch.arange(4.0)))
    raw = bytearray(m["storages"])
    at = raw.index((4).to_bytes(8, "little"))  # the element count after the storage record
    raw[at : at + 8] = (10**6).to_bytes(8, "little")
    path = write_tar(tmp_path / "lie.pth", {**m, "storages": bytes(raw)})
    with pytest.raises(CorruptFileError, match="claims 1000000 elements"):
        ckptool.open(path)
