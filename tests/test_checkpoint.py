"""The Checkpoint model: lookups, repr, values, and the one chunk iterator, on files the tests build."""

from __future__ import annotations

import ast
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptool import open_checkpoint
from ckptool.errors import CorruptFileError, KeyNotFoundError

ROOT = Path(__file__).resolve().parent.parent / "ckptool"


def save(sd: object, path: Path, *, legacy: bool = False) -> Path:
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_lookup_is_by_name_and_follows_a_replaced_list(tmp_path: Path) -> None:
    sd = OrderedDict((f"layer{i}.weight", torch.full((2,), float(i))) for i in range(500))
    with open_checkpoint(save(sd, tmp_path / "m.pth")) as ck:
        assert ck["layer499.weight"].name == "layer499.weight"
        assert "layer3.weight" in ck and "nope" not in ck and 3 not in ck
        with pytest.raises(KeyNotFoundError, match="no tensor named 'nope'"):
            ck["nope"]
        ck.tensors = [t for t in ck.tensors if t.name.startswith("layer1")]  # inspect --filter does this
        assert "layer2.weight" not in ck and ck["layer1.weight"].shape == (2,)


def test_repr_is_short(tmp_path: Path) -> None:
    sd = OrderedDict((f"a_rather_long_tensor_name_{i}", torch.zeros(3)) for i in range(2000))
    with open_checkpoint(save({"model": sd}, tmp_path / "m.pth")) as ck:
        text = repr(ck)
    assert len(text) < 200, text
    assert "2000 tensors" in text and "torch-zip" in text and "'model'" in text


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool]
)
def test_numpy_returns_the_values(tmp_path: Path, dtype: torch.dtype) -> None:
    t = (torch.arange(12) % 5).to(dtype).reshape(3, 4)
    with open_checkpoint(save({"t": t}, tmp_path / "m.pth")) as ck:
        got = ck.numpy("t")
    assert got.shape == (3, 4) and got.dtype == t.numpy().dtype
    np.testing.assert_array_equal(got, t.numpy())
    got[0, 0] = 1  # a copy, never a view of the file


def test_numpy_bfloat16_is_exact_float32_and_float8_is_bits(tmp_path: Path) -> None:
    b = torch.tensor([1.5, -2.25, 3e38, 1e-39], dtype=torch.bfloat16)
    f8 = torch.tensor([0.5, -1.0, 448.0], dtype=torch.float8_e4m3fn)
    with open_checkpoint(save({"b": b, "f8": f8}, tmp_path / "m.pth")) as ck:
        gb, g8 = ck.numpy("b"), ck.value("f8")
    assert gb.dtype == np.float32 and np.array_equal(gb, b.float().numpy())
    assert g8.dtype == np.uint8 and g8.tobytes() == f8.view(torch.uint8).numpy().tobytes()


