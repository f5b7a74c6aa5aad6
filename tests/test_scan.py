"""`ckptool scan` and ckptool.scan: classification, where pickles hide, integrity findings, CLI contract."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import Reduce, zip_members

from ckptool.formats.unpickler import ALLOWED
from ckptool.scan import DANGEROUS, SAFE, UNKNOWN, classify, scan, walk_pickle

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CLEAN = ["tiny_vgg.pth", "tiny_vgg_legacy.pth", "tiny_vgg_dp.pth", "tiny_train.ckpt", "tiny_vgg.safetensors"]
CLEAN += ["tiny_mlp.onnx"]


def kinds(report) -> set[str]:
    return {f.kind for f in report.findings}


def sd(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        [
            ("features.0.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("features.1.running_var", torch.rand(4, generator=g) + 0.5),
            ("classifier.weight", torch.randn(2, 4, generator=g)),
        ]
    )


# --------------------------------------------------------------------------------------------
# Clean files and the CLI contract
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLEAN)
def test_clean_fixture_is_clean(cli, name: str) -> None:
    r = cli("scan", FIXTURES / name, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == ["files"] and len(doc["files"]) == 1
    f = doc["files"][0]
    assert f["path"] == str(FIXTURES / name) and f["safe"] is True and f["findings"] == []
    assert all(set(g) >= {"name", "verdict"} and g["verdict"] == "safe" for g in f["globals"])
    assert f["values_checked"] is True and f["tensors_checked"] > 0
    if name.endswith((".pth", ".ckpt")):
        assert "torch._utils._rebuild_tensor_v2" in {g["name"] for g in f["globals"]}


def test_several_paths_one_report_each_and_worst_exit_code(cli, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": sd(), "x": Reduce(os.system, "true")}, evil)
    r = cli("scan", FIXTURES / "tiny_vgg.pth", evil, "--json")
    assert r.exit_code == 1
    files = json.loads(r.stdout)["files"]
    assert [f["safe"] for f in files] == [True, False]
    assert {"name": "posix.system", "verdict": "dangerous"}.items() <= files[1]["globals"][0].items()
    r = cli("scan", FIXTURES / "tiny_vgg.pth", evil, tmp_path / "missing.pth", "--json")
    assert r.exit_code == 2  # could not scan one of them: the worst outcome wins
    files = json.loads(r.stdout)["files"]
    assert len(files) == 3 and "no such file" in files[2]["error"] and files[2]["safe"] is False
    assert r.stderr.strip().splitlines() == [f"ckptool: error: {tmp_path / 'missing.pth'}: no such file"]


def test_human_output_names_the_danger(cli, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": sd(), "x": Reduce(exec, "print(1)")}, evil)
    r = cli("scan", evil, FIXTURES / "tiny_vgg.pth")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{evil}: FINDINGS (1)")
    assert any("dangerous" in x and "builtins.exec" in x and "__builtin__.exec" in x for x in lines)
    assert any(x.startswith(f"{FIXTURES / 'tiny_vgg.pth'}: ok") for x in lines)
    assert lines[-1] == "scanned 2 files: 1 clean, 1 with findings, 0 could not be scanned"


@pytest.mark.parametrize("bad", ["missing", "empty", "text"])
def test_could_not_scan_is_exit_2_with_one_line(cli, tmp_path: Path, bad: str) -> None:
    """(A folder is walked, not refused: one without weights is a no-weight-files report, tests/test_scanset_empty.py.)"""
    path = tmp_path / f"{bad}.pth"
    if bad == "empty":
        path.write_bytes(b"")
    elif bad == "text":
        path.write_text("just some notes\n" * 20)
    r = cli("scan", path)
    assert r.exit_code == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(f"ckptool: error: {path}: ")


@pytest.mark.parametrize("command", ["scan", "inspect"])
def test_permission_denied_is_exit_2_with_one_line(cli, tmp_path: Path, monkeypatch, command: str) -> None:
    """Root reads any file, so the test makes open() refuse, as the kernel does for other users."""
    import builtins

    import ckptool.sources.local as local  # the one byte path: every file is opened there

    path = tmp_path / "locked.pth"
    shutil.copyfile(FIXTURES / "tiny_vgg.pth", path)
    real_open = builtins.open

    def refuse(file, *a, **kw):  # type: ignore[no-untyped-def]
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(local, "open", refuse, raising=False)
    r = cli(command, path)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == f"ckptool: error: {path}: permission denied\n"


def test_script_scan_json(script, tmp_path: Path) -> None:
    r = script("scan", "--json", FIXTURES / "tiny_vgg_legacy.pth")
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)["files"][0]
    assert f["format"] == "torch-legacy" and len(f["pickles"]) == 5 and f["safe"] is True


def test_scan_never_imports_torch() -> None:
    code = (
        "import sys; from ckptool.scan import scan; "
        f"[scan(p) for p in {[str(FIXTURES / n) for n in CLEAN]!r}]; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ckptool", "scan", str(FIXTURES / "tiny_vgg.pth")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0
    imported = {x.split("|")[-1].strip() for x in r.stderr.splitlines() if x.startswith("import time:")}
    assert "ckptool.scan" in imported and "torch" not in imported


# --------------------------------------------------------------------------------------------
# Classification: one allowlist, shared with the reader
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("posix.system", DANGEROUS),
        ("nt.system", DANGEROUS),
        ("os.system", DANGEROUS),
        ("subprocess.Popen", DANGEROUS),
        ("builtins.eval", DANGEROUS),
        ("builtins.getattr", DANGEROUS),
        ("builtins.__import__", DANGEROUS),
        ("builtins.open", DANGEROUS),
        ("runpy._run_code", DANGEROUS),
        ("importlib.import_module", DANGEROUS),
        ("importlib._bootstrap._load", DANGEROUS),
        ("pickle.loads", DANGEROUS),
        ("_pickle.loads", DANGEROUS),
        ("marshal.loads", DANGEROUS),
        ("functools.partial", DANGEROUS),
        ("operator.attrgetter", DANGEROUS),
        ("torch.load", DANGEROUS),
        ("torch.serialization.load", DANGEROUS),
        ("torch.storage._load_from_bytes", DANGEROUS),
        ("numpy.load", DANGEROUS),
        ("collections.OrderedDict", SAFE),
        ("torch._utils._rebuild_tensor_v2", SAFE),
        ("torch._utils._rebuild_parameter", SAFE),
        ("torch.FloatStorage", SAFE),
        ("torch.bfloat16", SAFE),
        ("argparse.Namespace", UNKNOWN),
        ("builtins.dict", UNKNOWN),
        ("mypkg.nets.ONet", UNKNOWN),
        ("__torch__.Net", UNKNOWN),  # only inside a TorchScript archive
    ],
)
def test_classify(name: str, verdict: str) -> None:
    assert classify(name) == verdict


def test_allowlist_is_the_readers_and_never_dangerous() -> None:
    assert all(classify(name) == SAFE for name in ALLOWED)
    assert classify("__torch__.Net", torchscript=True) == SAFE
    scan_module = importlib.import_module("ckptool.scan")  # the module (ckptool.scan is the API function)

    assert not set(ALLOWED) & scan_module.DANGEROUS_NAMES
    assert not any(classify(n) == DANGEROUS for n in ALLOWED)


@pytest.mark.parametrize(
    ("spelled", "resolved"),
    [("__builtin__ eval", "builtins.eval"), ("copy_reg _reconstructor", "copyreg._reconstructor"),
     ("commands getoutput", "subprocess.getoutput"), ("exceptions ValueError", "builtins.ValueError")],
)  # fmt: skip
def test_python2_spellings_are_judged_by_what_python_imports(tmp_path: Path, spelled: str, resolved: str) -> None:
    path = tmp_path / "p2.pkl"
    path.write_bytes(f"c{spelled.replace(' ', chr(10))}\n.".encode())
    report = scan(path)
    g = report.globals[0]
    assert g.name == resolved and g.spelled == spelled.replace(" ", ".")
    assert not report.safe


def test_unknown_global_is_a_finding_and_values_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "args.pth"
    torch.save({"state_dict": sd(), "args": argparse.Namespace(lr=0.1)}, path)
    report = scan(path)
    assert kinds(report) == {"unknown-global"}
    assert [g.verdict for g in report.globals if g.name == "argparse.Namespace"] == [UNKNOWN]
    assert not report.values_checked and any("values not checked" in n for n in report.notes)


def test_torchscript_archive(tmp_path: Path) -> None:
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())), path)
    report = scan(path)
    assert report.format == "torchscript" and not report.safe  # its code runs at load: never "ok" (issue 14)
    assert {f.kind for f in report.findings} == {"torchscript-code"}
    assert any(g.name.startswith("__torch__.") and g.verdict == SAFE for g in report.globals)
    assert len(report.pickles) >= 2  # data.pkl and constants.pkl


# --------------------------------------------------------------------------------------------
# The opcode walk
# --------------------------------------------------------------------------------------------
def u(s: str) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s.encode()


def test_stack_global_resolves_through_memo_and_string_opcodes() -> None:
    data = b"\x80\x04" + u("posix") + b"\x94" + u("system") + b"\x94" + b"00h\x00h\x01\x93)R."
    w = walk_pickle(data)
    assert w.complete and w.globals == [("posix", "system", data.index(b"\x93"), "STACK_GLOBAL")]
    w = walk_pickle(b"\x80\x04S'os'\nS'system'\n\x93)R.")
    assert [g[:2] for g in w.globals] == [("os", "system")]
    w = walk_pickle(b"\x80\x02U\x05posixq\x00U\x06systemq\x01h\x00h\x01\x93.")  # BINPUT/BINGET, protocol 2
    assert [g[:2] for g in w.globals] == [("posix", "system")]
    w = walk_pickle(b"\x80\x04N" + u("system") + b"\x93.")
    assert w.unresolved and not w.globals  # a module name that is not a string constant


def test_stack_global_from_a_call_result_is_unresolved(tmp_path: Path) -> None:
    # getattr(builtins, 'eval') spelled with STACK_GLOBAL on the result of a REDUCE
    data = b"\x80\x04" + u("builtins") + u("str") + b"\x93" + u("os") + b"\x85R" + u("system") + b"\x93."
    path = tmp_path / "dyn.pkl"
    path.write_bytes(data)
    report = scan(path)
    assert "unresolved-global" in kinds(report)
    assert any(g.name == "<unresolved>" and g.verdict == DANGEROUS for g in report.globals)


def test_malformed_pickle_keeps_the_globals_seen_before_the_error() -> None:
    w = walk_pickle(b"cos\nsystem\n(S'x'\ntR\xff\xff")
    assert not w.complete and w.error and [g[:2] for g in w.globals] == [("os", "system")]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_inside_bytes_constants_are_walked(tmp_path: Path, protocol: int) -> None:
    inner = pickle.dumps(Reduce(os.system, "true"), protocol=2)
    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps({"blob": inner}, protocol=protocol))  # protocol 2: _codecs.encode(str)
    report = scan(path)
    evil = [g for g in report.globals if g.verdict == DANGEROUS]
    assert [g.name for g in evil] == ["posix.system"] and "bytes constant 1" in evil[0].where


def test_bare_pickle_stream(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"lr": [0.1, 0.01]}, protocol=4) + pickle.dumps([1, 2], protocol=2))
    report = scan(path)
    assert report.format == "pickle" and kinds(report) == {"hidden-pickle"} and len(report.pickles) == 2


# --------------------------------------------------------------------------------------------
# Where pickles hide
# --------------------------------------------------------------------------------------------
def test_legacy_trailing_pickle_after_the_last_storage(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(sd(), path, _use_new_zipfile_serialization=False)
    with open(path, "ab") as fh:
        fh.write(pickle.dumps(Reduce(os.system, "true"), protocol=2))
    report = scan(path)
    evil = [g for g in report.globals if g.verdict == DANGEROUS]
    assert [g.name for g in evil] == ["posix.system"] and "after the last storage" in evil[0].where
    assert evil[0].offset > 1000  # a file offset past the storages


@pytest.mark.parametrize("protocol", [0, 1])
def test_legacy_file_written_with_a_text_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "old.pth"
    torch.save(sd(), path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    report = scan(path)
    assert report.format == "torch-legacy" and len(report.pickles) == 5 and report.safe, report.findings


def test_zip_member_renamed_to_a_storage_name(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save(sd(), src)
    evil = pickle.dumps(Reduce(os.system, "true"), protocol=2)
    path = tmp_path / "renamed.pth"
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in zip_members(src):
            zf.writestr(n, d)
        zf.writestr("ok/data/7", evil, compress_type=zipfile.ZIP_DEFLATED)  # compressed too
    report = scan(path)
    assert {(g.name, g.where) for g in report.globals if g.verdict == DANGEROUS} == {("posix.system", "ok/data/7")}


def test_storage_bytes_that_merely_start_like_a_pickle_are_not_findings(tmp_path: Path) -> None:
    # a float32 tensor whose first bytes are 0x80 0x02: walked, found not to be a pickle, ignored
    t = torch.from_numpy(np.frombuffer(b"\x80\x02\x00\x00" + b"\x00" * 60, dtype="<f4").copy())
    path = tmp_path / "t.pth"
    torch.save({"w": t}, path)
    report = scan(path)
    assert report.safe, report.findings
    assert len(report.pickles) == 1


# --------------------------------------------------------------------------------------------
# Integrity
# --------------------------------------------------------------------------------------------
def test_filename_hash_suffix(cli, tmp_path: Path) -> None:
    src = FIXTURES / "tiny_vgg.pth"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good = tmp_path / f"tiny_vgg-{digest[:8]}.pth"
    bad = tmp_path / "tiny_vgg-deadbeef.pth"
    shutil.copyfile(src, good)
    shutil.copyfile(src, bad)
    assert scan(good).safe and scan(good).sha256 == digest
    report = scan(bad)
    assert kinds(report) == {"hash-mismatch"} and "deadbeef" in report.findings[0].message
    assert digest[:8] in report.findings[0].message
    r = cli("scan", bad, "--no-values")
    assert r.exit_code == 0 and "not checked (--no-values)" in r.stdout


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_nan_inf_and_negative_running_var(cli, tmp_path: Path, fmt: str) -> None:
    d = sd()
    d["features.0.weight"][0, 0, 0, :2] = float("nan")
    d["classifier.weight"][1, 3] = float("-inf")
    d["features.1.running_var"][2] = -0.5
    path = tmp_path / f"bad.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(d, path)
    else:
        torch.save(d, path, _use_new_zipfile_serialization=fmt == "zip")
    report = scan(path)
    found = {(f.kind, f.where, f.message.split(":")[0]) for f in report.findings}
    assert found == {
        ("nan", "features.0.weight", "2 NaN of 108 values"),
        ("inf", "classifier.weight", "1 Inf of 8 values"),
        ("negative-running-var", "features.1.running_var", "1 negative values"),
    }
    assert cli("scan", path).exit_code == 1
    assert cli("scan", path, "--no-values").exit_code == 0


def test_value_checks_per_dtype(tmp_path: Path) -> None:
    d = {
        "bf16": torch.tensor([1.0, float("nan"), 2.0], dtype=torch.bfloat16),
        "f16": torch.tensor([float("inf"), 1.0], dtype=torch.float16),
        "f64": torch.tensor([float("nan")] * 3, dtype=torch.float64),
        "c64": torch.tensor([complex(1, float("nan"))], dtype=torch.complex64),
        "e5m2": torch.tensor([float("inf"), 1.0], dtype=torch.float8_e5m2),
        "e4m3": torch.tensor([float("nan"), 1.0], dtype=torch.float8_e4m3fn),
        "transposed": torch.tensor([[1.0, float("nan")], [2.0, 3.0]]).t(),
        "ints": torch.tensor([-1, 2]),
        "clean": torch.ones(5),
    }
    path = tmp_path / "dtypes.pth"
    torch.save(d, path)
    report = scan(path)
    got = {(f.kind, f.where) for f in report.findings}
    assert got == {
        ("nan", "bf16"), ("inf", "f16"), ("nan", "f64"), ("nan", "c64"), ("inf", "e5m2"), ("nan", "e4m3"),
        ("nan", "transposed"),
    }  # fmt: skip
    assert report.tensors_checked == 8  # every floating tensor; ints are not checked


def test_zip_crc_error(cli, tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save(sd(), src)
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("ok/data/0")
        h = info.header_offset
        n, e = struct.unpack("<HH", data[h + 26 : h + 30])
        data[h + 30 + n + e + 5] ^= 0x10  # one bit of the first tensor
    bad = tmp_path / "bad.pth"
    bad.write_bytes(bytes(data))
    report = scan(bad)
    assert kinds(report) == {"zip-crc"} and report.findings[0].where == "ok/data/0"
    assert cli("inspect", bad).exit_code == 0  # the reader does not read tensor bytes
    assert cli("scan", bad, "--no-values").exit_code == 0  # storage records are only CRC-checked with values


def _central_records(data: bytes) -> list[int]:
    out, i = [], data.find(b"PK\x01\x02")
    while i >= 0:
        out.append(i)
        i = data.find(b"PK\x01\x02", i + 4)
    return out


def test_zip_overlapping_records_and_local_name_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save(sd(), src)
    data = bytearray(src.read_bytes())
    cds = _central_records(bytes(data))
    first_local = struct.unpack("<I", data[cds[0] + 42 : cds[0] + 46])[0]
    struct.pack_into("<I", data, cds[-1] + 42, first_local)  # the last member points at the first one's record
    bad = tmp_path / "overlap.pth"
    bad.write_bytes(bytes(data))
    report = scan(bad)
    assert {"zip-overlap", "zip-name-mismatch"} <= kinds(report)


def test_zip_duplicate_member_names(tmp_path: Path) -> None:
    src = tmp_path / "ok.pth"
    torch.save(sd(), src)
    path = tmp_path / "dup.pth"
    members = zip_members(src)
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning):
        for n, d in [*members, members[-1]]:
            zf.writestr(n, d)
    assert "zip-duplicate" in kinds(scan(path))


def test_safetensors_rules_are_listed_together(tmp_path: Path) -> None:
    header = (
        b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
        b' "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
        b' "b": {"dtype": "F32", "shape": [2], "data_offsets": [20, 28]},'
        b' "c": {"dtype": "F32", "shape": [3], "data_offsets": [28, 32]}}'
    )
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 32)
    messages = [f.message for f in scan(path).findings]
    assert any("duplicate key 'a'" in m for m in messages)
    assert any("'b'" in m and "gap of 4 bytes" in m for m in messages)
    assert any("'c'" in m and "needs 12" in m for m in messages)


def test_onnx_external_data_inside_and_outside(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    folder = tmp_path / "m"
    folder.mkdir()
    w = numpy_helper.from_array(np.array([1.0, np.nan, 3.0, 4.0], dtype=np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [], [helper.make_tensor_value_info("y", 1, [4])], [w]
    )
    model = helper.make_model(g)
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    report = scan(folder / "m.onnx")
    assert kinds(report) == {"nan"}  # values read from the external file
    m = onnx.load(folder / "m.onnx", load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../m/../../etc/passwd"
    (folder / "evil.onnx").write_bytes(m.SerializeToString())
    report = scan(folder / "evil.onnx")
    assert kinds(report) == {"onnx-external-data"} and "'w'" in report.findings[0].message


# --------------------------------------------------------------------------------------------
# Full size
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_vgg16_bn_is_clean_and_streamed(vgg16_bn_files, tmp_path: Path) -> None:
    from proc import run_measured

    for fmt, path in vgg16_bn_files.items():
        code, out, err, cpu, _wall, rss = run_measured(["scan", "--json", str(path)], tmp_path)
        assert code == 0, err
        f = json.loads(out)["files"][0]
        assert f["safe"] and f["values_checked"] and f["tensors_checked"] > 60, (fmt, f)
        assert rss < 200, f"{fmt}: peak RSS {rss:.0f} MB while checking 553 MB of values"
        assert cpu < 20, f"{fmt}: {cpu:.1f} s CPU"


# --------------------------------------------------------------------------------------------
# Reader fixes found while hardening
# --------------------------------------------------------------------------------------------
def test_onnx_typed_uint32_values_are_decoded_at_their_width(tmp_path: Path) -> None:
    """ONNX keeps uint32 initializers in uint64_data; they used to be decoded as 8-byte values and cut."""
    import onnx
    from onnx import TensorProto, helper

    from ckptool.formats import open_checkpoint

    t = helper.make_tensor("u", TensorProto.UINT32, [3], [1, 2, 4_000_000_000], raw=False)
    g = helper.make_graph(
        [helper.make_node("Identity", ["u"], ["y"])], "g", [], [helper.make_tensor_value_info("y", 12, [3])], [t]
    )
    onnx.save(helper.make_model(g), tmp_path / "u.onnx")
    with open_checkpoint(tmp_path / "u.onnx") as ck:
        values = np.frombuffer(ck.read_bytes(ck.tensors[0]), dtype="<u4")
    assert values.tolist() == [1, 2, 4_000_000_000]
