"""Does a checkpoint fit an architecture, and if not, exactly why (torch-free for registry architectures).

:func:`check` compares the file's keys and shapes (header only: no tensor bytes are read) with what
``load_state_dict(strict=True)`` would want, the way torch itself judges them:

- missing keys, unexpected keys and shape mismatches make a file incompatible;
- dtype differences are only noted (``load_state_dict`` casts);
- BatchNorm's ``num_batches_tracked`` may be absent (files saved before torch 0.4.1, like torchvision's
  2017 VGG files): torch fills it in, unless the file's own ``_metadata`` says the layer is version 2;
- ``module.`` (DataParallel), ``model.`` (Lightning), ``_orig_mod.`` (torch.compile) and any other common
  prefix are detected, reported and stripped (``key_map`` says how);
- ``arch="auto"`` ranks every registry architecture (inferring ``num_classes`` from the head, and trying
  sub-modules such as ``features`` for backbone-only files) and reports the best with the runners-up.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .arch.registry import AUTO, label, names, normalize, registry_parts, resolve, resolve_part, split_part
from .arch.spec import ArchSpec
from .checkpoint import Checkpoint, TensorInfo
from .errors import UsageError

KNOWN_PREFIXES = {
    "module.": "DataParallel / DistributedDataParallel",
    "model.": "a Lightning module's `model` attribute",
    "_orig_mod.": "torch.compile",
}
IDENTIFY_MIN = 0.5  # below this best score, auto says nothing matches
CLOSE_ENOUGH = 0.2  # ... and names the closest architecture only from this score up
PART_TRY_BELOW = 0.9  # auto tries sub-modules (backbone-only files) when no full architecture scores this much


@dataclass
class Match:
    """How one file (its keys after prefix stripping) lines up with one ArchSpec."""

    spec: ArchSpec
    prefix: str
    key_map: dict[str, str]  # file key -> model key
    missing: list[str]
    optional_missing: list[str]
    unexpected: list[str]
    mismatched: list[dict[str, Any]]
    matched: int
    score: float


@dataclass
class CompatReport:
    """The answer of :func:`check`. ``to_dict()`` is the ``--json`` output."""

    path: str
    arch: str | None  # the architecture checked (or identified, for auto); None when nothing matches
    compatible: bool
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # {key, expected, found}
    dtype_notes: list[str] = field(default_factory=list)
    prefix: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)  # {arch, score}, best first
    findings: list[str] = field(default_factory=list)
    key_map: dict[str, str] = field(default_factory=dict)  # file key -> model key (after prefix stripping)
    optional_missing: list[str] = field(default_factory=list)  # tolerated: legacy num_batches_tracked
    score: float = 0.0
    num_classes: int | None = None
    part: str | None = None
    requested: str = AUTO
    state_dict_key: str | None = None
    matched: int = 0
    expected_keys: int = 0
    file_keys: int = 0
    spec: ArchSpec | None = field(default=None, repr=False)  # what runtime.build_module builds

    def __repr__(self) -> str:
        verdict = "compatible" if self.compatible else "NOT compatible"
        return (
            f"<CompatReport {self.arch or self.requested}: {verdict}, {self.matched}/{self.expected_keys} keys matched>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "arch": self.arch,
            "requested": self.requested,
            "compatible": self.compatible,
            "score": round(self.score, 4),
            "num_classes": self.num_classes,
            "part": self.part,
            "state_dict_key": self.state_dict_key,
            "prefix": self.prefix,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "optional_missing": self.optional_missing,
            "dtype_notes": self.dtype_notes,
            "findings": self.findings,
            "candidates": self.candidates,
            "matched": self.matched,
            "expected_keys": self.expected_keys,
            "file_keys": self.file_keys,
        }


# ---------------------------------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------------------------------
def known_prefix(keys: list[str]) -> str:
    """The stacked known prefixes (``module.``, ``model.``, ``_orig_mod.``) most of ``keys`` carry (e.g.
    "module._orig_mod."), or ""."""
    pre = ""
    while True:
        rest = [k[len(pre) :] for k in keys if k.startswith(pre)]
        for p in KNOWN_PREFIXES:
            n = sum(1 for k in rest if k.startswith(p))
            if rest and n * 2 >= len(keys) and n > 0:
                pre += p
                break
        else:
            return pre


@functools.lru_cache(maxsize=8)
def _splits(keys: tuple[str, ...]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A file's known prefix and every (prefix, rest) split of its keys at a dot: computed once per file,
    not once per registry variant (``check --arch auto`` matches every variant of every family)."""
    pairs = []
    for k in keys:
        pos = k.find(".")
        while pos != -1:
            pairs.append((k[: pos + 1], k[pos + 1 :]))
            pos = k.find(".", pos + 1)
    return known_prefix(list(keys)), tuple(pairs)


