"""scan's value checks: small floating tensors checked together give exactly the findings, counts and order
of checking every tensor on its own (scan.tensor_stats), on safetensors and torch zip files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ckptool import open_checkpoint
from ckptool import scan as scanmod
from ckptool.scan import MAX_FINDINGS_PER_KIND, scan, tensor_stats


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


def one_by_one(path: Path) -> tuple[list[tuple[str, str, str | None]], int]:
    """The findings and the checked count of the tensor-by-tensor loop (the reference)."""
    out: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    checked = 0
    with open_checkpoint(path) as ck:
        for t in ck.tensors:
            nan, inf, neg, n = tensor_stats(ck, t)
            if n is None:
                continue
            checked += 1
            for kind, count, msg in (
                ("nan", nan, f"{nan} NaN of {n} values"),
                ("inf", inf, f"{inf} Inf of {n} values"),
            ):
                if count:
                    seen[kind] = seen.get(kind, 0) + 1
                    if seen[kind] <= MAX_FINDINGS_PER_KIND:
                        out.append((kind, msg, t.name))
            if neg and t.name.rsplit(".", 1)[-1] == "running_var":
                out.append(("negative-running-var", f"{neg} negative values: a variance cannot be negative, "
                            "batch norm would produce NaN", t.name))  # fmt: skip
    return out, checked


def values(report: scanmod.ScanReport) -> list[tuple[str, str, str | None]]:
    return [(f.kind, f.message, f.where) for f in report.findings if f.kind in ("nan", "inf", "negative-running-var")]


def mixed(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i in range(n):
        kind = i % 5
        a = rng.standard_normal(int(rng.integers(1, 40))).astype(
            [np.float32, np.float16, np.float64, np.int64, np.float32][kind]
        )
        if kind != 3 and i % 7 == 0:
            a[0] = np.nan
        if kind != 3 and i % 11 == 0:
            a[-1] = -np.inf
        out[f"blk.{i}.w"] = a
    out["bn.running_var"] = np.array([1.0, -2.0, np.nan], np.float32)  # on its own: the negative count matters
    out["empty"] = np.zeros(0, np.float32)
    big = np.ones(40_000, np.float32)  # over the together limit: streamed on its own
    big[123] = np.inf
    out["big"] = big
    return out  # fmt: skip


def test_safetensors_findings_equal_one_by_one(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", mixed(np.random.default_rng(0), 400))
    report = scan(path)
    want, checked = one_by_one(path)
    assert len(want) > MAX_FINDINGS_PER_KIND  # the cap and the order are tested too
    assert values(report) == want
    assert report.tensors_checked == checked == 400 - 80 + 1 + 1  # int64 and the empty tensor are not checked
    assert any(f.kind == "negative-running-var" for f in report.findings)


def test_a_clean_file_has_no_value_findings(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = write_safetensors(
        tmp_path / "ok.safetensors", {f"w{i}": rng.standard_normal(8).astype(np.float32) for i in range(3000)}
    )
    report = scan(path)
    assert report.safe and report.values_checked and report.tensors_checked == 3000  # fmt: skip


def test_one_nan_among_many_is_found_and_named(tmp_path: Path) -> None:
    tensors = {f"w{i}": np.ones(4, np.float16) for i in range(2000)}
    tensors["w1234"][2] = np.nan
    report = scan(write_safetensors(tmp_path / "one.safetensors", tensors))
    assert values(report) == [("nan", "1 NaN of 4 values", "w1234")]


def test_bfloat16_is_checked_together_as_on_its_own(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = {f"b{i}": torch.ones(5, dtype=torch.bfloat16) for i in range(300)}
    t["b7"][1] = float("nan")
    t["b9"][0] = float("-inf")
    t["b9"][3] = -1.0
    path = tmp_path / "bf.safetensors"
    save_file(t, str(path))
    report = scan(path)
    assert (
        values(report)
        == one_by_one(path)[0]
        == [("nan", "1 NaN of 5 values", "b7"), ("inf", "1 Inf of 5 values", "b9")]
    )


def test_torch_zip_findings_equal_one_by_one(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    sd = {f"layer.{i}.weight": torch.randn(3) for i in range(300)}
    sd["layer.5.weight"][0] = float("nan")
    sd["layer.250.weight"][2] = float("inf")
    base = torch.arange(12.0)
    base[1] = float("nan")
    sd["view"] = base[::3]  # a strided view: checked on its own, over its span
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    report = scan(path)
    want, checked = one_by_one(path)
    assert values(report) == want and report.tensors_checked == checked == 301
    assert [w for _k, _m, w in want] == ["layer.5.weight", "layer.250.weight", "view"]


def test_tensors_off_their_alignment_and_past_one_window(tmp_path: Path) -> None:
    from cli.clihelp import write_safetensors as by_hand  # offsets as they fall: no alignment padding

    rng = np.random.default_rng(2)
    tensors: dict[str, np.ndarray] = {}
    for i in range(3000):  # float16 scalars shift the float32 tensors off 4-byte alignment, by turns
        if i % 3 == 0:
            tensors[f"h{i}"] = np.ones(1, np.float16)
        a = rng.standard_normal(int(rng.integers(1, 200))).astype(np.float32)  # ~1.2 MB in all: several windows
        if i % 97 == 0:
            a[-1] = np.nan
        if i % 89 == 0:
            a[0] = np.inf
        tensors[f"f{i}"] = a
    path = by_hand(tmp_path / "odd.safetensors", tensors)
    with open_checkpoint(path) as ck:
        starts = {ck[f"f{i}"].storage.source.offset % 4 for i in range(3000)}  # type: ignore[union-attr]
    assert len(starts) > 1  # really misaligned
    report = scan(path)
    want, checked = one_by_one(path)
    assert values(report) == want and len(want) > 40 and report.tensors_checked == checked == 4000
