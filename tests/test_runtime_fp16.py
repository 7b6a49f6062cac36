"""compile(..., precision="fp16"): float convs and classifier Gemms run in half precision by INT8_SPEC rule 21
(half inputs, weights and accumulator, one rounding per fused multiply-add), bit for bit equal to
ReferenceModel(precision="fp16") on every kernel path this CPU has (the AVX-512 one in double lanes, the exact
scalar one; NEON's half arithmetic is checked against them under qemu by test_native_kernels), and close to
float32 (test_runtime_bf16's network test, for both precisions)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_edge.runtime.reference import ReferenceModel, fp16_round

from test_runtime_bf16 import Block, Classifier, StridedChain, bf16_exact, same_bits


def fp16_exact(model: nn.Module, tmp_path, name: str, shape) -> tuple[list[dict], np.ndarray]:
    """``model`` exported, compiled in fp16 and run on every kernel path, each bit for bit the reference's."""
    return bf16_exact(model, tmp_path, name, shape, precision="fp16")


def test_fp16_rounding_is_ieee_half_to_nearest_even():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10000) * 10.0 ** rng.integers(-9, 6, 10000)).astype(np.float32)
    assert same_bits(fp16_round(x), torch.from_numpy(x).half().float().numpy())
    assert fp16_round(np.array([65519.0, 65520.0, 1 + 2 ** -11, 2 ** -25], np.float32)).tolist() == [65504.0, np.inf, 1.0, 0.0]


@pytest.mark.parametrize("geometry", [
    dict(i=3, o=8, k=3, s=2, p=1, g=1, d=1),     # strided stem
    dict(i=8, o=8, k=3, s=1, p=2, g=4, d=2),     # grouped, dilated
    dict(i=8, o=8, k=3, s=1, p=1, g=8, d=1),     # depthwise
    dict(i=16, o=40, k=1, s=1, p=0, g=1, d=1),   # pointwise, three output blocks (the last one partial)
    dict(i=5, o=13, k=5, s=2, p=2, g=1, d=1),    # odd channel count
    dict(i=4, o=8, k=5, s=1, p=2, g=4, d=1, size=(9, 35)),  # a channel multiplier of 2, rows of 4 + 1 strips
])
def test_fp16_conv_matches_the_reference_bit_for_bit(tmp_path, geometry):
    g = geometry
    conv = nn.Conv2d(g["i"], g["o"], g["k"], stride=g["s"], padding=g["p"], groups=g["g"], dilation=g["d"])
    ops, _ = fp16_exact(conv, tmp_path, "conv", (2, g["i"], *g.get("size", (13, 11))))
    assert [op["kind"] for op in ops] == ["float_input", "fp16_conv", "float_output"]


def test_fp16_block_fuses_its_activations_and_residual_add(tmp_path):
    ops, _ = fp16_exact(Block(), tmp_path, "block", (3, 3, 16, 16))
    convs = [op for op in ops if op["kind"] == "fp16_conv"]
    assert [op.get("skip") is not None for op in convs] == [False, False, False, True, False]
    assert not any(op["kind"] in ("float_expression", "bf16_conv") for op in ops)


def test_fp16_chain_and_gemm_are_bit_exact(tmp_path):
    fp16_exact(StridedChain(), tmp_path, "chain", (2, 3, 21, 19))
    ops, _ = fp16_exact(Classifier(), tmp_path, "classifier", (3, 3, 6, 6))
    assert sum(op["kind"] == "fp16_conv" for op in ops) == 3 and not any(op["kind"] == "float_matmul" for op in ops)


def test_fp16_accumulates_in_half_precision():
    """A long reduction of equal products stops growing once the half accumulator's unit exceeds twice each
    product (2048 + 1 rounds back to 2048): the reference adds in half, not in float32."""
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [1, 4096, 1, 1], np.ones(4096, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = ReferenceModel(model, precision="fp16").run(np.ones((1, 4096, 1, 1), np.float32))[0]
    assert got.item() == 2048.0
