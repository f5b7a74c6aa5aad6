"""The hostile-file corpus, built at test time in a temporary folder (never committed as live payloads).

Every payload only tries to create a canary file: ``<canary_dir>/<case name>``. The tests assert that the
canary folder stays empty after every command. ``live`` says how a naive loader would run a payload; the
corpus test re-builds the payload cases with another canary folder and runs them with that loader in a
child process, to prove the payloads are real (so that "no canary" means something).

Build with :func:`build_corpus`. Each :class:`Case` says what the restricted reader does with it
(``readable``: ``inspect`` exits 0; otherwise every reading command exits 2) and what ``scan`` reports.
"""

from __future__ import annotations

import collections
import functools
import importlib
import io
import json
import os
import pickle
import pickletools
import runpy
import struct
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

# --------------------------------------------------------------------------------------------
# The case table
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: Path
    readable: bool = False  # the restricted reader opens it: inspect exits 0 (else 2)
    scan_exit: int = 1  # 0 clean, 1 findings, 2 could not scan
    kinds: tuple[str, ...] = ()  # finding kinds scan must report (at least these)
    dangerous: tuple[str, ...] = ()  # globals scan must name as dangerous
    live: str | None = None  # "pickle" | "torch": a naive loader that would run the payload
    bounded: bool = False  # also run through the installed script: < 2 s CPU, < 200 MB peak RSS

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------------
# Payload building blocks
# --------------------------------------------------------------------------------------------
class Reduce:
    """An object whose unpickling calls fn(*args): the classic __reduce__ payload."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.fn, self.args)


class FakeStorage:
    """Stands for a torch storage in a hand-made torch zip (becomes a persistent id)."""

    def __init__(self, key: str, numel: int, cls: str = "FloatStorage") -> None:
        self.key, self.numel, self.cls = key, numel, cls


class FakeTensor:
    """Pickles exactly as torch.save pickles a tensor, but with sizes we choose (they may lie)."""

    def __init__(self, storage: FakeStorage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, self.offset, torch.Size(self.size), self.stride, False, collections.OrderedDict()),
        )


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, FakeStorage):
            return ("storage", getattr(torch, obj.cls), obj.key, "cpu", obj.numel)
        return None


def torch_like_pickle(obj: object, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    _TorchLikePickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def write_zip(path: Path, members: list[tuple[str, bytes]], *, compress: bool = False) -> Path:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        for name, data in members:
            zf.writestr(name, data)
    return path


def zip_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def replace_member(src: Path, dst: Path, name_suffix: str, data: bytes) -> Path:
    members = [(n, data if n.endswith(name_suffix) else d) for n, d in zip_members(src)]
    return write_zip(dst, members)


def legacy_pickles(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a legacy torch file into its five pickles and the storage data after them."""
    out, pos = [], 0
    bio = io.BytesIO(data)
    for _ in range(5):
        bio.seek(pos)
        for op, _arg, _p in pickletools.genops(bio):
            if op.name == "STOP":
                break
        end = bio.tell()
        out.append(data[pos:end])
        pos = end
    return out, data[pos:]


def proto0(text: str) -> bytes:
    return text.encode("latin-1")


