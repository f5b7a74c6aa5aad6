"""Fixtures of the remote-source tests (a plugin of tests/conftest.py): small weight files with the structure of the big ones (a hundred
tensors, local zip headers spread over megabytes), served by a real nginx and by the hostile test server."""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sources.remote_servers import NGINX, Hostile, Hub, MotoS3, Nginx


def small_vgg_like() -> OrderedDict[str, torch.Tensor]:
    """~4.6 MB in 97 tensors: 13 conv blocks (weight, bias, 5 BN tensors each) and 3 linear layers, like
    vgg16_bn, so the zip's local headers sit in many different 64 KB blocks."""
    g = torch.Generator().manual_seed(0)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    i = 0
    for _block in range(13):
        c = 64
        sd[f"features.{i}.weight"] = torch.randn(c, c, 3, 3, generator=g)
        sd[f"features.{i}.bias"] = torch.randn(c, generator=g)
        sd[f"features.{i + 1}.weight"] = torch.rand(c, generator=g)
        sd[f"features.{i + 1}.bias"] = torch.randn(c, generator=g)
        sd[f"features.{i + 1}.running_mean"] = torch.randn(c, generator=g)
        sd[f"features.{i + 1}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"features.{i + 1}.num_batches_tracked"] = torch.tensor(7)
        i += 3
    for j, (o, n) in enumerate(((256, 576), (256, 256), (10, 256))):
        sd[f"classifier.{3 * j}.weight"] = torch.randn(o, n, generator=g)
        sd[f"classifier.{3 * j}.bias"] = torch.randn(o, generator=g)
    return sd


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the servers serve: model.pth (torch zip), legacy.pth, model.safetensors, evil.pth (a torch
    zip whose data.pkl calls os.system), and hub/org/model/{main,v1}/... for hf://."""
    from hostile import replace_member, torch_like_pickle
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("served")
    sd = small_vgg_like()
    torch.save(sd, root / "model.pth")
    legacy = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    torch.save(legacy, root / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(dict(sd), str(root / "model.safetensors"))

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned",))

    replace_member(root / "model.pth", root / "evil.pth", "data.pkl", torch_like_pickle({"w": Evil()}))
    for rev in ("main", "v1"):
        d = root / "hub" / "org" / "model" / rev
        d.mkdir(parents=True)
        os.link(root / "model.safetensors", d / "model.safetensors")
        os.link(root / "model.pth", d / "pytorch_model.bin")
    # a sharded model: an index and three safetensors shards (on the Hub and in a plain folder)
    names = list(sd)
    d = root / "hub" / "org" / "sharded" / "main"
    d.mkdir(parents=True)
    weight_map = {}
    for k, part in enumerate((names[:30], names[30:60], names[60:]), 1):
        shard = f"model-{k:05d}-of-00003.safetensors"
        save_file({n: sd[n] for n in part}, str(d / shard))
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    shutil.copytree(d, root / "sharded")
    # an ONNX model with its weights in external data beside it, and one whose location escapes its folder
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(sd["classifier.0.weight"].numpy(), "fc.weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 576])], initializer=[w],
    )  # fmt: skip
    (root / "onnx").mkdir()
    onnx.save_model(
        helper.make_model(graph), str(root / "onnx" / "model.onnx"), save_as_external_data=True,
        all_tensors_to_one_file=True, location="weights.bin", size_threshold=0,
    )  # fmt: skip
    m = onnx.load(str(root / "onnx" / "model.onnx"), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../model.safetensors"
    onnx.save_model(m, str(root / "onnx" / "escape.onnx"))
    for repo, files in (("binonly", {"pytorch_model.bin": "model.pth"}), ("nothing", {"README.md": None})):
        d = root / "hub" / "org" / repo / "main"
        d.mkdir(parents=True)
        for name, src in files.items():
            if src is None:
                (d / name).write_text("no weights here\n")
            else:
                os.link(root / src, d / name)
    (root / "private").mkdir()
    os.link(root / "model.safetensors", root / "private" / "model.safetensors")
    return root


def _in_ci() -> bool:
    return bool(os.environ.get("CKPTOOL_CI") or os.environ.get("CI") or os.environ.get("GITHUB_ACTIONS"))


@pytest.fixture(scope="session")
def nginx(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx on 127.0.0.1 over ``served`` (skipped, with the reason, when nginx is absent outside CI)."""
    if NGINX is None:
        if _in_ci():
            pytest.fail("nginx is not installed; .ci/run installs it (apt-get install nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light); CI installs it")
    ng = Nginx(served, tmp_path_factory.mktemp("nginx"))
    yield ng
    ng.stop()


@pytest.fixture(scope="session")
def hostile(served: Path) -> Iterator[Hostile]:
    """The hostile server over model.pth on 127.0.0.1; its /redirect/ goes to a second one on 127.0.0.2."""
    data = (served / "model.pth").read_bytes()
    other = Hostile(data, host="127.0.0.2")
    h = Hostile(data, other=other.url)
    h.other_server = other  # type: ignore[attr-defined]
    yield h
    h.stop()
    other.stop()


@pytest.fixture(scope="session")
def hub(served: Path) -> Iterator[Hub]:
    """The Hub's listing API and /resolve/ URLs over ``served/hub`` on 127.0.0.1 (point HF_ENDPOINT at it)."""
    h = Hub(served / "hub")
    yield h
    h.stop()


@pytest.fixture(scope="session")
def moto_s3(served: Path) -> Iterator[MotoS3]:
    """moto's S3 server on 127.0.0.1 holding model.pth, legacy.pth, model.safetensors and evil.pth in bucket
    ``weights`` (its credentials and endpoint in ``.env``; the tests set them)."""
    s3 = MotoS3(served, ["model.pth", "legacy.pth", "model.safetensors", "evil.pth"])
    yield s3
    s3.stop()
