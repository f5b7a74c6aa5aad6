"""Which pickle globals are dangerous: a capability classifier (torch-free, imports nothing it judges).

A global is **dangerous** when importing and calling it can run code, resolve other names (a universal
resolver is a gadget for any callable), start processes, or touch files, the network or the interpreter.
The judgement is a table of modules by capability, a table of single names in otherwise harmless modules,
and three rules for the names a pickle can spell:

1. **Submodules:** a module in the table covers its submodules (``os`` covers ``os.path``).
2. **Dotted re-exports:** pickle resolves ``GLOBAL torch os.system`` (protocol 4 dotted names, and
   ``STACK_GLOBAL``) by ``getattr`` from ``torch``: ``torch.os`` *is* ``os``. So every segment after the
   first that names a table module re-exported by ``import x`` (``os``, ``subprocess``, ``sys``,
   ``builtins``, ...) is read as that module: the last known module in the dotted path decides.
   Generic words that are also real submodules of benign packages (``numpy.random._pickle``,
   ``torch.types``, a project's ``trace`` or ``profile`` module) are not read as re-exports.
3. **Interpreter attributes:** a dunder segment after the first (``x.__builtins__.eval``,
   ``x.__class__.__subclasses__``, ``x.__globals__``) walks into the interpreter: dangerous.

Everything that is neither allowed nor dangerous is *unknown* (still a finding). The same judgement decides
what ``--allow-global`` may never allow.
"""

from __future__ import annotations

# -- capabilities, for the reason given with a label ------------------------------------------------------
CODE = "runs code"
RESOLVE = "resolves or imports names"
PROCESS = "runs processes"
FILES = "touches files"
NETWORK = "touches the network"
INTERP = "reaches into the interpreter"
LOADER = "loads other pickles or archives"

ALL = "*"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# every name of the module

# module -> (capability, which names: ALL, or "private" (names starting with "_"), or a frozenset of names)
_MODULES: dict[str, tuple[str, object]] = {}


def _add(cap: str, names: str, which: object = ALL) -> None:
    for m in names.split():
        _MODULES[m] = (cap, which)


_add(PROCESS, "os posix nt posixpath ntpath subprocess _posixsubprocess _subprocess _winapi pty pexpect sh plumbum")
_add(PROCESS, "multiprocessing _multiprocessing concurrent webbrowser platform _osx_support _aix_support")
_add(PROCESS, "_bootsubprocess distutils setuptools pip ensurepip venv ctypes _ctypes cffi paramiko fabric invoke")
_add(PROCESS, "torch.utils.collect_env torch.utils.cpp_extension torch.utils.benchmark torch.multiprocessing")
_add(PROCESS, "torch.testing._internal torch._inductor torch.distributed")
_add(PROCESS, "uuid", "private")  # uuid._get_command_stdout, _ifconfig_getnode, ... run ifconfig/ip/arp
_add(PROCESS, "pydoc")  # pipepager, tempfilepager, getpager run a pager; locate and render_doc import
_add(CODE, "builtins", frozenset())  # names below
_add(CODE, "code codeop pdb bdb timeit trace cProfile profile doctest unittest test runpy types")
_add(CODE, "torch.fx torch.jit torch._dynamo torch.compiler torch.export torch._export torch.package jinja2")
_add(RESOLVE, "importlib _imp imp _frozen_importlib _frozen_importlib_external zipimport pkgutil pkg_resources")
_add(RESOLVE, "site sysconfig modulefinder inspect logging.config torch.library torch.ops torch._ops torch.classes")
_add(RESOLVE, "torch._classes torch._C transformers.dynamic_module_utils")
_add(INTERP, "sys gc signal atexit threading _thread faulthandler tracemalloc asyncio")
_add(FILES, "shutil tempfile glob io _io fileinput filecmp linecache tokenize mmap dbm sqlite3 _sqlite3 mailbox")
_add(FILES, "zipfile tarfile shelve py_compile compileall pstats pyclbr logging.handlers zipapp")
_add(FILES, "torch.utils.tensorboard numpy.testing numpy.f2py numpy.distutils numpy.ctypeslib numpy.lib.format")
_add(FILES, "numpy.lib.npyio numpy.lib._npyio_impl numpy.lib._datasource numpy.lib.utils pandas.io")
_add(FILES, "gzip bz2 lzma", frozenset({"open", "GzipFile", "BZ2File", "LZMAFile"}))
_add(FILES, "pathlib", "methods")  # pathlib.Path itself is a string; pathlib.Path.write_text is a file write
_add(NETWORK, "socket _socket ssl _ssl select selectors socketserver http urllib urllib3 requests httpx aiohttp")
_add(NETWORK, "ftplib poplib imaplib nntplib smtplib smtpd telnetlib xmlrpc wsgiref asyncore asynchat")
_add(NETWORK, "fsspec huggingface_hub boto3 botocore torch.hub torch.utils.model_zoo")
_add(LOADER, "pickle _pickle pickletools marshal dill cloudpickle joblib yaml torch.serialization")

# single names in otherwise harmless modules: qualname -> capability
_NAMES: dict[str, str] = {}


def _names(cap: str, names: str) -> None:
    for n in names.split():
        _NAMES[n] = cap