def test_strided_views_and_offsets_come_out_c_contiguous(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {"col": base[:, 3], "t": base.t(), "tail": base.view(-1)[37:], "neg": base.flip(0)[::2].contiguous()}
    with open_checkpoint(save(sd, tmp_path / "m.pth")) as ck:
        for name, want in sd.items():
            assert ck.read_bytes(ck[name]) == want.contiguous().numpy().tobytes(), name
            chunks = list(ck.iter_chunks(ck[name], 8))
            assert b"".join(chunks) == want.contiguous().numpy().tobytes(), name


def test_reused_buffer_chunks_and_own_chunks_agree(tmp_path: Path) -> None:
    w = torch.randn(1000)
    with open_checkpoint(save({"w": w}, tmp_path / "m.pth")) as ck:
        t = ck["w"]
        buf = bytearray(256)
        views = [bytes(c) for c in ck.iter_chunks(t, buf=buf)]
        own = list(ck.iter_chunks(t, 256))
        assert all(isinstance(c, bytes) for c in own)
        assert b"".join(views) == b"".join(own) == w.numpy().tobytes()
        assert [len(c) for c in views] == [256] * 15 + [160]


def test_big_endian_legacy_bytes_are_swapped_chunk_by_chunk(tmp_path: Path) -> None:
    path = save({"w": torch.arange(100, dtype=torch.float32)}, tmp_path / "le.pth", legacy=True)
    with open_checkpoint(path) as ck:
        ck.byteorder = "big"  # pretend: the same bytes read as big-endian must come out swapped
        got = b"".join(ck.iter_chunks(ck["w"], 12))
        assert ck.raw_range(ck["w"]) is None and not ck.is_raw(ck["w"].storage)  # type: ignore[arg-type]
    want = np.frombuffer(torch.arange(100, dtype=torch.float32).numpy().tobytes(), dtype=">f4").astype("<f4")
    assert got == want.tobytes()


def deflate(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    return dst


def test_deflated_records_stream_through_their_decoder(tmp_path: Path) -> None:
    w = torch.randn(300, 70)
    path = deflate(save({"w": w, "v": w[5:9]}, tmp_path / "m.pth"), tmp_path / "z.pth")
    with open_checkpoint(path) as ck:
        src = ck["w"].storage.source  # type: ignore[union-attr]
        assert src is not None and src.decoder is not None and ck.raw_range(ck["w"]) is None
        sizes = [len(c) for c in ck.iter_chunks(ck["w"], buf=bytearray(4096))]
        assert max(sizes) == 4096 and sum(sizes) == w.numel() * 4
        assert ck.read_bytes(ck["v"]) == w[5:9].numpy().tobytes()
        np.testing.assert_array_equal(ck.numpy("w"), w.numpy())


def test_a_record_that_inflates_short_is_corrupt(tmp_path: Path) -> None:
    w = torch.randn(64)
    path = deflate(save({"w": w}, tmp_path / "m.pth"), tmp_path / "z.pth")
    with open_checkpoint(path) as ck:
        t = ck["w"]
        import dataclasses

        st = t.storage
        assert st is not None and st.source is not None
        longer = dataclasses.replace(st, numel=st.numel * 2)  # the pickle claims more than the record holds
        with pytest.raises(CorruptFileError, match="inflates to"):
            ck.storage_bytes(longer, 0, longer.nbytes)


# -- layering: lower layers never import higher ones -----------------------------------------------------------
LOWER_MAY_IMPORT = {
    "sources": {"errors", "_extras", "sources"},
    "checkpoint": {"errors", "_extras", "_gc", "dtypes", "sources"},
    "formats": {"errors", "_extras", "_gc", "dtypes", "sources", "checkpoint", "formats"},
}


def imports_of(path: Path) -> set[str]:
    """The ckptool modules a file imports (first segment after ``ckptool.``), at any level of the file."""
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - node.level])
            mod = [*base, *(node.module.split(".") if node.module else [])]
            names = [mod] if node.module else [[*mod, a.name] for a in node.names]
            out.update(n[1] for n in names if len(n) > 1)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ckptool."):
            out.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ckptool."))
    return {o.removesuffix(".py") for o in out}


@pytest.mark.parametrize("layer", sorted(LOWER_MAY_IMPORT))
def test_lower_layers_import_no_higher_one(layer: str) -> None:
    files = [ROOT / f"{layer}.py"] if (ROOT / f"{layer}.py").exists() else sorted((ROOT / layer).rglob("*.py"))
    assert files
    for f in files:
        bad = imports_of(f) - LOWER_MAY_IMPORT[layer]
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_no_torch_below_the_runtime() -> None:
    for layer in ("sources", "formats", "checkpoint", "scan", "diff", "layers", "compat"):
        files = [ROOT / f"{layer}.py"] if (ROOT / f"{layer}.py").exists() else sorted((ROOT / layer).rglob("*.py"))
        for f in files:
            tree = ast.parse(f.read_text())
            mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not {m for m in mods if m == "torch" or m.startswith("torch.")}, f
