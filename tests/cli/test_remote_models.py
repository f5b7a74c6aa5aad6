"""predict and parity over URLs (a TinyVGG checkpoint and its ONNX export served by nginx): the same results as
for the local files, the checkpoint's values streamed through ranged reads, the ONNX model read whole once
(onnxruntime reads files, never ranges), ``--timeout`` and ``--download``."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import pytest
from onnx_fixtures import TINY, calibrated, save, state_dict
from sources.remote_servers import Hostile, Nginx


@pytest.fixture(scope="module")
def pair(served: Path) -> dict[str, str]:
    """tiny.pth, tiny.onnx (weights inside) and tiny_ext.onnx (+ tiny_ext.data) in the served folder, and an image."""
    import onnx
    from PIL import Image

    from ckptool.convert.onnx_export import export_onnx
    from ckptool.formats import open_checkpoint

    d = served / "tiny"
    d.mkdir(exist_ok=True)
    ckp = save(state_dict(calibrated(TINY, 10)), d / "tiny.pth")
    r = export_onnx(open_checkpoint(ckp), d / "tiny.onnx", arch=TINY)
    assert r.written and r.passed
    m = onnx.load(str(d / "tiny.onnx"))
    onnx.save_model(
        m, str(d / "tiny_ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
        location="tiny_ext.data", size_threshold=0,
    )  # fmt: skip
    img = d / "img.png"
    Image.linear_gradient("L").convert("RGB").resize((40, 30)).save(img)
    (d / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)), encoding="utf-8")
    return {"dir": str(d), "img": str(img), "labels": str(d / "labels.txt")}


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("requests", "bytes_fetched", "checkpoint", "onnx", "model")}


def _times(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.endswith("_seconds")}


@pytest.mark.parametrize("onnx_name", ["tiny.onnx", "tiny_ext.onnx"])
def test_parity_over_urls_is_the_local_result(cli, nginx: Nginx, pair: dict[str, str], onnx_name: str) -> None:
    d = pair["dir"]
    local = cli("parity", f"{d}/tiny.pth", f"{d}/{onnx_name}", "--arch", TINY, "--json")
    assert local.exit_code == 0, local.output + local.stderr
    mark = nginx.mark()
    r = cli("parity", f"{nginx.url}/tiny/tiny.pth", f"{nginx.url}/tiny/{onnx_name}", "--arch", TINY, "--json")
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    got, want = json.loads(r.stdout), json.loads(local.stdout)
    assert _times(_strip(got)) == _times(_strip(want))
    assert got["checkpoint"] == f"{nginx.url}/tiny/tiny.pth" and got["onnx"] == f"{nginx.url}/tiny/{onnx_name}"
    assert got["requests"] == len(hits) and got["bytes_fetched"] == sum(h.nbytes for h in hits)
    uris = {h.uri for h in hits}
    assert uris <= {"/tiny/tiny.pth", f"/tiny/{onnx_name}", "/tiny/tiny_ext.data"}, hits
    ckpt_bytes = sum(h.nbytes for h in hits if h.uri == "/tiny/tiny.pth")
    assert ckpt_bytes < 2 * Path(d, "tiny.pth").stat().st_size  # the checkpoint streamed once, not re-read


def test_predict_over_a_url_torch_and_onnx(cli, nginx: Nginx, pair: dict[str, str]) -> None:
    d, img, labels = pair["dir"], pair["img"], pair["labels"]
    for model, extra in (("tiny.pth", ["--arch", TINY]), ("tiny.onnx", []), ("tiny_ext.onnx", [])):
        local = cli("predict", f"{d}/{model}", img, "--json", "--labels", labels, *extra)
        assert local.exit_code == 0, local.output + local.stderr
        r = cli("predict", f"{nginx.url}/tiny/{model}", img, "--json", "--labels", labels, *extra)
        assert r.exit_code == 0, r.output + r.stderr
        got, want = json.loads(r.stdout), json.loads(local.stdout)
        assert got["predictions"] == want["predictions"], model
        assert got["model"] == f"{nginx.url}/tiny/{model}"
        assert got["requests"] >= 1


def test_predict_and_parity_download_once(cli, nginx: Nginx, pair: dict[str, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = f"{nginx.url}/tiny"
    mark = nginx.mark()
    r = cli("parity", "--download", f"{url}/tiny.pth", f"{url}/tiny_ext.onnx", "--arch", TINY, "--json")
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert sorted((h.uri, h.range, h.status) for h in hits) == [
        ("/tiny/tiny.pth", "-", 200), ("/tiny/tiny_ext.data", "-", 200), ("/tiny/tiny_ext.onnx", "-", 200),
    ], hits  # fmt: skip
    mark = nginx.mark()
    r = cli("predict", "--download", f"{url}/tiny.pth", pair["img"], "--arch", TINY, "--labels", pair["labels"])
    hits = nginx.hits(mark)
    assert r.exit_code == 0, r.output + r.stderr
    assert [(h.uri, h.status) for h in hits] == [("/tiny/tiny.pth", 200)]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["predict", "parity"])
def test_timeout_on_a_server_that_hangs(cli, hostile: Hostile, pair: dict[str, str], command: str) -> None:
    url = f"{hostile.url}/hang/tiny.pth"
    args = [url, pair["img"], "--labels", pair["labels"]] if command == "predict" else [url, f"{pair['dir']}/tiny.onnx"]
    t = time.monotonic()
    r = cli(command, *args, "--arch", TINY, "--timeout", "0.5")
    assert time.monotonic() - t < 10
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"ckptool: error: {url}: no answer within 0.5 s (--timeout)", r.stderr


def test_predict_over_a_url_on_a_terminal(tty, nginx: Nginx, pair: dict[str, str]) -> None:
    res = tty("predict", f"{nginx.url}/tiny/tiny.onnx", pair["img"], "--labels", pair["labels"], "--top", "1")
    assert res.returncode == 0, res
    assert f"{nginx.url}/tiny/tiny.onnx" in res.text and "class " in res.text
    last = [ln for ln in res.text.splitlines() if ln.strip()][-1]
    assert re.fullmatch(r"fetched \d+(\.\d)? [KM]?B in \d+ requests?", last), res.text
