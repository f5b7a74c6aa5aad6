"""layers on files no family knows: shape evidence first, names only to break ties, "unknown" over a guess."""

from __future__ import annotations

from ckptool.checkpoint import Checkpoint, TensorInfo
from ckptool.layers import layer_table


def table(fmt: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    ck = Checkpoint("<mem>", fmt, [TensorInfo(k, "float32", s) for k, s in shapes.items()])
    t = layer_table(ck)
    assert t.arch is None and t.source == "inferred"
    return {r.module: r.type for r in t.rows}


def test_prelu_is_not_a_norm():
    """facenet-pytorch's MTCNN: conv, prelu, conv ..."""
    types = table("torch-zip", {"conv1.weight": (10, 3, 3, 3), "conv1.bias": (10,), "prelu1.weight": (10,),
                                "conv2.weight": (16, 10, 3, 3), "conv2.bias": (16,), "prelu2.weight": (16,)})  # fmt: skip
    assert types["prelu1"] == "PReLU" and types["prelu2"] == "PReLU" and types["conv1"] == "Conv2d"


def test_e3nn_flattened_linear():
    types = table("torch-zip", {"lin1.weight": (11392,), "lin2.weight": (0,), "lin2.output_mask": (64,),
                                "gate.weight": (300,), "ln.weight": (64,), "ln.bias": (64,)})  # fmt: skip
    assert types["lin1"] == "Linear (flattened)" and types["lin2"] == "Linear (flattened)"
    assert types["gate"] == "unknown"  # one vector, no name that breaks the tie: not a guess
    assert types["ln"] == "Norm"  # weight and bias of one size


def test_bias_free_linear_named_embedding():
    """chgnet's bond_embedding is a Linear(9, 64, bias=False): the next layer takes 64 features."""
    types = table(
        "torch-zip", {"bond_embedding.weight": (64, 9), "bond_conv.weight": (64, 64), "bond_conv.bias": (64,)}
    )
    assert types["bond_embedding"] == "Linear"
    types = table("torch-zip", {"tok_emb.weight": (1000, 32), "fc.weight": (10, 32), "fc.bias": (10,)})
    assert types["tok_emb"] == "Embedding"
    types = table("torch-zip", {"emb.weight": (32, 32), "fc.weight": (10, 32)})
    assert types["emb"] == "Embedding or Linear"


def test_tensorflow_names_in_onnx():
    types = table("onnx", {"sequential/conv2d/kernel:0": (3, 3, 3, 16), "sequential/conv2d/bias:0": (16,),
                           "sequential/dense/kernel:0": (16, 10), "sequential/dense/bias:0": (10,)})  # fmt: skip
    assert types == {"sequential/conv2d": "Conv2d", "sequential/dense": "Linear"}
