"""The fast path of the restricted unpickler: the C unpickler (``_pickle.Unpickler``), restricted, behind a guard.

:func:`load` returns what :func:`ckptool.formats.unpickler.load` (the pure-Python :class:`Interpreter`) returns for
the same pickle, or ``None`` when the pickle is outside what this path handles; the caller then runs the pure
interpreter, which gives the canonical result or error. Nothing is ever decided here that the pure path would
decide otherwise: on *any* error, the fast path gives up and the pure path reads the pickle again.

Why nothing from the file can run (the standard library's documented way to restrict globals,
https://docs.python.org/3/library/pickle.html#restricting-globals):

- Every global (GLOBAL, STACK_GLOBAL) goes through :meth:`_Restricted.find_class`, which returns
  :func:`unpickler.make_global`'s inert :class:`~ckptool.formats.unpickler.Global` reference (the same object the
  pure path pushes) or raises: nothing is imported, and no real class or function ever reaches the C machine.
- REDUCE calls the object on the stack. The only callables that can be there are those ``Global`` references:
  ``Global.__call__`` runs :func:`unpickler.call`, i.e. ckptool's own recorder for an allowed name (the same one the
  pure path runs), never the named function. Every other value on the stack is data (str, int, bytes, tuple, list,
  dict, set, frozenset, or one of ckptool's recorder dataclasses), and none of them is callable.
- BUILD calls ``__setstate__`` of the object it builds. The guard lets BUILD through only with a dict state on a
  value that a REDUCE, a persistent id or a global produced (one of ckptool's recorder objects, whose
  ``__setstate__`` is :func:`unpickler.build_state`, the pure path's BUILD); on a built-in container it would be
  refused (built-ins have no ``__setstate__`` and no ``__dict__``) and the pure path reads the pickle.
- Persistent ids go to the reader's own ``persistent_load`` (which records storages).
- The opcodes that reach beyond this are never given to the C unpickler: NEWOBJ, NEWOBJ_EX, INST, OBJ (class
  instantiation), EXT1/2/4 (the copyreg registry), NEXT_BUFFER / READONLY_BUFFER, PERSID and the protocol-0 text
  opcodes: the guard sends such pickles to the pure interpreter, which refuses or records them as it always does.

What the C unpickler does not bound, the guard (:func:`guard`, one pass over the opcodes before the C unpickler
sees a byte) does, with the pure path's own limits:

- memo indexes: only dense, in-order memo entries (what every pickler writes); the C memo allocates up to twice
  the largest index, so ``LONG_BINPUT 2**31`` would allocate gigabytes. At most ``memo_bound(size)`` entries.
- length claims: every BINBYTES / BINUNICODE / LONG4 / FRAME length must fit in the bytes that exist (the C
  unpickler allocates a claimed BINBYTES8 length before reading it).
- nesting: the C unpickler hashes dict keys and set items, and CPython 3.11 hashes tuples recursively without a
  recursion guard (a 150k-deep tuple key crashes it) and without caching (a tuple DAG ``t = (t, t)`` 60 levels
  deep costs 2**60). The guard tracks, for every tuple, its size with shared parts counted each time they are
  reached, and hands the pickle to the pure path if one exceeds :data:`MAX_TUPLE_WEIGHT`. Lists, dicts and sets
  nest freely in the C machine (it is not recursive) and :func:`unpickler.check_nesting` refuses deep ones after
  the load, as the pure path does at STOP.
- the opcode count, stack size and MARK depth: the pure path's bounds; the guard falls back past them.
"""

from __future__ import annotations

import _pickle
import io
import os
import re
import struct
from typing import Any

from . import unpickler
from .unpickler import (
    MAX_DEPTH,
    MAX_MARK_DEPTH,
    MAX_STACK,
    check_nesting,
    make_global,
    memo_bound,
    ops_bound,
    puts_follow,
    token_index,
)

# A tuple whose expanded size (tuple nodes, shared ones counted each time) exceeds this goes to the pure path.
# Real checkpoints build tuples of weight <= 5 (a persistent id, a tensor's size and stride).
MAX_TUPLE_WEIGHT = MAX_DEPTH

