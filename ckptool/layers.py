"""The article's layer table: every module in forward order, parameter-free ones included (torch-free for
registry architectures).

With a known architecture (named, or identified by ``check``'s auto mode) the rows come from its module
sequence, with the shapes and parameter counts the file really has. When nothing known matches, the
sequence is inferred from the state_dict alone: a 4-D weight is a convolution, a 1-D weight with running
statistics a batch norm, a 2-D weight a linear layer, and a gap in the indices of a numbered container
(``features.2`` between ``features.1`` and ``features.3``) a parameter-free module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .arch.registry import AUTO
from .arch.spec import WEIGHT_LAYER_TYPES, ArchSpec, join_key
from .checkpoint import Checkpoint, TensorInfo
from .compat import CompatReport, check, known_prefix

PARAMETER_FREE = "(parameter-free)"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_INDEX = re.compile(r"\d+")


@dataclass(frozen=True)
class LayerRow:
    module: str  # "features.0"
    type: str  # "Conv2d", "BatchNorm2d", "ReLU", ...
    name: str | None  # "conv1_1"
    weight_layer: int | None  # 1-based ordinal of conv / linear layers; None for every other row
    shape: tuple[int, ...] | None  # the weight's shape
    params: int  # learnable parameters (buffers such as running_mean are not counted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "type": self.type,
            "name": self.name,
            "weight_layer": self.weight_layer,
            "shape": list(self.shape) if self.shape is not None else None,
            "params": self.params,
        }


@dataclass
class LayerTable:
    """The answer of :func:`layer_table`: one :class:`LayerRow` per module, and modules per container. ``to_dict()`` is the ``--json`` output."""

    path: str
    arch: str | None  # None when the table was inferred from the state_dict alone
    source: str  # registry | custom | torchvision | inferred
    rows: list[LayerRow]
    counts: dict[str, int]  # modules per container: {"features": 44, "classifier": 7}
    part: str | None = None
    prefix: str | None = None
    compatible: bool | None = None  # whether the file fits ``arch`` (None when inferred)
    notes: list[str] = field(default_factory=list)
    report: CompatReport | None = field(default=None, repr=False)

    @property
    def weight_layers(self) -> int:
        return sum(1 for r in self.rows if r.weight_layer is not None)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return f"<LayerTable {self.arch or 'inferred'}: {len(self.rows)} modules ({counts}), {self.params:,} params>"

    def find(self, name_or_module: str) -> LayerRow:
        """The row named ``conv5_3`` or at ``features.40``."""
        for r in self.rows:
            if name_or_module in (r.name, r.module):
                return r
        raise KeyError(name_or_module)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "arch": self.arch,
            "source": self.source,
            "part": self.part,
            "prefix": self.prefix,
            "compatible": self.compatible,
            "layers": [r.to_dict() for r in self.rows],
            "counts": self.counts,
            "modules": len(self.rows),
            "weight_layers": self.weight_layers,
            "params": self.params,
            "notes": self.notes,
        }


def _counts(paths: list[str], part: str | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in paths:
        container = p.rsplit(".", 1)[0] if "." in p else ""
        if part:
            container = f"{part}.{container}" if container else part
        if container:
            counts[container] = counts.get(container, 0) + 1
    return counts


def _from_spec(ck: Checkpoint, spec: ArchSpec, report: CompatReport) -> list[LayerRow]:
    model_to_file = {mk: fk for fk, mk in report.key_map.items()}
    tensors = {t.name: t for t in ck.tensors}
    rows = []
    for m in spec.modules:
        # the row's shape: the weight's, else the module's first parameter (in_proj_weight, class_token)
        main = "weight" if m.weight_shape is not None else (m.params[0][0] if m.params else None)
        shape = dict(m.params).get(main) if main else None
        wk = model_to_file.get(join_key(m.path, main)) if main else None
        if wk is not None and shape is not None:
            shape = tensors[wk].shape
        params = 0
        for n, s in m.params:
            fk = model_to_file.get(join_key(m.path, n))
            params += tensors[fk].numel if fk is not None else math.prod(s)
        # a bare parameter (ViT's class_token) is shown under its key, not under its owner's path
        path = join_key(m.path, m.params[0][0]) if m.type == "Parameter" and m.params else m.path
        rows.append(LayerRow(path, m.type, m.name, m.weight_layer, shape, params))
    return rows


# ---------------------------------------------------------------------------------------------------
# inference from the state_dict alone
# ---------------------------------------------------------------------------------------------------
UNKNOWN = "unknown"
WEIGHT_LEAVES = ("weight", "kernel")  # torch, and TensorFlow / Keras names in converted ONNX files
_NORM_HINT = re.compile(r"(norm|^ln|_ln|ln_|^bn|_bn|bn\d|layernorm|rms|scale)", re.I)
_PRELU_HINT = re.compile(r"prelu", re.I)
_LINEAR_HINT = re.compile(r"(linear|^lin|_lin|fc|dense|proj|tp)", re.I)


def _weight(leaves: dict[str, TensorInfo]) -> TensorInfo | None:
    return next((leaves[k] for k in WEIGHT_LEAVES if k in leaves), None)


def _guess_type(path: str, leaves: dict[str, TensorInfo], previous: str | None) -> str:
    """The module type the shapes imply; names only break ties, and "unknown" when nothing decides."""
    w = _weight(leaves)
    last = re.split(r"[./]", path)[-1] if path else ""
    if "running_mean" in leaves or "running_var" in leaves:
        dims = {"Conv1d": "1d", "Conv2d": "2d", "Conv3d": "3d", "Linear": "1d"}
        return f"BatchNorm{dims[previous]}" if previous in dims else "BatchNorm"
    if w is None:
        return "Parameters"
    nd = len(w.shape)
    if nd in (3, 4, 5):
        return f"Conv{nd - 2}d"
    if nd == 2:
        if "bias" not in leaves and re.search("emb", last, re.I):
            return "Embedding?"  # settled by the next layer's input size (see _settle_embeddings)
        return "Linear"
    if nd == 1:
        b = leaves.get("bias")
        if "output_mask" in leaves or w.shape == (0,):
            return "Linear (flattened)"  # e3nn's o3.Linear keeps its weights as one flat vector
        if b is not None and len(b.shape) == 1 and b.shape == w.shape:
            return "Norm"  # LayerNorm / GroupNorm / an affine scale and shift: a state_dict cannot tell them apart
        if b is None:  # one vector: a PReLU slope, an RMSNorm scale, a flattened weight ... names break the tie
            if _PRELU_HINT.search(last):
                return "PReLU"
            if _NORM_HINT.search(last):
                return "Norm"
            if _LINEAR_HINT.search(last):
                return "Linear (flattened)"
        return UNKNOWN
    return "Parameters"


def _split(name: str) -> tuple[str, str]:
    """``features.0.weight`` -> (features.0, weight); TensorFlow / Keras names use ``/`` and a ``:0`` output
    suffix (``model/dense_1/kernel:0`` -> (model/dense_1, kernel))."""
    if "/" in name:
        path, _, leaf = name.rpartition("/")
        if "." in leaf and not path:
            path, _, leaf = name.rpartition(".")
        return path, re.sub(r":\d+$", "", leaf)
    path, _, leaf = name.rpartition(".")
    return path, leaf


def _settle_embeddings(rows: list[LayerRow]) -> list[LayerRow]:
    """A bias-free 2-D weight named like an embedding: an Embedding [num, dim] feeds ``dim`` features on, a
    Linear [out, in] feeds ``out``. The next 2-D weight's input size says which; "Embedding or Linear" when
    it cannot."""
    out = list(rows)
    for i, r in enumerate(out):
        if r.type != "Embedding?" or r.shape is None:
            continue
        nxt = next((x.shape for x in out[i + 1 :] if x.shape is not None and len(x.shape) == 2), None)
        kind = "Embedding or Linear"
        if nxt is not None and nxt[1] != r.shape[0] and nxt[1] == r.shape[1]:
            kind = "Embedding"
        elif nxt is not None and nxt[1] == r.shape[0] and nxt[1] != r.shape[1]:
            kind = "Linear"
        out[i] = LayerRow(r.module, kind, r.name, r.weight_layer, r.shape, r.params)
    return out


def infer_rows(ck: Checkpoint, prefix: str = "") -> list[LayerRow]:
    """The module sequence a state_dict implies (file order), gaps in numbered containers included."""
    groups: dict[str, dict[str, TensorInfo]] = {}
    for t in ck.tensors:
        name = t.name[len(prefix) :] if prefix and t.name.startswith(prefix) else t.name
        path, leaf = _split(name)
        groups.setdefault(path, {})[leaf] = t
    rows: list[LayerRow] = []
    ordinal = 0
    previous: str | None = None
    for path, leaves in groups.items():
        kind = _guess_type(path, leaves, previous)
        if kind in WEIGHT_LAYER_TYPES:
            previous = kind
        w = _weight(leaves)
        shape = w.shape if w is not None else (next(iter(leaves.values())).shape if leaves else None)
        params = sum(t.numel for leaf, t in leaves.items() if leaf not in BN_BUFFERS and leaf != "output_mask")
        rows.append(LayerRow(path, kind, None, None, shape, params))
    rows = _settle_embeddings(rows)
    numbered = []
    for r in rows:  # weight-layer ordinals once the types are settled
        if r.type in WEIGHT_LAYER_TYPES or r.type == "Linear (flattened)":
            ordinal += 1
            r = LayerRow(r.module, r.type, r.name, ordinal, r.shape, r.params)
        numbered.append(r)
    return _fill_gaps(numbered)


def _fill_gaps(rows: list[LayerRow]) -> list[LayerRow]:
    """Insert a parameter-free row for every missing index of a numbered container."""
    indices: dict[str, set[int]] = {}
    for r in rows:
        segs = r.module.split(".") if r.module else []
        for i, seg in enumerate(segs):
            if _INDEX.fullmatch(seg):
                indices.setdefault(".".join(segs[:i]), set()).add(int(seg))
    for container, present in indices.items():
        pre = f"{container}." if container else ""
        for gap in sorted(set(range(max(present) + 1)) - present):
            where = None
            last = None
            for pos, r in enumerate(rows):
                if not r.module.startswith(pre):
                    continue
                seg = r.module[len(pre) :].split(".", 1)[0]
                if not _INDEX.fullmatch(seg):
                    continue
                last = pos
                if int(seg) > gap:
                    where = pos
                    break
            if where is None:
                where = (last + 1) if last is not None else len(rows)
            rows.insert(where, LayerRow(f"{pre}{gap}", PARAMETER_FREE, None, None, None, 0))
    return rows


# ---------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------
def layer_table(
    ck: Checkpoint,
    arch: str = AUTO,
    *,
    num_classes: int | None = None,
    part: str | None = None,
    arch_args: dict[str, str] | None = None,
) -> LayerTable:
    """The layer table of ``ck`` under ``arch`` (a name, ``module:callable``, or ``"auto"``)."""
    report = check(ck, arch, num_classes=num_classes, part=part, arch_args=arch_args)
    spec = report.spec
    if spec is None:  # auto found nothing: read the sequence off the state_dict
        prefix = known_prefix(ck.names())
        rows = infer_rows(ck, prefix)
        notes = [
            "no known architecture matches: the sequence is inferred from the state_dict alone "
            "(parameter-free modules show only as gaps in numbered containers; any after the last "
            "weighted module cannot be seen)"
        ]
        if prefix:
            notes.append(f"the prefix {prefix!r} was stripped")
        return LayerTable(
            ck.path, None, "inferred", rows, _counts([r.module for r in rows], part), part=part,
            prefix=prefix or None, compatible=None, notes=notes, report=report,
        )  # fmt: skip
    rows = _from_spec(ck, spec, report)
    notes = []
    if report.requested == AUTO:
        notes.append(f"identified as {report.arch} (score {report.score:.3f})")
    notes.extend(spec.notes)
    if not report.compatible:
        what = []
        if report.missing:
            what.append(f"{len(report.missing)} missing")
        if report.unexpected:
            what.append(f"{len(report.unexpected)} unexpected")
        if report.mismatched:
            what.append(f"{len(report.mismatched)} mismatched")
        notes.append(
            f"the file does not fit {spec.name} ({', '.join(what)} keys): rows show the architecture, "
            "with the file's shapes where it has them; run ckptool check for details"
        )
    notes.extend(report.findings)
    return LayerTable(
        ck.path, report.arch, spec.source, rows, _counts([r.module for r in rows], report.part), part=report.part,
        prefix=report.prefix, compatible=report.compatible, notes=notes, report=report,
    )  # fmt: skip
