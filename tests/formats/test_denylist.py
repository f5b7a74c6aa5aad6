"""Scan labels: gadget globals (resolvers, process runners, file/network access, dotted re-exports) are
labelled dangerous, not unknown; benign data classes stay unknown. The gadget corpus is written as real
protocol-4 pickles (nothing is ever loaded), and each name is proven real: pickle's own ``find_class`` resolves
it to the callable a ``pickle.load`` would call."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

from ckptool.errors import UsageError
from ckptool.formats.denylist import REEXPORTED, danger
from ckptool.formats.unpickler import ALLOWED, check_allowable
from ckptool.scan import DANGEROUS, UNKNOWN, classify

# (module, dotted name inside it): each one calls, resolves, spawns, reads/writes or connects when REDUCEd
GADGETS = [
    ("pydoc", "locate"),  # universal resolvers
    ("logging.config", "_resolve"),
    ("pkgutil", "resolve_name"),
    ("importlib", "import_module"),
    ("operator", "attrgetter"),
    ("pydoc", "pipepager"),  # shell runners
    ("pydoc", "tempfilepager"),
    ("imaplib", "IMAP4_stream"),
    ("_osx_support", "_read_output"),
    ("_osx_support", "_find_build_tool"),
    ("torch.utils.collect_env", "run"),
    ("uuid", "_get_command_stdout"),
    ("subprocess", "run"),
    ("os", "popen"),
    ("multiprocessing.util", "spawnv_passfds"),
    ("timeit", "timeit"),  # code runners
    ("cProfile", "run"),
    ("runpy", "run_path"),
    ("doctest", "debug_script"),
    ("code", "InteractiveInterpreter"),
    ("torch", "os.system"),  # dotted re-exports: pickle getattr()s its way to os.system
    ("numpy.lib._utils_impl", "os.system"),
    ("torch.serialization", "pickle.loads"),
    ("torch", "builtins.exec"),
    ("torch.hub", "urlopen"),
    ("shutil", "rmtree"),  # files
    ("pathlib", "Path.write_text"),
    ("codecs", "open"),
    ("tempfile", "mkstemp"),
    ("glob", "glob"),
    ("socket", "create_connection"),  # network
    ("urllib.request", "urlopen"),
    ("http.client", "HTTPConnection"),
    ("ftplib", "FTP"),
    ("ctypes", "CDLL"),  # native code
]

BENIGN = [
    "numpy.random._pickle.__randomstate_ctor",  # a real numpy submodule named like the _pickle module
    "argparse.Namespace",
    "mypkg.profile.Settings",  # a project's own profile / trace / code / types modules
    "mypkg.trace.Config",
    "mypkg.code.Model",
    "torch.types.Number",
    "torch.nn.modules.linear.Linear",
    "pathlib.PosixPath",
    "uuid.UUID",
    "re.compile",
    "builtins.dict",
    "gzip.decompress",
    "__main__.Net",
]


def _gadget_pickle(module: str, name: str) -> bytes:
    """PROTO 4, the global by STACK_GLOBAL, called with one string argument: what pickle.load would run."""

    def s(text: str) -> bytes:
        b = text.encode()
        return b"\x8c" + struct.pack("<B", len(b)) + b

    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s("echo pwned") + b"\x85R."


@pytest.mark.parametrize(("module", "name"), GADGETS, ids=[f"{m}.{n}" for m, n in GADGETS])
def test_gadget_is_real(module: str, name: str) -> None:
    """pickle's own resolver (protocol 4: dotted names through getattr) finds the object; nothing is called."""
    up = pickle._Unpickler(__import__("io").BytesIO(b""))
    up.proto = 4
    assert callable(up.find_class(module, name))


@pytest.mark.parametrize(("module", "name"), GADGETS, ids=[f"{m}.{n}" for m, n in GADGETS])
def test_gadget_labelled_dangerous(module: str, name: str) -> None:
    assert classify(f"{module}.{name}") == DANGEROUS
    assert danger(f"{module}.{name}") is not None


def test_gadget_corpus_scan(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    paths = []
    for i, (module, name) in enumerate(GADGETS):
        p = tmp_path / f"gadget{i:02d}.pkl"
        p.write_bytes(_gadget_pickle(module, name))
        paths.append(p)
    r = cli("scan", "--json", *paths)
    assert r.exit_code == 1  # findings, as before
    files = json.loads(r.stdout)["files"]
    labels = {g["name"]: g["verdict"] for f in files for g in f["globals"]}
    assert labels == {f"{m}.{n}": DANGEROUS for m, n in GADGETS}
    assert all(any(x["kind"] == "dangerous-global" for x in f["findings"]) for f in files)
    # the message says what the global can do
    msgs = " ".join(x["message"] for f in files for x in f["findings"])
    for why in ("resolves or imports names", "runs processes", "touches files", "touches the network", "runs code"):
        assert why in msgs


@pytest.mark.parametrize("name", BENIGN)
def test_benign_stays_unknown(name: str) -> None:
    assert classify(name) == UNKNOWN
    assert check_allowable([name])  # --allow-global may allow it


@pytest.mark.parametrize(
    "name", ["mod.__builtins__.eval", "x.__class__.__subclasses__", "a.b.__globals__", "mymod.sys.modules"]
)
def test_interpreter_attribute_walks(name: str) -> None:
    assert classify(name) == DANGEROUS


def test_dangerous_never_allowable() -> None:
    for module, name in GADGETS:
        with pytest.raises(UsageError):
            check_allowable([f"{module}.{name}"])


def test_allowlist_never_dangerous() -> None:
    assert not [n for n in ALLOWED if danger(n)]
    assert "os" in REEXPORTED and "_pickle" not in REEXPORTED