# abstract values of the guard's stack: >= 0 a hashable value (0: an atom; 1..: a tuple of that weight);
# UNK + w: what a REDUCE / persistent id / global produced (w: the weight of its arguments); < 0: containers
UNK = 1 << 20
LIST, DICT, SET, NONE, BYTES_ = -1, -2, -3, -4, -5

_U4 = struct.Struct("<I").unpack_from
_U8 = struct.Struct("<Q").unpack_from
_I4 = struct.Struct("<i").unpack_from


class _Fallback(Exception):
    """The fast path does not handle this pickle: read it with the pure interpreter."""


def enabled() -> bool:
    """The fast path is on unless ``CKPTOOL_PURE_PICKLE=1`` (for debugging and the differential tests)."""
    return os.environ.get("CKPTOOL_PURE_PICKLE", "") in ("", "0")


def _weight(code: int) -> int:
    if code < 0:
        return 0
    return code - UNK if code >= UNK else code


def guard(data: Any, pos: int = 0, end: int | None = None, *, tensors: bool = True) -> int | None:
    """One pass over the pickle at ``data[pos:end]``: the position after its STOP when the C unpickler may read
    it (see the module docstring), else None. Never raises for a malformed pickle (it returns None).
    ``tensors=False`` walks torch's tensor records opcode by opcode too (the differential tests compare both)."""
    try:
        return _guard(data, pos, len(data) if end is None else min(end, len(data)), tensors)
    except (IndexError, struct.error, ValueError, TypeError):
        return None