def tiny_state_dict(seed: int = 0) -> collections.OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return collections.OrderedDict(
        [
            ("features.0.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("features.0.bias", torch.randn(4, generator=g)),
            ("features.1.running_var", torch.rand(4, generator=g) + 0.5),
            ("classifier.0.weight", torch.randn(2, 4, generator=g)),
        ]
    )


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------
def build_corpus(root: Path, canary_dir: Path, *, payloads_only: bool = False) -> list[Case]:
    """Write every hostile case under ``root``; payloads try to create ``canary_dir/<case name>``."""
    root.mkdir(parents=True, exist_ok=True)
    canary_dir.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    sd = tiny_state_dict()
    benign_zip = root / "_benign.pth"
    torch.save(sd, benign_zip)
    benign_legacy = root / "_benign_legacy.pth"
    torch.save(sd, benign_legacy, _use_new_zipfile_serialization=False)

    def canary(name: str) -> str:
        return str(canary_dir / name)

    def sh(name: str) -> str:
        return f"touch {canary(name)}"

    def add(case: Case) -> None:
        cases.append(case)

    def torch_file(name: str, obj: object, *, legacy: bool = False, protocol: int = 2, **kw: object) -> Case:
        path = root / f"{name}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
        return Case(name, path, live="torch", **kw)  # type: ignore[arg-type]

    def zip_with_pkl(name: str, data_pkl: bytes, **kw: object) -> Case:
        path = replace_member(benign_zip, root / f"{name}.pth", "/data.pkl", data_pkl)
        return Case(name, path, live="torch", **kw)  # type: ignore[arg-type]

    def bare(name: str, data: bytes, **kw: object) -> Case:
        path = root / f"{name}.pkl"
        path.write_bytes(data)
        return Case(name, path, live="pickle", **kw)  # type: ignore[arg-type]

    # -- __reduce__ to everything that runs code, inside a real torch.save checkpoint --------------
    import posix

    reduce_payloads = {
        "reduce_os_system": (Reduce(os.system, sh("reduce_os_system")), "posix.system"),
        "reduce_posix_system": (Reduce(posix.system, sh("reduce_posix_system")), "posix.system"),
        "reduce_subprocess_popen": (
            Reduce(subprocess.Popen, ["touch", canary("reduce_subprocess_popen")]),
            "subprocess.Popen",
        ),
        "reduce_subprocess_call": (
            Reduce(subprocess.call, ["touch", canary("reduce_subprocess_call")]),
            "subprocess.call",
        ),
        "reduce_builtins_exec": (
            Reduce(exec, f"import os; os.system({sh('reduce_builtins_exec')!r})"),
            "builtins.exec",
        ),
        "reduce_builtins_eval": (
            Reduce(eval, f"__import__('os').system({sh('reduce_builtins_eval')!r})"),
            "builtins.eval",
        ),
        "reduce_runpy_run_code": (
            Reduce(runpy._run_code, f"import os; os.system({sh('reduce_runpy_run_code')!r})", {}),
            "runpy._run_code",
        ),
    }
    for name, (payload, glob) in reduce_payloads.items():
        add(torch_file(name, {"state_dict": sd, "x": payload}, kinds=("dangerous-global",), dangerous=(glob,)))

    # getattr(__import__('os'), 'system')(...) and importlib.import_module, hand-written (protocol 0)
    add(
        zip_with_pkl(
            "getattr_import",
            proto0(
                "c__builtin__\ngetattr\n(c__builtin__\n__import__\n(S'os'\ntRS'system'\ntR"
                f"(S'{sh('getattr_import')}'\ntR."
            ),
            kinds=("dangerous-global",),
            dangerous=("builtins.getattr", "builtins.__import__"),
        )
    )
    add(
        zip_with_pkl(
            "importlib_import_module",
            proto0(
                "cbuiltins\ngetattr\n(cimportlib\nimport_module\n(S'os'\ntRS'system'\ntR"
                f"(S'{sh('importlib_import_module')}'\ntR."
            ),
            kinds=("dangerous-global",),
            dangerous=("importlib.import_module", "builtins.getattr"),
        )
    )

    # -- pickle protocols 0-5 (bare pickles; 2-5 also as torch zip files) ---------------------------
    for proto in range(6):
        name = f"protocol_{proto}"
        payload = {"w": [1.0, 2.0], "x": Reduce(os.system, sh(name))}
        add(bare(name, pickle.dumps(payload, protocol=proto), kinds=("dangerous-global",), dangerous=("posix.system",)))
    for proto in (3, 4, 5):
        name = f"torch_protocol_{proto}"
        add(
            torch_file(
                name,
                {"state_dict": sd, "x": Reduce(os.system, sh(name))},
                protocol=proto,
                kinds=("dangerous-global",),
                dangerous=("posix.system",),
            )
        )

    # -- STACK_GLOBAL with names from the memo / from STRING opcodes; INST; OBJ ---------------------
    def u(s: str) -> bytes:
        b = s.encode()
        return b"\x8c" + bytes([len(b)]) + b

    cmd = sh("stack_global_memo").encode()
    add(
        zip_with_pkl(
            "stack_global_memo",
            b"\x80\x04" + u("posix") + b"\x94" + u("system") + b"\x94" + b"00" + b"h\x00h\x01\x93"
            + b"\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.",
            kinds=("dangerous-global",),
            dangerous=("posix.system",),
        )
    )  # fmt: skip
    add(
        zip_with_pkl(
            "stack_global_string",
            b"\x80\x04" + proto0(f"S'os'\nS'system'\n\x93S'{sh('stack_global_string')}'\n\x85R."),
            kinds=("dangerous-global",),
            dangerous=("os.system",),
        )
    )
    cmd = sh("stack_global_binstring").encode()
    add(
        zip_with_pkl(
            "stack_global_binstring",
            b"\x80\x04U\x05posixU\x06system\x93T" + struct.pack("<I", len(cmd)) + cmd + b"\x85R.",
            kinds=("dangerous-global",),
            dangerous=("posix.system",),
        )
    )
    add(
        zip_with_pkl(
            "inst_opcode",
            proto0(f"(S'{sh('inst_opcode')}'\nios\nsystem\n."),
            kinds=("dangerous-global",),
            dangerous=("os.system",),
        )
    )
    add(
        zip_with_pkl(
            "obj_opcode",
            proto0(f"(cos\nsystem\nS'{sh('obj_opcode')}'\no."),
            kinds=("dangerous-global",),
            dangerous=("os.system",),
        )
    )
    add(
        zip_with_pkl(
            "python2_spelling",
            proto0(f'c__builtin__\neval\n(S\'__import__("os").system("{sh("python2_spelling")}")\'\ntR.'),
            kinds=("dangerous-global",),
            dangerous=("builtins.eval",),
        )
    )
    add(
        zip_with_pkl(
            "commands_module",  # Python 2's commands module maps to subprocess
            proto0(f"ccommands\ngetoutput\n(S'{sh('commands_module')}'\ntR."),
            kinds=("dangerous-global",),
            dangerous=("subprocess.getoutput",),
        )
    )
    add(zip_with_pkl("ext1_opcode", b"\x80\x02\x82\x01)R.", kinds=("dangerous-global",)))
    cases[-1].live = None  # extension code 1 is not registered: pickle itself fails

    # -- nested loaders ---------------------------------------------------------------------------
    inner = pickle.dumps(Reduce(os.system, sh("nested_pickle_loads")), protocol=2)
    add(
        torch_file(
            "nested_pickle_loads",
            {"state_dict": sd, "x": Reduce(pickle.loads, inner)},
            kinds=("dangerous-global",),
            dangerous=("pickle.loads", "posix.system"),
        )
    )
    inner_pth = io.BytesIO()
    torch.save({"x": Reduce(os.system, sh("partial_torch_load"))}, inner_pth)
    loader = functools.partial(torch.load, weights_only=False)
    add(
        torch_file(
            "partial_torch_load",
            {"state_dict": sd, "x": Reduce(loader, io.BytesIO(inner_pth.getvalue()))},
            kinds=("dangerous-global",),
            dangerous=("functools.partial", "torch.serialization.load"),
        )
    )

    # -- legacy format: payloads in the later pickles ---------------------------------------------
    pk, rest = legacy_pickles(benign_legacy.read_bytes())
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
        "x": Reduce(os.system, sh("legacy_sys_info")),
    }
    path = root / "legacy_sys_info.pth"
    path.write_bytes(pk[0] + pk[1] + pickle.dumps(sys_info, protocol=2) + pk[3] + pk[4] + rest)
    add(Case("legacy_sys_info", path, live="torch", kinds=("dangerous-global",), dangerous=("posix.system",)))
    keys = pickle.loads(pk[4])
    path = root / "legacy_storage_keys.pth"
    evil_keys = pickle.dumps([*keys, Reduce(os.system, sh("legacy_storage_keys"))], protocol=2)
    path.write_bytes(b"".join(pk[:4]) + evil_keys + rest)
    add(Case("legacy_storage_keys", path, live="torch", kinds=("dangerous-global",), dangerous=("posix.system",)))
    add(
        torch_file(
            "legacy_object",
            {"state_dict": sd, "x": Reduce(os.system, sh("legacy_object"))},
            legacy=True,
            kinds=("dangerous-global",),
            dangerous=("posix.system",),
        )
    )
    path = root / "legacy_extra_pickle.pth"
    path.write_bytes(b"".join(pk) + pickle.dumps(Reduce(os.system, sh("legacy_extra_pickle")), protocol=2) + rest)
    add(Case("legacy_extra_pickle", path, kinds=("hidden-pickle", "dangerous-global"), dangerous=("posix.system",)))

    # -- torch's tar format (before 0.1.10): torch.load tries it first and unpickles all three members ----
    from factory import tar_members, write_tar

    members = tar_members(sd)
    evil = pickle.dumps(Reduce(os.system, sh("tar_pickle_member")), protocol=2)
    path = write_tar(root / "tar_pickle_member.pth", {**members, "pickle": evil})
    add(Case("tar_pickle_member", path, live="torch", kinds=("dangerous-global",), dangerous=("posix.system",)))
    evil = pickle.dumps([Reduce(os.system, sh("tar_storage_views"))], protocol=2)  # after every storage's bytes
    views = members["storages"][: -len(pickle.dumps([], protocol=2))] + evil
    path = write_tar(root / "tar_storage_views.pth", {**members, "storages": views})
    add(Case("tar_storage_views", path, live="torch", kinds=("dangerous-global",), dangerous=("posix.system",)))

    # -- a payload nested deep inside a training checkpoint ---------------------------------------
    train = {
        "epoch": 3,
        "state_dict": sd,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "hook": [Reduce(os.system, sh("training_nested"))]}}},
        "hyper_parameters": {"lr": 0.1},
    }
    add(torch_file("training_nested", train, kinds=("dangerous-global",), dangerous=("posix.system",)))

    # -- zip tricks --------------------------------------------------------------------------------
    evil_pkl = pickle.dumps(Reduce(os.system, sh("zip_renamed_member")), protocol=2)
    path = write_zip(root / "zip_renamed_member.pth", [*zip_members(benign_zip), ("_benign/data/99", evil_pkl)])
    add(Case("zip_renamed_member", path, readable=True, kinds=("dangerous-global",), dangerous=("posix.system",)))
    evil_pkl = pickle.dumps(Reduce(os.system, sh("zip_renamed_pickle")), protocol=2)
    path = write_zip(root / "zip_renamed_pickle.pth", [*zip_members(benign_zip), ("_benign/extra.bin", evil_pkl)])
    add(Case("zip_renamed_pickle", path, readable=True, kinds=("dangerous-global",), dangerous=("posix.system",)))
    members = zip_members(benign_zip)
    data_pkl = next(d for n, d in members if n.endswith("/data.pkl"))
    evil_pkl = pickle.dumps(Reduce(os.system, sh("zip_duplicate_name")), protocol=2)
    path = write_zip(root / "zip_duplicate_name.pth", [*members, ("_benign/data.pkl", evil_pkl)])
    add(Case("zip_duplicate_name", path, kinds=("zip-duplicate", "dangerous-global"), dangerous=("posix.system",)))
    evil_pkl = pickle.dumps(Reduce(os.system, sh("zip_second_archive")), protocol=2)
    path = write_zip(root / "zip_second_archive.pth", [*members, ("zzz/data.pkl", evil_pkl)])
    add(Case("zip_second_archive", path, kinds=("zip-duplicate", "dangerous-global"), dangerous=("posix.system",)))

    def patch_member(name: str, member: str, local_at: int, central_at: int, value: int, **kw: object) -> None:
        """Overwrite a 16-bit field of one member in both its local header and its central record."""
        data = bytearray(benign_zip.read_bytes())
        with zipfile.ZipFile(benign_zip) as zf:
            info = zf.getinfo(member)
        struct.pack_into("<H", data, info.header_offset + local_at, value)
        cd = data.find(b"PK\x01\x02" + bytes(data[info.header_offset + 4 : info.header_offset + 6]))
        while cd >= 0 and data[cd + 46 : cd + 46 + len(member)] != member.encode():
            cd = data.find(b"PK\x01\x02", cd + 4)
        struct.pack_into("<H", data, cd + central_at, value)
        path = root / f"{name}.pth"
        path.write_bytes(bytes(data))
        add(Case(name, path, **kw))  # type: ignore[arg-type]

    patch_member("zip_unsupported_method", "_benign/data/0", 8, 10, 1, kinds=("zip-corrupt",))  # "shrink"
    patch_member("zip_encrypted_member", "_benign/data/0", 6, 8, 1, kinds=("zip-corrupt",))

    # -- a benign pickle followed by a malicious one -----------------------------------------------
    evil_pkl = pickle.dumps(Reduce(os.system, sh("benign_then_evil")), protocol=2)
    path = replace_member(benign_zip, root / "benign_then_evil.pth", "/data.pkl", data_pkl + evil_pkl)
    add(
        Case(
            "benign_then_evil",
            path,
            readable=True,
            kinds=("hidden-pickle", "dangerous-global"),
            dangerous=("posix.system",),
        )
    )
    add(
        bare(
            "bare_benign_then_evil",
            pickle.dumps({"w": [1.0]}, protocol=2)
            + pickle.dumps(Reduce(os.system, sh("bare_benign_then_evil")), protocol=2),
            kinds=("hidden-pickle", "dangerous-global"),
            dangerous=("posix.system",),
        )
    )
    cases[-1].live = None  # pickle.load reads only the first one
    add(
        zip_with_pkl(
            "evil_then_garbage",
            proto0(f"cos\nsystem\n(S'{sh('evil_then_garbage')}'\ntR") + b"\xff" * 64,
            kinds=("invalid-pickle", "dangerous-global"),
            dangerous=("os.system",),
        )
    )
    # (live: pickle.load runs the REDUCE, then fails on the garbage)

    if payloads_only:
        return cases

    # -- resource bombs ----------------------------------------------------------------------------
    add(zip_with_pkl("dup_bomb", b"\x80\x02]" + b"2" * 1_500_000 + b".", kinds=("invalid-pickle",), bounded=True))
    add(zip_with_pkl("memo_bomb", b"\x80\x04]" + b"\x94" * 1_200_000 + b".", kinds=("invalid-pickle",), bounded=True))
    add(
        zip_with_pkl(
            "memo_put_bomb",
            b"\x80\x02]" + b"".join(b"r" + struct.pack("<I", i) for i in range(0, 1_100_000)) + b".",
            kinds=("invalid-pickle",),
            bounded=True,
        )
    )
    add(zip_with_pkl("mark_bomb", b"\x80\x02" + b"(" * 200_000 + b".", kinds=("invalid-pickle",), bounded=True))
    add(
        zip_with_pkl(
            "deep_tuple_key",  # hashing this crashes CPython 3.11 if nothing bounds the depth
            b"\x80\x02})" + b"\x85" * 150_000 + b"K\x01s.",
            kinds=("corrupt",),
            bounded=True,
        )
    )
    add(
        zip_with_pkl("deep_list", b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", kinds=("corrupt",), bounded=True)
    )
    laughs: object = [0]
    for _ in range(40):
        laughs = [laughs] * 10  # 10**40 paths through 41 objects
    add(torch_file("billion_laughs", {"state_dict": sd, "laughs": laughs}, readable=True, scan_exit=0, bounded=True))
    cases[-1].live = None
    add(
        zip_with_pkl(
            "bytes8_claims_exabytes",
            b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x" * 16 + b".",
            kinds=("invalid-pickle",),
            bounded=True,
        )
    )
    add(
        zip_with_pkl(
            "long4_claims_2gb", b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01" * 16 + b".",
            kinds=("invalid-pickle",), bounded=True,
        )
    )  # fmt: skip
    add(
        zip_with_pkl(
            "unicode_no_newline",  # protocol 0 string without its newline: reads are bounded
            b"V" + b"a" * 3_000_000,
            kinds=("invalid-pickle",),
            bounded=True,
        )
    )
    add(zip_with_pkl("build_on_global", b"\x80\x02ctorch\nFloatStorage\nN}\x86b.", kinds=("unsafe-build",)))
    big = pickle.dumps({"w": [1.0]}, protocol=2) + b"\x00" * (100 << 20)
    path = write_zip(root / "zip_deflate_bomb.pth", [("a/data.pkl", big), ("a/version", b"3\n")], compress=True)
    add(Case("zip_deflate_bomb", path, kinds=("zip-corrupt",), bounded=True))
    path = replace_member(benign_zip, root / "zip_trailing_zeros.pth", "/data.pkl", data_pkl + b"\x00" * (150 << 20))
    add(Case("zip_trailing_zeros", path, readable=True, kinds=("trailing-data",), bounded=True))

    # -- storages and tensors that lie about their sizes ---------------------------------------------
    def lying_zip(name: str, obj: object, records: dict[str, bytes], **kw: object) -> Case:
        members = [
            ("archive/data.pkl", torch_like_pickle(obj)),
            ("archive/byteorder", b"little"),
            *((f"archive/data/{k}", v) for k, v in records.items()),
            ("archive/version", b"3\n"),
        ]
        return Case(name, write_zip(root / f"{name}.pth", members), **kw)  # type: ignore[arg-type]

    st = FakeStorage("0", 1_000_000)
    add(lying_zip("storage_larger_than_record", {"w": FakeTensor(st, 0, (1000, 1000), (1000, 1))}, {"0": b"\0" * 400}, kinds=("corrupt",), bounded=True))  # fmt: skip
    st = FakeStorage("0", 100)
    add(lying_zip("tensor_past_storage", {"w": FakeTensor(st, 0, (1000,), (1,))}, {"0": b"\0" * 400}, kinds=("corrupt",)))  # fmt: skip
    add(lying_zip("tensor_negative_offset", {"w": FakeTensor(st, -5, (10,), (1,))}, {"0": b"\0" * 400}, kinds=("corrupt",)))  # fmt: skip
    st = FakeStorage("0", 1 << 60)
    add(lying_zip("storage_claims_exabytes", {"w": FakeTensor(st, 0, (1 << 30, 1 << 30), (1 << 30, 1))}, {"0": b"\0" * 64}, kinds=("corrupt",), bounded=True))  # fmt: skip
    add(lying_zip("storage_record_missing", {"w": FakeTensor(FakeStorage("7", 4), 0, (4,), (1,))}, {"0": b"\0" * 16}, kinds=("corrupt",)))  # fmt: skip
    st = FakeStorage("0", 1)
    add(
        lying_zip(
            "broadcast_terabyte_view",  # one float seen as 2**40 elements through stride 0
            {"w": FakeTensor(st, 0, (1 << 20, 1 << 20), (0, 0))},
            {"0": b"\0\0\x80\x3f"},
            readable=True,
            scan_exit=0,
            bounded=True,
        )
    )
    data = bytearray(benign_legacy.read_bytes())
    pos = len(b"".join(pk))
    data[pos : pos + 8] = struct.pack("<q", 1 << 40)
    path = root / "legacy_count_lies.pth"
    path.write_bytes(bytes(data))
    add(Case("legacy_count_lies", path, kinds=("corrupt",), bounded=True))

    # -- safetensors headers -------------------------------------------------------------------------
    def st_file(name: str, header: bytes | dict, data: bytes, *, n: int | None = None, **kw: object) -> Case:
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        path = root / f"{name}.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
        return Case(name, path, kinds=("safetensors-header",), **kw)  # type: ignore[arg-type]

    def ent(begin: int, end: int, shape: list[int] | None = None) -> dict:
        return {"dtype": "F32", "shape": shape or [(end - begin) // 4], "data_offsets": [begin, end]}

    add(st_file("st_length_overflows", {"a": ent(0, 16)}, b"\0" * 16, n=1 << 40, bounded=True))
    add(st_file("st_length_past_file", {"a": ent(0, 16)}, b"\0" * 16, n=10_000))
    add(st_file("st_length_over_100mb", {"a": ent(0, 16)}, b"\0" * 16, n=100_000_001))
    add(st_file("st_gap", {"a": ent(0, 16), "b": ent(20, 36)}, b"\0" * 36))
    add(st_file("st_overlap", {"a": ent(0, 16), "b": ent(8, 24)}, b"\0" * 24))
    add(st_file("st_duplicate_keys", b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16))  # fmt: skip
    add(st_file("st_not_utf8", b'{"a\xff\xfe": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16))
    add(st_file("st_size_mismatch", {"a": ent(0, 8, [4])}, b"\0" * 8))
    add(st_file("st_past_data", {"a": ent(0, 1 << 40, [1 << 38])}, b"\0" * 16))
    add(st_file("st_not_json", b"{not json at all", b"\0" * 16))
    add(st_file("st_negative_offset", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, b"\0" * 16))
    add(st_file("st_bad_metadata", {"__metadata__": {"a": 1}, "a": ent(0, 16)}, b"\0" * 16))

    # -- ONNX external data outside the model's folder -----------------------------------------------
    from onnx import TensorProto, helper

    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.bin").write_bytes(b"\0" * 64)

    def onnx_ext(name: str, location: str, *, setup: object = None) -> Case:
        folder = root / f"onnx_{name}"
        folder.mkdir(exist_ok=True)
        if callable(setup):
            setup(folder)
        t = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=b"\0" * 16, raw=True)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", "16")):
            e = t.external_data.add()
            e.key, e.value = k, v
        g = helper.make_graph(
            [helper.make_node("Identity", ["w"], ["y"])], "g", [], [helper.make_tensor_value_info("y", 1, [4])], [t]
        )
        path = folder / "model.onnx"
        path.write_bytes(helper.make_model(g).SerializeToString())
        return Case(name, path, kinds=("onnx-external-data",))

    add(onnx_ext("onnx_dotdot", "../outside/secret.bin"))
    add(onnx_ext("onnx_absolute", str(outside / "secret.bin")))
    add(onnx_ext("onnx_symlink", "link.bin", setup=lambda f: os.symlink(outside / "secret.bin", f / "link.bin")))
    add(onnx_ext("onnx_dir_symlink", "sub/secret.bin", setup=lambda f: os.symlink(outside, f / "sub")))
    add(onnx_ext("onnx_nul_byte", "weights\0.bin"))

    # -- not checkpoints at all ------------------------------------------------------------------------
    def raw(name: str, data: bytes, **kw: object) -> Case:
        path = root / name
        path.write_bytes(data)
        return Case(name, path, **kw)  # type: ignore[arg-type]

    add(raw("empty.pth", b"", scan_exit=2))
    add(raw("random_bytes.pth", bytes((i * 7919 + 13) % 251 for i in range(4096)), scan_exit=2))
    add(raw("zip_magic_only.pth", b"PK\x03\x04" + b"\0" * 60, scan_exit=2))
    add(raw("gzip.pth", b"\x1f\x8b\x08\x00" + b"\0" * 60, scan_exit=2))
    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    add(raw("legacy_header_cut.pth", magic + b"\x80\x02M\xe9", kinds=("invalid-pickle",)))
    folder = root / "a_directory.pth"
    folder.mkdir(exist_ok=True)
    # scan walks a folder: an empty one is a no-weight-files warning (exit 0); the reading commands refuse it
    add(Case("a_directory.pth", folder, scan_exit=0))
    add(Case("missing.pth", root / "does-not-exist.pth", scan_exit=2))
    locked = root / "locked.pth"
    locked.write_bytes(benign_zip.read_bytes())
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: the case means nothing then
        locked.chmod(0o644)
    else:
        add(Case("locked.pth", locked, scan_exit=2))
    return cases


# --------------------------------------------------------------------------------------------
# What a naive loader does with a payload (for the liveness check, in a child process)
# --------------------------------------------------------------------------------------------
NAIVE_LOADER = """
import pickle, sys, time, torch
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if kind == "torch":
            torch.load(path, weights_only=False)
        else:
            with open(path, "rb") as fh:
                pickle.load(fh)
    except BaseException:
        pass
time.sleep(0.5)  # Popen payloads run asynchronously
"""

# Kept for the modules the payloads reference (pickled by reference, never called here).
_ = (importlib, runpy, functools)
