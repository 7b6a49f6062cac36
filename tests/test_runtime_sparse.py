"""Sparse int8 convs: block-pruned networks run only their nonzero weight steps, bit-exact to the reference on
every kernel path; the compiler offers them only where enough steps are zero; damaged step lists are refused."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import calibrated_network
from lightning_edge.export import to_onnx
from lightning_edge.prune import magnitude_masks, prunable_layers
from lightning_edge.runtime import load
from lightning_edge.runtime.compiler.graph import GraphCompiler
from lightning_edge.runtime.edge_format import write_edge
from lightning_edge.runtime.packing import kernel_arrays, pack_gemm_weights, sparse_steps
from lightning_edge.runtime.plan import ConvOp
from lightning_edge.runtime.selection import apply_candidate, first_candidates, zero_step_fraction
from test_runtime import KERNELS, assert_bit_exact


def block_pruned(name: str, sparsity: float = 0.85, block=(16, 4), **kwargs) -> torch.nn.Module:
    """``name`` calibrated for 1x28x28, its prunable layers' weights zeroed in ``block`` blocks, recalibrated."""
    from lightning_edge.quant import calibrate

    network = calibrated_network(name, **kwargs)
    layers = prunable_layers(network)
    masks = magnitude_masks({path: module.weight for path, module in layers}, sparsity, block=block)
    with torch.no_grad():
        for path, module in layers:
            module.weight.mul_(masks[path])
    return calibrate(network, [torch.randn(16, 1, 28, 28) for _ in range(2)], num_batches=2)


def compile_with(network: torch.nn.Module, tmp_path, prefix: str | None) -> tuple[str, str, list[ConvOp]]:
    """Compile ``network`` with every conv that offers a candidate named ``prefix...`` running it (the first
    candidate elsewhere); returns the ONNX path, the .edge path and the chosen convs."""
    onnx_path = to_onnx(network, torch.zeros(1, 1, 28, 28), str(tmp_path / "model.onnx"))
    plan, arrays = GraphCompiler(onnx.load(onnx_path), "model.onnx", None).build()
    for index, op in enumerate(plan.ops):
        chosen = [c for c in (getattr(op, "candidates", None) or []) if prefix and c["primitive"].startswith(prefix)]
        if chosen:
            plan.ops[index] = apply_candidate(op, chosen[0])
            plan.ops[index].candidates = None
    first_candidates(plan)
    edge_path = str(tmp_path / "model.edge")
    write_edge(edge_path, plan.to_dict(), arrays)
    return onnx_path, edge_path, [op for op in plan.ops if isinstance(op, ConvOp)]