def _guard(data: Any, pos: int, n: int, tensors: bool = True) -> int | None:
    size = n - pos
    max_memo, max_ops = memo_bound(size), ops_bound(size)
    stack: list[int] = []
    marks: list[int] = []
    memo: list[int] = []
    push = stack.append
    pop = stack.pop
    mpush = memo.append
    ops = 0
    while pos < n:
        op = data[pos]
        pos += 1
        ops += 1
        if op == 0x72:  # LONG_BINPUT
            i = _U4(data, pos)[0]
            pos += 4
            if i != len(memo) or not stack or (marks and marks[-1] == len(stack)) or i >= max_memo:
                return None
            mpush(stack[-1])
        elif op == 0x68:  # BINGET
            if tensors and marks:  # a torch tensor record starts with the GET of its rebuild function
                rec = _TENSOR(data, pos - 1, n)
                if rec is not None and _tensor_record(rec, stack, marks, memo, max_memo):
                    pos = rec.end()
                    ops += pos - rec.start()  # (an upper bound: every opcode is at least a byte)
                    continue
            i = data[pos]
            pos += 1
            if i >= len(memo):
                return None
            push(memo[i])
        elif op == 0x4B:  # BININT1
            pos += 1
            push(0)
        elif op == 0x28:  # MARK
            if len(marks) >= MAX_MARK_DEPTH:
                return None
            marks.append(len(stack))
        elif op == 0x58:  # BINUNICODE
            if tensors and marks:  # a state_dict's key, then (in torch's files) its tensor record: a run of them
                at = _tensor_run(data, pos - 1, n, stack, marks, memo, max_memo)
                if at >= pos:
                    ops += at - pos + 1
                    pos = at
                    continue
            pos += 4 + _U4(data, pos)[0]
            if pos > n:
                return None
            push(0)
        elif op == 0x74:  # TUPLE
            if not marks:
                return None
            m = marks.pop()
            w = 1
            for c in stack[m:]:
                if c > 0:
                    w += c - UNK if c >= UNK else c
            del stack[m:]
            if w > MAX_TUPLE_WEIGHT:
                return None
            push(w)
        elif op == 0x85 or op == 0x86 or op == 0x87:  # TUPLE1, TUPLE2, TUPLE3
            k = op - 0x84
            if len(stack) - (marks[-1] if marks else 0) < k:
                return None
            w = 1
            for c in stack[-k:]:
                if c > 0:
                    w += c - UNK if c >= UNK else c
            del stack[-k:]
            if w > MAX_TUPLE_WEIGHT:
                return None
            push(w)
        elif op == 0x52:  # REDUCE
            if len(stack) - (marks[-1] if marks else 0) < 2:
                return None
            args = pop()
            pop()
            if not 0 < args < UNK:  # arguments must be a tuple (whose weight the result inherits)
                return None
            push(UNK + args)
        elif op == 0x51:  # BINPERSID
            if len(stack) - (marks[-1] if marks else 0) < 1:
                return None
            pid = pop()
            push(UNK + _weight(pid))
        elif op == 0x88 or op == 0x89 or op == 0x4A or op == 0x4D or op == 0x47:  # TRUE FALSE BININT BININT2 FLOAT
            pos += (0, 0, 4, 2, 8)[(0x88, 0x89, 0x4A, 0x4D, 0x47).index(op)]
            push(0)
        elif op == 0x29:  # EMPTY_TUPLE
            push(1)
        elif op == 0x71:  # BINPUT
            i = data[pos]
            pos += 1
            if i != len(memo) or not stack or (marks and marks[-1] == len(stack)):
                return None
            mpush(stack[-1])
        elif op == 0x94:  # MEMOIZE
            if not stack or (marks and marks[-1] == len(stack)) or len(memo) >= max_memo:
                return None
            mpush(stack[-1])
        elif op == 0x6A:  # LONG_BINGET
            if tensors and marks:
                rec = _TENSOR(data, pos - 1, n)
                if rec is not None and _tensor_record(rec, stack, marks, memo, max_memo):
                    pos = rec.end()
                    ops += pos - rec.start()  # (an upper bound: every opcode is at least a byte)
                    continue
            i = _U4(data, pos)[0]
            pos += 4
            if i >= len(memo):
                return None
            push(memo[i])
        elif op == 0x75 or op == 0x73:  # SETITEMS, SETITEM
            if op == 0x75:
                if not marks:
                    return None
                m = marks.pop()
                if (len(stack) - m) % 2:
                    return None
                del stack[m:]
            else:
                if len(stack) - (marks[-1] if marks else 0) < 2:
                    return None
                del stack[-2:]
            if not stack or (marks and marks[-1] == len(stack)):
                return None
            t = stack[-1]
            if t != DICT and t < UNK:
                return None
        elif op == 0x65 or op == 0x61:  # APPENDS, APPEND
            if op == 0x65:
                if not marks:
                    return None
                del stack[marks.pop() :]
            else:
                if len(stack) - (marks[-1] if marks else 0) < 1:
                    return None
                pop()
            if not stack or (marks and marks[-1] == len(stack)) or stack[-1] != LIST:
                return None
        elif op == 0x7D:  # EMPTY_DICT
            push(DICT)
        elif op == 0x5D:  # EMPTY_LIST
            push(LIST)
        elif op == 0x8C:  # SHORT_BINUNICODE
            pos += 1 + data[pos]
            if pos > n:
                return None
            push(0)
        elif op == 0x4E:  # NONE
            push(NONE)
        elif op == 0x63:  # GLOBAL: "module\nname\n" (find_class judges it)
            for _ in range(2):
                nl = data.find(b"\n", pos, min(n, pos + 4096)) if hasattr(data, "find") else -1
                if nl < 0:
                    return None
                pos = nl + 1
            push(UNK)
        elif op == 0x93:  # STACK_GLOBAL
            if len(stack) - (marks[-1] if marks else 0) < 2:
                return None
            del stack[-2:]
            push(UNK)
        elif op == 0x62:  # BUILD: a dict state on a recorder object (its __setstate__ is the pure path's BUILD)
            if len(stack) - (marks[-1] if marks else 0) < 2:
                return None
            state = pop()
            if state != DICT or stack[-1] < UNK:
                return None
        elif op == 0x80:  # PROTO
            pos += 1
        elif op == 0x95:  # FRAME
            ln = _U8(data, pos)[0]
            pos += 8
            if pos + ln > n:
                return None
        elif op == 0x2E:  # STOP
            if len(stack) != 1 or marks or ops > max_ops:
                return None
            return pos
        elif op == 0x30:  # POP
            if marks and marks[-1] == len(stack):
                marks.pop()
            elif stack:
                pop()
            else:
                return None
        elif op == 0x31:  # POP_MARK
            if not marks:
                return None
            del stack[marks.pop() :]
        elif op == 0x32:  # DUP
            if not stack:
                return None
            push(stack[-1])
        elif op == 0x8F:  # EMPTY_SET
            push(SET)
        elif op == 0x90:  # ADDITEMS
            if not marks:
                return None
            del stack[marks.pop() :]
            if not stack or (marks and marks[-1] == len(stack)) or stack[-1] != SET:
                return None
        elif op == 0x91:  # FROZENSET (items hashed: their tuple weights are bounded above)
            if not marks:
                return None
            del stack[marks.pop() :]
            push(0)
        elif op == 0x64:  # DICT
            if not marks:
                return None
            m = marks.pop()
            if (len(stack) - m) % 2:
                return None
            del stack[m:]
            push(DICT)
        elif op == 0x6C:  # LIST
            if not marks:
                return None
            del stack[marks.pop() :]
            push(LIST)
        elif op in _COUNTED:  # BINBYTES, SHORT_BINBYTES, BINBYTES8, BINUNICODE8, BINSTRING, SHORT_BINSTRING, LONG1/4
            width, signed = _COUNTED[op]
            if width == 1:
                ln = data[pos]
            elif width == 4:
                ln = _I4(data, pos)[0] if signed else _U4(data, pos)[0]
            else:
                ln = _U8(data, pos)[0]
            pos += width
            if ln < 0 or pos + ln > n:
                return None
            pos += ln
            push(0)
        else:  # everything else (NEWOBJ, INST, OBJ, EXT*, buffers, PERSID, protocol-0 text, BYTEARRAY8): pure path
            return None
        if len(stack) > MAX_STACK:
            return None
    return None