_names(
    CODE,
    "builtins.eval builtins.exec builtins.compile builtins.__build_class__ builtins.execfile builtins.breakpoint "
    "builtins.help builtins.exit builtins.quit builtins.input builtins.apply "
    "builtins.type builtins.object builtins.super builtins.classmethod builtins.staticmethod builtins.property "
    "builtins.memoryview functools.partial functools.partialmethod functools.reduce functools.singledispatch "
    "functools.cached_property functools.wraps functools.update_wrapper operator.call operator.methodcaller "
    "collections.namedtuple copyreg._reconstructor copyreg.__newobj__ copyreg.__newobj_ex__ weakref.finalize "
    "torch.compile contextlib.ExitStack",
)
_names(
    RESOLVE,
    "builtins.getattr builtins.setattr builtins.delattr builtins.__import__ builtins.globals builtins.locals "
    "builtins.vars builtins.reload operator.attrgetter operator.itemgetter operator.getitem operator.setitem "
    "operator.delitem torch._load_global_deps",
)
_names(PROCESS, "uuid.getnode")
_names(
    FILES,
    "builtins.open builtins.file codecs.open _codecs.open logging.FileHandler logging.basicConfig "
    "numpy.save numpy.savez numpy.savez_compressed numpy.savetxt numpy.fromfile numpy.loadtxt numpy.genfromtxt "
    "numpy.memmap numpy.DataSource torch.save torch.from_file "
    "xml.etree.ElementTree.parse xml.etree.ElementTree.iterparse xml.dom.minidom.parse xml.sax.parse "
    "pandas.read_pickle pandas.read_csv",
)
_names(
    LOADER,
    "numpy.load torch.load torch.storage._load_from_bytes torch._utils._rebuild_device_tensor_from_numpy",
)

# Rule 2: the table modules that packages re-export by ``import x`` (``torch.os``, ``numpy.sys``). Generic
# words that name real submodules of benign packages (``numpy.random._pickle``, ``torch.types``,
# ``scipy.signal``, ``scipy.io``, a project's ``trace``/``profile``/``code`` module) are left out.
_NOT_REEXPORTS = _words(
    "_pickle types signal io code profile trace site inspect glob gc platform http test unittest select "
    "imp sh invoke fabric yaml pip mmap dbm tokenize"
)
REEXPORTED = frozenset(m for m in _MODULES if "." not in m and m not in _NOT_REEXPORTS)

# the last segment alone: process and exec entry points, whatever module re-exports them
_ENTRY_POINTS = _words(
    "system popen popen2 popen3 popen4 getoutput getstatusoutput check_output check_call Popen spawnl spawnle "
    "spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe execl execle execlp execlpe execv execve execvp execvpe "
    "posix_spawn posix_spawnp startfile pipepager tempfilepager __import__ execfile"
)

DANGEROUS_MODULES = frozenset(m for m, (_, which) in _MODULES.items() if which == ALL)
DANGEROUS_NAMES = frozenset(_NAMES)


def _module_rule(module: str, name: str) -> str | None:
    """The capability when ``module`` (or a parent of it) is in the table and covers ``name``."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        hit = _MODULES.get(".".join(parts[:i]))
        if hit is None:
            continue
        cap, which = hit
        rest = ".".join([*parts[i:], name])  # the name inside the table module (may be dotted)
        if which == ALL:
            return cap
        if which == "private" and rest.split(".")[0].startswith("_"):
            return cap
        if which == "methods" and "." in rest:
            return cap
        if isinstance(which, frozenset) and rest.split(".")[0] in which:
            return cap
        if f"{'.'.join(parts[:i])}.{rest.split('.')[0]}" in _NAMES:
            return _NAMES[f"{'.'.join(parts[:i])}.{rest.split('.')[0]}"]
        return None
    return None


def _direct(qualname: str) -> str | None:
    if qualname in _NAMES:
        return _NAMES[qualname]
    if "." not in qualname:
        return None
    # a dotted name inside a module: module.Class.attr -> judge module.Class too
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in _NAMES and i < len(parts):
            return _NAMES[".".join(parts[:i])]
        cap = _module_rule(".".join(parts[:i]), ".".join(parts[i:]))
        if cap is not None:
            return cap
    return None


# names inside a dangerous module that only look data up (on torch's weights_only allowlist too)
DATA_ONLY = frozenset({"torch.serialization._get_layout"})  # "torch.sparse_coo" -> the layout object


def danger(qualname: str) -> str | None:
    """Why ``qualname`` (``module.name`` as Python would import it) is dangerous, or None when it is not."""
    if qualname in DATA_ONLY:
        return None
    cap = _direct(qualname)
    if cap is not None:
        return cap
    parts = qualname.split(".")
    for k, seg in enumerate(parts[1:], start=1):
        if seg.startswith("__") and seg.endswith("__") and len(seg) > 4:  # rule 3
            return INTERP
        if seg in REEXPORTED and k < len(parts) - 1:  # rule 2: pkg.os.system is os.system
            cap = _direct(".".join(parts[k:]))
            if cap is None and seg == "builtins":
                cap = _NAMES.get(f"builtins.{parts[k + 1]}")
            if cap is not None:
                return cap
    if len(parts) > 1 and parts[-1] in _ENTRY_POINTS:
        return PROCESS if parts[-1] not in ("__import__", "execfile") else CODE
    return None


def is_dangerous(qualname: str) -> bool:
    """On the denylist: runs code, resolves names, runs processes, touches files, the network or the
    interpreter, or loads nested pickles (never allowed)."""
    return danger(qualname) is not None
