"""Architectures named as ``module.path:callable`` (and ``torchvision:<builder>``).

This is the one module of ``ckptool.arch`` that uses torch, and it imports it only inside functions:
importing ``ckptool.arch`` (or the registry) stays torch-free. The callable is imported, called with no
arguments (or with ``--arch-arg key=value`` pairs, and ``num_classes`` when asked), and instantiated on
torch's ``meta`` device, so that even a 500 MB model costs no memory. Its ``named_modules()`` and
``state_dict()`` then give the same data a registry architecture has: the module sequence, the expected
keys, shapes and dtypes.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from .._extras import require
from ..errors import UnknownArchError, UsageError
from .spec import WEIGHT_LAYER_TYPES, ArchSpec, ModuleSpec

TARGET_RE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
TORCHVISION = "torchvision:"


def parse_value(text: str) -> Any:
    """An ``--arch-arg`` value: a Python literal when it is one (10, 0.5, True, None, (1, 2)), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _import_module(mod: str, target: str) -> Any:
    def attempt() -> Any:
        return importlib.import_module(mod)

    try:
        try:
            return attempt()
        except ModuleNotFoundError as e:
            # the console script does not put the current folder on sys.path (python -m does): a user who
            # names ``mypkg.nets:ONet`` from their project folder means that folder
            cwd = os.getcwd()
            ours = e.name is not None and (mod == e.name or mod.startswith(e.name + "."))
            if ours and cwd not in sys.path:
                sys.path.append(cwd)
                return attempt()
            raise
    except ModuleNotFoundError as e:
        raise UnknownArchError(
            f"--arch {target}: cannot import {mod!r} ({e})",
            hint="install it, or run from the folder that holds it, or add that folder to PYTHONPATH",
        ) from None
    except Exception as e:  # the user's own module failed while importing
        raise UnknownArchError(f"--arch {target}: importing {mod!r} failed: {type(e).__name__}: {e}") from None


def _candidates(module: Any) -> list[str]:
    """Public classes and functions defined in ``module`` (for the 'did you mean' hint)."""
    out = []
    for k, v in vars(module).items():
        if k.startswith("_") or not callable(v):
            continue
        if getattr(v, "__module__", None) == module.__name__:
            out.append(k)
    return out[:12]