# ---- torch's tensor records, in one step ----
# At 100k tensors the opcode-by-opcode walk above costs ~1.2 us per opcode, 30 opcodes per tensor. torch.save writes
# every tensor of a state_dict as the same opcode sequence (``_rebuild_tensor_v2(storage, offset, size, stride,
# requires_grad, OrderedDict())``, the storage a persistent id), so the guard recognises that sequence with one
# regular expression and applies, in one step, exactly the abstract effect the walk above would compute for it:
#
#   GET f  MARK  MARK GET GET X<key> PUT GET INT TUPLE PUT  BINPERSID  INT <size> PUT? <stride> PUT? BOOL
#          GET g EMPTY_TUPLE REDUCE PUT  TUPLE PUT  REDUCE PUT
#
# (<size>, <stride>: EMPTY_TUPLE, 1-3 ints and TUPLE1-3, or MARK 4-32 ints TUPLE; INT: BININT1/BININT2/BININT;
# GET / PUT: the 1- or 4-byte forms; the storage key at most 12 bytes.) Every opcode's argument is read with its
# exact length (no opcode boundary is guessed), and the sequence is self-contained: it pops only what it pushed,
# and closes only the MARKs it opened. Its effect on the walk's state, checked as the walk checks it:
#
# - the stack gains one value, UNK + w: the tensor, a REDUCE result whose argument tuple weighs w;
# - the memo gains one entry per PUT, which must be numbered len(memo), len(memo) + 1, ... (dense, in order, below
#   ``memo_bound``), with the codes the walk gives them: the key 0 (a string), the persistent id p, the size and
#   stride tuples 1, the hooks ``OrderedDict()`` UNK + 1, the argument tuple w, the tensor UNK + w;
# - p = 1 + the weights of the GET'd 'storage', storage class and location entries (so a GET of a tuple is
#   weighed as the walk weighs it), w = 4 + p (the persistent id counts p, size 1, stride 1, hooks 1); both at most
#   MAX_TUPLE_WEIGHT;
# - every GET names an entry made before the record (the walk would accept those; later ones are walked);
# - MARK depth and stack size stay within the walk's bounds (checked with the record's peak: 3 MARKs, 64 values).
#
# Anything else (another layout, a first occurrence that GLOBALs its storage class, a failed check, a bound within
# reach) is read by the walk opcode by opcode, which decides it exactly. tests/formats/test_fastpickle.py compares the
# guard with and without this step on torch's pickles, crafted variants and the hostile corpus.
_G = rb"(h[\x00-\xff]|j[\x00-\xff]{4})"  # a GET (captured)
_P = rb"(q[\x00-\xff]|r[\x00-\xff]{4})"  # a PUT (captured)
_I = rb"(?:K[\x00-\xff]|M[\x00-\xff]{2}|J[\x00-\xff]{4})"  # BININT1 / BININT2 / BININT
_T = rb"(\)|" + _I + rb"\x85|" + _I + rb"{2}\x86|" + _I + rb"{3}\x87|\(" + _I + rb"{4,32}t)"  # a tuple of ints
_KEY = rb"(X(?:" + b"|".join(bytes([k]) + rb"\x00\x00\x00[\x00-\xff]{%d}" % k for k in range(1, 13)) + rb"))"
# groups: 1 f, 2 'storage', 3 storage class, 4 storage key, 5 its PUT, 6 location, 7 persistent id PUT, 8 size,
# 9 its PUT, 10 stride, 11 its PUT, 12 OrderedDict, 13 hooks PUT, 14 arguments PUT, 15 tensor PUT
TENSOR_RECORD = re.compile(
    _G + rb"\(\(" + _G + _G + _KEY + _P + _G + _I + rb"t" + _P + rb"Q" + _I + _T + _P + rb"?" + _T + _P + rb"?"
    + rb"[\x88\x89]" + _G + rb"\)R" + _P + rb"t" + _P + rb"R" + _P
)  # fmt: skip
_TENSOR = TENSOR_RECORD.match
_RECORD_STACK = 64  # at most this many values above the record's start while it runs (3 + 2 x 32 ints)