def _prefix_candidates(keys: list[str], spec: ArchSpec) -> list[str]:
    """Prefixes worth trying: none, the known ones, and any P such that P + model key is a file key for
    at least half the model's keys (``backbone.``, ``features.`` ...)."""
    expected = spec.state_dict_shapes()
    out = [""]
    known, pairs = _splits(tuple(keys))
    if known:
        out.append(known)
    counts: Counter[str] = Counter(p for p, rest in pairs if rest in expected)
    need = max(1, len(expected) // 2)
    out.extend(p for p, n in counts.most_common(8) if n >= need and p not in out)
    return out


def _bn_versions(ck: Checkpoint) -> dict[str, int]:
    """The state_dict's own ``_metadata`` versions (module path in the file -> version), if recorded."""
    if not ck.metadata.get("has_module_metadata") or ck.root is None:
        return {}
    try:
        from .formats._torch_tree import follow_key

        sd = follow_key(ck.root, ck.state_dict_key, ck.path)[1] if ck.state_dict_key else ck.root
        meta = sd.state["_metadata"]
        return {str(k): int(v["version"]) for k, v in meta.items() if isinstance(v, dict) and "version" in v}
    except Exception:  # anything odd in a file we do not trust: behave as if there were no metadata
        return {}


def _graph_values(ck: Checkpoint) -> set[str]:
    """ONNX values that are graph computation, not weights: Constant-node values, and the integer
    initializers the exporter folds (ReduceMean's axes, a Reshape's shape)."""
    if ck.format != "onnx":
        return set()
    return {t.name for t in ck.tensors if t.constant or t.dtype.startswith(("int", "uint"))}


def match(ck: Checkpoint, spec: ArchSpec, *, prefix: str | None = None) -> Match:
    """Line up ``ck`` with ``spec`` under the best prefix (or the given one)."""
    keys = ck.names()
    tensors = {t.name: t for t in ck.tensors}
    prefixes = [prefix] if prefix is not None else _prefix_candidates(keys, spec)
    best: Match | None = None
    versions = _bn_versions(ck)
    graph = _graph_values(ck)
    for p in prefixes:
        m = _match_one(keys, tensors, spec, p, versions, graph)
        if best is None or m.score > best.score:
            best = m
    assert best is not None
    return best


def _match_one(
    keys: list[str],
    tensors: dict[str, TensorInfo],
    spec: ArchSpec,
    prefix: str,
    versions: dict[str, int],
    graph: set[str] | frozenset[str] = frozenset(),
) -> Match:
    expected = spec.state_dict_shapes()
    optional = spec.optional_keys()
    key_map: dict[str, str] = {}
    model_to_file: dict[str, str] = {}
    unexpected: list[str] = []
    for k in keys:
        mk = k[len(prefix) :] if prefix and k.startswith(prefix) else k
        if mk in model_to_file:  # two file keys land on one model key: the second is surplus
            unexpected.append(k)
            continue
        key_map[k] = mk
        model_to_file[mk] = k
        if mk not in expected and k not in graph:
            # an ONNX Constant-node value that no model key names is graph computation (a shape, a scale),
            # not a state_dict entry; one that a model key names is matched like an initializer
            unexpected.append(k)
    missing, optional_missing, mismatched = [], [], []
    matched = 0
    for mk, shape in expected.items():
        fk = model_to_file.get(mk)
        if fk is None:
            if mk in optional:
                module = mk.rsplit(".", 1)[0]
                module_in_file = prefix + module
                # missing for real when the whole layer is absent (not just its counter), or when the
                # file's own _metadata says the layer is a modern (version 2) BatchNorm
                layer_absent = f"{module}.running_mean" not in model_to_file
                if layer_absent or versions.get(module_in_file, 1) >= 2:
                    missing.append(mk)
                else:
                    optional_missing.append(mk)
            else:
                missing.append(mk)
            continue
        found = tensors[fk].shape
        if tuple(found) != tuple(shape):
            mismatched.append({"key": mk, "expected": list(shape), "found": list(found)})
        else:
            matched += 1
    union = len(expected) - len(optional_missing) + len(unexpected)
    score = matched / union if union else 0.0
    return Match(spec, prefix, key_map, missing, optional_missing, unexpected, mismatched, matched, score)


# ---------------------------------------------------------------------------------------------------
# auto-identification
# ---------------------------------------------------------------------------------------------------
def _infer_num_classes(ck: Checkpoint, spec: ArchSpec) -> int | None:
    """The head size the file really has (``classifier.6.weight`` is [N, 4096]), under any prefix."""
    if not spec.head:
        return None
    want = spec.state_dict_shapes().get(f"{spec.head}.weight")
    if want is None or len(want) != 2:
        return None
    suffix = f"{spec.head}.weight"
    for t in ck.tensors:
        if (t.name == suffix or t.name.endswith("." + suffix)) and len(t.shape) == 2 and t.shape[1] == want[1]:
            return t.shape[0] if t.shape[0] > 0 else None
    return None


def _registry_match(ck: Checkpoint, name: str, part: str | None, num_classes: int | None) -> Match:
    spec = resolve(name, num_classes=num_classes)
    if num_classes is None:
        n = _infer_num_classes(ck, spec)
        if n is not None and n != spec.num_classes:
            spec = resolve(name, num_classes=n)
    return match(ck, resolve_part(spec, part))


def rank(ck: Checkpoint, *, part: str | None = None, num_classes: int | None = None) -> list[Match]:
    """Every registry architecture (and, when none fits well and no part is given, each sub-module of
    each), best first."""
    which = names() if part is None else [n for n in names() if part in resolve(n).part_names()]
    out = [_registry_match(ck, n, part, num_classes) for n in which]
    out.sort(key=lambda m: -m.score)
    whole = not out or (out[0].score >= PART_TRY_BELOW and not out[0].missing)
    if part is None and not whole:  # weak, or only some keys there (a backbone saved without its head)
        parts = []
        for n in names():
            spec = resolve(n, num_classes=num_classes)
            for p in spec.parts:  # the family's named parts (VGG features / classifier, ResNet backbone)
                sub = spec.part(p.name)
                if sub.state_dict_shapes():
                    parts.append(match(ck, sub))
        out = sorted(out + parts, key=lambda m: -m.score)
    return out


# ---------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------
def _label(spec: ArchSpec) -> str:
    """The family's name for the variant, with " <part>-only" for a part (see ``registry.label``)."""
    return label(spec)


def _split_part(spec: ArchSpec) -> tuple[str, str | None]:
    return split_part(spec.name)


def _dtype_notes(ck: Checkpoint, m: Match) -> list[str]:
    tensors = {t.name: t for t in ck.tensors}
    pairs: Counter[tuple[str, str]] = Counter()
    expected = m.spec.state_dict_shapes()
    for fk, mk in m.key_map.items():
        if mk in expected:
            want = m.spec.expected_dtype(mk)
            got = tensors[fk].dtype
            if got != want:
                pairs[(got, want)] += 1
    notes = []
    for (got, want), n in sorted(pairs.items()):
        what = "tensor is" if n == 1 else "tensors are"
        notes.append(f"{n} {what} {got} where the model holds {want}: load_state_dict casts them (not an error)")
    return notes


def _findings(ck: Checkpoint, m: Match, report: CompatReport) -> list[str]:
    out: list[str] = []
    spec = m.spec
    if m.prefix:
        who = KNOWN_PREFIXES.get(m.prefix) or " + ".join(
            KNOWN_PREFIXES[p + "."] for p in m.prefix.rstrip(".").split(".") if p + "." in KNOWN_PREFIXES
        )
        why = f" ({who})" if who else ""
        n = sum(1 for k in m.key_map if k.startswith(m.prefix))
        which = "every key carries" if n == len(ck.tensors) else f"{n} of {len(ck.tensors)} keys carry"
        out.append(f"{which} the prefix {m.prefix!r}{why}: stripped to match the model")
    if ck.state_dict_key:
        out.append(f"the weights sit under {ck.state_dict_key!r} of a training checkpoint")
    if m.optional_missing:
        n = len(m.optional_missing)
        why = (
            "torch's ONNX export drops these training-only counters"
            if ck.format == "onnx"
            else "a file saved before torch 0.4.1, like torchvision's 2017 files"
        )
        out.append(
            f"{n} BatchNorm layer{'s have' if n > 1 else ' has'} no num_batches_tracked ({why}): "
            "load_state_dict accepts this"
        )
    mapped = set(m.key_map.values())
    bn_missing = [
        k
        for k in m.missing
        if k in spec.optional_keys() and k.rsplit(".", 1)[0] + ".running_mean" in mapped  # the layer is there
    ]
    if bn_missing:
        out.append(
            f"{len(bn_missing)} num_batches_tracked entries were removed from a file whose _metadata says "
            "BatchNorm version 2: load_state_dict(strict=True) rejects this"
        )
    # a replaced head
    if spec.head:
        hw = f"{spec.head}.weight"
        mm = {d["key"]: d for d in m.mismatched}
        if hw in mm and len(mm[hw]["found"]) == 2 and mm[hw]["found"][1] == mm[hw]["expected"][1]:
            n, was = mm[hw]["found"][0], mm[hw]["expected"][0]
            if was == 1000:
                out.append(f"{spec.head} was replaced with a {n}-class head: use --num-classes {n}")
            else:
                out.append(f"{spec.head} has {n} classes, not {was}: use --num-classes {n}")
    # same keys, other sizes: built with other constructor arguments
    body = [d for d in m.mismatched if not (spec.head and d["key"].startswith(spec.head + "."))]
    if body and not m.missing and not m.unexpected:
        how = "pass them with --arch-arg key=value" if spec.source != "registry" else "is it another model?"
        out.append(
            f"every key is there but {len(body)} shape{'s differ' if len(body) > 1 else ' differs'}: "
            f"was the model built with other constructor arguments? {how}"
        )
    # a backbone-only file checked against the whole model
    if m.missing and not m.unexpected and not m.mismatched:
        present = {mk.split(".", 1)[0] for mk in m.key_map.values()}
        absent = sorted({k.split(".", 1)[0] for k in m.missing} - present)
        if len(present) == 1 and absent:
            (part,) = present
            out.append(
                f"the file holds only {part!r} (no {', '.join(absent)} weights): a backbone-only file? "
                f"check it with --part {part}"
            )
    return out


def _told_apart(best: Match, ranked: list[Match]) -> list[str]:
    """When a sibling scores close to the best (same keys, other shapes: resnext50_32x4d and
    wide_resnet50_2), the key whose shape decided it."""
    out = []
    mine = best.spec.state_dict_shapes()
    got = {mk: mine.get(mk) for mk in best.key_map.values()}
    for other in ranked[1:3]:
        if other.score < best.score - 0.2 or other.spec.family != best.spec.family or other.spec.name == best.spec.name:
            continue
        theirs = other.spec.state_dict_shapes()
        for k, shape in mine.items():
            if k in theirs and theirs[k] != shape and got.get(k) == shape:
                out.append(
                    f"told apart from {other.spec.name} (score {other.score:.3f}) by {k}: "
                    f"{list(shape)} here, {list(theirs[k])} in {other.spec.name}"
                )
                break
    return out


def _candidates(ranked: list[Match], n: int = 5) -> list[dict[str, Any]]:
    """The best ``n`` that share anything with the file (a 0.000 candidate says nothing)."""
    return [
        {"arch": r.spec.name, "score": round(r.score, 4), "num_classes": r.spec.num_classes}
        for r in ranked[:n]
        if r.score > 0
    ]


def _from_match(
    ck: Checkpoint, m: Match, requested: str, ranked: list[Match] | None, *, identified: bool = True
) -> CompatReport:
    base, part = _split_part(m.spec)
    report = CompatReport(
        path=ck.path,
        arch=base if identified else None,
        compatible=identified and not (m.missing or m.unexpected or m.mismatched),
        missing=m.missing if identified else [],
        unexpected=m.unexpected if identified else [],
        mismatched=m.mismatched if identified else [],
        prefix=(m.prefix or None) if identified else None,
        key_map=m.key_map,
        optional_missing=m.optional_missing if identified else [],
        score=m.score,
        num_classes=m.spec.num_classes,
        part=part,
        requested=requested,
        state_dict_key=ck.state_dict_key,
        matched=m.matched,
        expected_keys=len(m.spec.state_dict_shapes()),
        file_keys=len(ck.tensors),
        spec=m.spec if identified else None,
    )
    if ranked is not None:
        report.candidates = _candidates(ranked)
    if identified:
        report.dtype_notes = _dtype_notes(ck, m)
        report.findings = _findings(ck, m, report)
    return report


def check(
    ck: Checkpoint,
    arch: str = AUTO,
    *,
    num_classes: int | None = None,
    part: str | None = None,
    arch_args: dict[str, str] | None = None,
) -> CompatReport:
    """Whether ``ck``'s state_dict loads strictly into ``arch`` (a registry name, ``module:callable``,
    ``torchvision:<builder>``, or ``"auto"``), optionally into its sub-module ``part``.

    Header-only; torch-free unless ``arch`` is a ``module:callable``. Raises ``UnknownArchError`` /
    ``UsageError`` for names and options that make no sense; a file that does not fit is a report with
    ``compatible=False``, not an exception.
    """
    requested = arch if ":" in arch else normalize(arch)
    if requested == AUTO:
        if arch_args:
            raise UsageError("--arch-arg needs an --arch module:callable (auto only knows the registry)")
        if part and part not in registry_parts():  # a clear error for a part no registry arch has
            raise UsageError(
                f"--part {part}: no registry architecture has a part {part!r}",
                hint=f"the parts are: {', '.join(registry_parts())}",
            )
        ranked = rank(ck, part=part, num_classes=num_classes)
        best = ranked[0]
        if best.score < IDENTIFY_MIN:
            report = _from_match(ck, best, AUTO, ranked, identified=False)
            close = best.score >= CLOSE_ENOUGH and ck.tensors
            closest = f" (closest: {label(best.spec)}, score {best.score:.2f})" if close else ""
            what = "these weights" if ck.tensors else "this file: it holds no tensors"
            if not close:
                report.candidates = []
            report.findings = [
                f"no known architecture matches {what}{closest}; name the model with --arch module.path:callable"
            ]
            return report
        report = _from_match(ck, best, AUTO, ranked)
        report.findings.extend(_told_apart(best, ranked))
        spec = best.spec
        if num_classes is None and spec.head and spec.num_classes not in (None, 1000):
            n = spec.num_classes
            report.findings.append(f"{spec.head} was replaced with a {n}-class head: use --num-classes {n}")
        if report.part and not part:
            if report.compatible:
                report.findings.append(
                    f"the file holds only {report.part!r} of {report.arch} (a backbone-only file): "
                    f"checked as --part {report.part}"
                )
            else:
                report.findings.append(
                    f"the best match is the {report.part!r} part of {report.arch} (checked as --part "
                    f"{report.part}); the rest of the file does not match it"
                )
        return report

    spec = resolve_part(resolve(arch, num_classes=num_classes, arch_args=arch_args), part)
    m = match(ck, spec)
    report = _from_match(ck, m, requested, None)
    if not report.compatible:
        # say what the file is, when it is something else we know
        ranked = rank(ck, part=part)
        report.candidates = _candidates(ranked)
        top = ranked[0]
        other, top_part = _split_part(top.spec)
        if top.score >= IDENTIFY_MIN and top.score > m.score:
            if other != _split_part(spec)[0]:
                use = f"--arch {other}" + (f" --part {top_part}" if top_part and not part else "")
                report.findings.append(f"a {_label(top.spec)} file checked against {_label(spec)}: use {use}")
            elif top_part and not part and not any(f"--part {top_part}" in f for f in report.findings):
                report.findings.append(
                    f"the file holds only {top_part!r} of {other} (a backbone-only file): check it with --part {top_part}"
                )
    return report