def _resolve_callable(target: str) -> tuple[Callable[..., Any], str, str]:
    if target.startswith(TORCHVISION):
        attr = target[len(TORCHVISION) :]
        if importlib.util.find_spec("torchvision") is None:
            raise UnknownArchError(
                f"--arch {target}: torchvision is not installed",
                hint="pip install torchvision, or use a registry name (ckptool archs) or module:callable",
            )
        mod = "torchvision.models"
    else:
        if not TARGET_RE.fullmatch(target):
            raise UnknownArchError(
                f"--arch {target!r} is not of the form module.path:callable",
                hint="e.g. mypkg.nets:ONet; see ckptool archs for the built-in names",
            )
        mod, attr = target.split(":", 1)
    module = _import_module(mod, target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = _candidates(module)
            raise UnknownArchError(
                f"--arch {target}: {mod!r} has no attribute {attr!r}",
                hint=f"it defines: {', '.join(known)}" if known else None,
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnknownArchError(f"--arch {target}: {mod}.{attr} is a {type(obj).__name__}, not a callable")
    return obj, mod, attr


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True  # a builtin or C callable: let the call decide
    return name in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _input_shape(model: Any, modules: list[ModuleSpec]) -> tuple[int, ...]:
    declared = getattr(model, "input_shape", None)
    if isinstance(declared, (tuple, list)) and declared and all(isinstance(d, int) for d in declared):
        return tuple(declared)
    first = next((m for m in modules if m.weight_shape is not None and m.weight_layer is not None), None)
    if first is not None and first.weight_shape is not None:
        ws = first.weight_shape
        if first.type == "Conv2d":
            return (1, ws[1], 224, 224)
        if first.type == "Conv1d":
            return (1, ws[1], 128)
        if first.type == "Linear":
            return (1, ws[1])
    return (1, 3, 224, 224)


def custom_spec(target: str, *, num_classes: int | None = None, arch_args: dict[str, str] | None = None) -> ArchSpec:
    """The :class:`ArchSpec` of ``module.path:callable`` (or ``torchvision:<builder>``), read from an
    instance built on the meta device. The spec's ``builder`` builds the real module (runtime code)."""
    fn, mod, attr = _resolve_callable(target)
    kwargs: dict[str, Any] = {k: parse_value(v) for k, v in (arch_args or {}).items()}
    if num_classes is not None:
        if not _accepts(fn, "num_classes"):
            raise UsageError(
                f"--num-classes: {target} takes no num_classes argument",
                hint="pass the right constructor argument with --arch-arg key=value",
            )
        kwargs["num_classes"] = num_classes
    source = "custom"
    if target.startswith(TORCHVISION):
        source = "torchvision"
        if _accepts(fn, "weights"):
            kwargs.setdefault("weights", None)  # never download anything
    for k in kwargs:
        if not _accepts(fn, k):
            raise UsageError(f"--arch-arg {k}: {target} takes no argument {k!r}")

    require("torch", extra="torch", what=f"--arch {target}")
    import torch
    from torch import nn

    builder = functools.partial(fn, **kwargs)
    call = f"{target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    notes = ""
    try:
        with torch.device("meta"):
            model = builder()
    except TypeError as e:
        raise UsageError(
            f"--arch {call} failed: {e}", hint="pass constructor arguments with --arch-arg key=value"
        ) from None
    except Exception:
        # some constructors compute with their tensors (e.g. .item()), which the meta device cannot do
        try:
            with torch.device("cpu"):
                model = builder()
            notes = " (built on the CPU: it cannot be built on the meta device)"
        except Exception as e:
            raise UnknownArchError(f"--arch {call} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UnknownArchError(f"--arch {target}: {mod}.{attr}() returned a {type(model).__name__}, not an nn.Module")

    try:
        state = model.state_dict()
    except Exception as e:
        raise UnknownArchError(f"--arch {call}: state_dict() failed: {type(e).__name__}: {e}") from None
    owners: dict[str, list[tuple[str, Any]]] = {}
    dts: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # _extra_state and other non-tensor entries
        if isinstance(value, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer):
            raise UsageError(f"--arch {call}: {key} is a lazy parameter with no shape yet; build it with fixed sizes")
        path, _, leaf = key.rpartition(".")
        owners.setdefault(path, []).append((leaf, value))
        dts[key] = str(value.dtype).removeprefix("torch.")

    modules: list[ModuleSpec] = []
    seen: set[str] = set()
    ordinal = 0
    for path, m in model.named_modules(remove_duplicate=False):
        own = owners.get(path, [])
        if next(m.children(), None) is not None and not own:
            continue  # a container: its children are listed instead
        seen.add(path)
        tname = type(m).__name__
        is_weight_layer = isinstance(m, nn.modules.conv._ConvNd | nn.Linear) or tname in WEIGHT_LAYER_TYPES
        if is_weight_layer:
            ordinal += 1
        pnames = set(m._parameters)
        params = tuple((n, tuple(v.shape)) for n, v in own if n in pnames)
        buffers = tuple((n, tuple(v.shape)) for n, v in own if n not in pnames)
        modules.append(ModuleSpec(path, tname, None, ordinal if is_weight_layer else None, params, buffers))
    for path, own in owners.items():  # keys a custom _save_to_state_dict put outside any module path
        if path not in seen:
            modules.append(ModuleSpec(path, "(state)", None, None, buffers=tuple((n, tuple(v.shape)) for n, v in own)))

    head, n_cls = None, None
    last = next((m for m in reversed(modules) if m.weight_layer is not None), None)
    if last is not None and last.type == "Linear" and last.weight_shape:
        head, n_cls = last.path, last.weight_shape[0]
    if source == "torchvision":
        _paper_names(attr, modules, n_cls)
    shape = _input_shape(model, modules)
    del model, state
    desc = f"{call}{notes}"
    tops = {m.path.split(".", 1)[0] for m in modules}
    return ArchSpec(
        target, tuple(modules), shape, family=source, description=desc, source=source,
        num_classes=n_cls, head=head, builder=builder, dtypes=dts,
        backbone="features" if "features" in tops else None,
    )  # fmt: skip


def _paper_names(builder_name: str, modules: list[ModuleSpec], num_classes: int | None) -> None:
    """torchvision's builders get the registry's paper-style names when a family registers the same
    variant and the layouts agree."""
    from .family import family_of

    fam = family_of(builder_name)
    if fam is None:
        return
    ref = {m.path: m for m in fam.spec(builder_name, num_classes or 1000).modules}
    for i, m in enumerate(modules):
        r = ref.get(m.path)
        if r is not None and r.type == m.type:
            modules[i] = ModuleSpec(m.path, m.type, r.name, m.weight_layer, m.params, m.buffers, m.kwargs)