def _tensor_record(m: re.Match[bytes], stack: list[int], marks: list[int], memo: list[int], max_memo: int) -> bool:
    """Apply a matched tensor record's effect to the guard's state (see above). False (nothing changed): a check
    failed or is too close to a bound to take in one step, and the walk reads the record opcode by opcode."""
    f, st, cls, _, kput, loc, pput, _, sput, _, tput, g, hput, aput, vput = m.groups()
    n = len(memo)
    if len(marks) + 3 > MAX_MARK_DEPTH or len(stack) + _RECORD_STACK > MAX_STACK:
        return False
    if len(f) + len(st) + len(cls) + len(loc) + len(g) == 10:  # five BINGETs (what torch writes)
        if max(f[1], st[1], cls[1], loc[1], g[1]) >= n:
            return False
        cs, cc, cl = memo[st[1]], memo[cls[1]], memo[loc[1]]
    else:
        if max(token_index(f), token_index(st), token_index(cls), token_index(loc), token_index(g)) >= n:
            return False
        cs, cc, cl = memo[token_index(st)], memo[token_index(cls)], memo[token_index(loc)]
    p = 1  # the persistent id's weight: 1 + the GET'd entries' weights (_weight, inlined)
    if cs > 0:
        p += cs - UNK if cs >= UNK else cs
    if cc > 0:
        p += cc - UNK if cc >= UNK else cc
    if cl > 0:
        p += cl - UNK if cl >= UNK else cl
    w = 4 + p
    if w > MAX_TUPLE_WEIGHT:
        return False
    if sput is not None and tput is not None:
        puts: tuple[bytes, ...] = (kput, pput, sput, tput, hput, aput, vput)
        codes: tuple[int, ...] = (0, p, 1, 1, UNK + 1, w, UNK + w)
    else:  # a size or stride tuple without a PUT (torch does not memoize the empty tuple)
        puts = tuple(t for t in (kput, pput, sput, tput, hput, aput, vput) if t is not None)
        codes = (0, p, *([1] * (len(puts) - 5)), UNK + 1, w, UNK + w)
    if n + len(puts) > max_memo or not puts_follow(puts, n):
        return False
    memo.extend(codes)
    stack.append(UNK + w)
    return True