@pytest.mark.parametrize("name,kwargs,block", [
    ("cifar_resnet20", {}, "sparse_b16"),
    ("cifar_resnet20", {}, "sparse_b8"),
    ("cifar_resnet20", {"derive": {"block": "G4"}}, "sparse_b8"),  # grouped 3x3s (per group) and their 1x1s
    ("mobilenetv2_100", {}, "sparse_b32"),  # 32 on VNNI, 16 on the int16 paths
], ids=str)
def test_block_pruned_networks_run_sparse_and_bit_exact_on_every_kernel_path(name, kwargs, block, tmp_path):
    network = block_pruned(name, **kwargs)
    onnx_path, edge_path, convs = compile_with(network, tmp_path, block)
    sparse = [op for op in convs if op.algorithm == "sparse"]
    assert len(sparse) >= 0.5 * len(convs), [op.primitive for op in convs]
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    assert_bit_exact(onnx_path, edge_path, x)
    for kernels in KERNELS:  # the packed step lists really are shorter than the dense depth
        session = load(edge_path, kernels=kernels)
        records, arrays = kernel_arrays(session.plan, session.tensors, kernels)
        sparse_records = [r for r in records if r.get("algorithm") == "sparse"]
        assert len(sparse_records) == len(sparse)
        for record in sparse_records:
            starts = arrays[record["step_starts"]]
            depth = record["kernel_h"] * record["kernel_w"] * -(-record["in_c"] // record["groups"] // (4 if record.get("layout") == "quads" else 2))
            assert starts[-1] < 0.75 * (len(starts) - 1) * depth, record["id"]


def test_sparse_and_dense_agree_at_every_batch_and_thread_count(tmp_path):
    network = block_pruned("cifar_resnet20")
    (tmp_path / "sparse").mkdir()
    _, sparse_path, _ = compile_with(network, tmp_path / "sparse", "sparse_b16")
    _, dense_path, _ = compile_with(network, tmp_path, None)
    x = np.random.default_rng(3).standard_normal((13, 1, 28, 28)).astype(np.float32)
    dense = load(dense_path, threads=1).run(x)
    for threads in (1, 2, 3):
        assert np.array_equal(load(sparse_path, threads=threads).run(x), dense)
        assert np.array_equal(load(sparse_path, threads=threads).run(x[:1]), dense[:1])


def test_zero_step_fraction_counts_the_blocks_the_kernels_skip():
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (32, 9 * 16), dtype=np.int8)  # 3x3 conv, 16 in, 32 out: 2 blocks x 9 taps x 4 quads
    assert zero_step_fraction(codes, 1, 9) == 0.0
    window = codes.reshape(32, 9, 16)
    window[:16, 0, 4:8] = 0  # one step: block 0, tap 0, quad 1
    window[16:, 8, 12:] = 0  # block 1, tap 8, quad 3
    window[:15, 4, :4] = 0  # 15 of 16 channels: not a step of zeros
    assert zero_step_fraction(codes, 1, 9) == pytest.approx(2 / 72)
    weights, steps, starts = sparse_steps(pack_gemm_weights(codes, 1, 16, 9, depth_group=4))
    assert starts.tolist() == [0, 35, 70] and 0 * 4 + 1 not in steps[:35].tolist() and 8 * 4 + 3 not in steps[35:].tolist()
    assert weights.shape == (70, 16 * 4)
    unstructured = rng.integers(-127, 128, (32, 9 * 16), dtype=np.int8) * (rng.random((32, 9 * 16)) > 0.85)
    assert zero_step_fraction(unstructured.astype(np.int8), 1, 9) < 0.05  # 85% single zeros leave no whole step


def test_dense_layers_get_no_sparse_candidates(tmp_path):
    network = calibrated_network("cifar_resnet20")
    _, _, convs = compile_with(network, tmp_path, "sparse")
    assert not any(op.algorithm == "sparse" for op in convs)


@pytest.mark.parametrize("damage,message", [
    (lambda steps, starts: starts.__setitem__(1, starts[1] + 10_000), "step_starts"),
    (lambda steps, starts: starts.__setitem__(0, 1), "step_starts"),
    (lambda steps, starts: steps.__setitem__(0, 1 << 20), "outside the window"),
    (lambda steps, starts: steps.__setitem__(0, -1), "outside the window"),
])
def test_damaged_step_lists_are_refused(damage, message, tmp_path):
    from lightning_edge.runtime.native import engine_module

    network = block_pruned("cifar_resnet20")
    _, edge_path, _ = compile_with(network, tmp_path, "sparse_b16")
    session = load(edge_path, kernels="scalar")
    records, arrays = kernel_arrays(session.plan, session.tensors, "scalar")
    record = next(r for r in records if r.get("algorithm") == "sparse")
    steps, starts = arrays[record["steps"]].copy(), arrays[record["step_starts"]].copy()
    damage(steps, starts)
    arrays[record["steps"]], arrays[record["step_starts"]] = steps, starts
    with pytest.raises(ValueError, match=message):
        engine_module().Engine(records, [t.bytes_per_sample for t in session.plan.tensors], arrays, 1, "scalar")