def _tensor_run(data: Any, pos: int, n: int, stack: list[int], marks: list[int], memo: list[int], max_memo: int) -> int:
    """From a BINUNICODE at ``pos``: take ``key PUT <tensor record>`` units in one step each while they come (a
    state_dict's SETITEMS batch); the position after the last one taken (``pos``: none). The key is a string
    (code 0) memoized by the PUT that follows it, checked as the walk checks BINUNICODE and PUT."""
    while pos < n and data[pos] == 0x58:
        q = pos + 5 + _U4(data, pos + 1)[0]
        if q + 2 > n:
            break
        if data[q] == 0x72:  # LONG_BINPUT
            if q + 5 > n:
                break
            i, r = _U4(data, q + 1)[0], q + 5
        elif data[q] == 0x71:  # BINPUT
            i, r = data[q + 1], q + 2
        else:
            break
        k = len(memo)
        if i != k or k >= max_memo:
            break
        m = _TENSOR(data, r, n)
        if m is None:
            break
        stack.append(0)
        memo.append(0)
        if not _tensor_record(m, stack, marks, memo, max_memo):
            stack.pop()
            memo.pop()
            break
        pos = m.end()
    return pos


_COUNTED = {
    0x42: (4, False),  # BINBYTES
    0x43: (1, False),  # SHORT_BINBYTES
    0x8E: (8, False),  # BINBYTES8
    0x8D: (8, False),  # BINUNICODE8
    0x54: (4, True),  # BINSTRING
    0x55: (1, False),  # SHORT_BINSTRING
    0x8A: (1, False),  # LONG1
    0x8B: (4, True),  # LONG4
}


class _Restricted(_pickle.Unpickler):
    """The C unpickler with ckptool's globals and persistent ids (see the module docstring)."""

    def __init__(
        self, file: Any, persistent: unpickler.PersistentLoad | None, inert: set[str] | None, where: str
    ) -> None:
        super().__init__(file, fix_imports=False, encoding="latin1")
        self._persistent = persistent
        self._inert = inert
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        g = make_global(module, name, torchscript=False, inert=self._inert)
        if g.qualname in _PURE_ONLY:
            raise _Fallback(g.qualname)
        return g

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise _Fallback("persistent id")
        return self._persistent(pid)


# recorders that return a mutable built-in container that C opcodes could then mutate unlike the pure path
_PURE_ONLY = frozenset({"builtins.bytearray"})


def load(
    buf: Any,
    pos: int = 0,
    *,
    end: int | None = None,
    persistent_load: unpickler.PersistentLoad | None = None,
    where: str = "pickle",
    inert: set[str] | None = None,
) -> tuple[Any, int] | None:
    """(object, position after STOP) as :func:`unpickler.load` would return it, or None: read it with the pure
    interpreter (which also gives the canonical error for anything malformed or refused)."""
    stop = guard(buf, pos, end)
    if stop is None:
        return None
    seen: set[str] = set()
    try:
        with unpickler.c_build():
            obj = _Restricted(io.BytesIO(buf[pos:stop]), persistent_load, seen, where).load()
        check_nesting(obj, where)
    except Exception:  # any error at all: the pure path reads it again and says what is wrong
        return None
    if inert is not None:
        inert |= seen
    return obj, stop


def _fast_path(buf: Any, pos: int = 0, **kw: Any) -> tuple[Any, int] | None:
    """:data:`unpickler.FAST_PATH`: :func:`load`, unless ``CKPTOOL_PURE_PICKLE=1`` (checked at every call)."""
    return load(buf, pos, **kw) if enabled() else None


unpickler.FAST_PATH = _fast_path
unpickler.TENSOR_RECORD = TENSOR_RECORD
