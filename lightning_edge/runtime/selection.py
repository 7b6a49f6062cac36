"""Primitive selection: where a layer has more than one algorithm, time each on the layer's real shape with
this machine's kernels and keep the fastest, recording every timing in the plan.

The candidates of a conv: 8-, 16- or 32-channel output blocks (32 on VNNI only), a grouped conv per group
or as one block-diagonal GEMM, exact integer Winograd F(2x2, 3x3), the depthwise kernel, and (where enough of the weights are zero in blocks
the kernels can skip) the sparse GEMM.
"""
from __future__ import annotations

import platform
from dataclasses import fields
from typing import Any

import numpy as np

from lightning_edge.runtime.native import default_threads, engine_module, resolve_kernels
from lightning_edge.runtime.packing import kernel_arrays, pack_gemm_weights, sparse_steps
from lightning_edge.runtime.plan import ConvOp, DepthwiseOp, DequantizeOp, Grid, Plan, QuantizeOp, TensorRecord


# Sparse candidates are timed where at least this fraction of a layer's steps (one tap's 4 input channels for
# 16 output channels) is all zero: below it the step lists cannot beat the dense loops.
SPARSE_STEPS_AT_LEAST = 0.25


def zero_step_fraction(codes: np.ndarray, groups: int, taps: int, block: int = 16, depth_group: int = 4) -> float:
    """Fraction of the packed steps (one tap's ``depth_group`` input channels for ``block`` output channels)
    whose int8 weights are all zero: what the sparse kernels skip."""
    packed = pack_gemm_weights(codes, groups, block, taps, depth_group=depth_group)
    return 1.0 - sparse_steps(packed)[1].size / max(1, packed.shape[0] * packed.shape[1] * packed.shape[2])


def conv_candidates(fields: dict[str, Any], depthwise: bool, codes: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The algorithms a conv layer may run with: each a name and its kernel's parameters. With the layer's int8
    ``codes`` (out, taps * channels per group), sparse kernels where enough steps are zero."""
    groups, group_out = fields["groups"], fields["out_c"] // fields["groups"]
    candidates = []
    if depthwise:
        candidates.append({"primitive": "depthwise"})
    blocks = [16, 8] if group_out >= 16 else [8, 16] if group_out > 8 else [8]
    for block in blocks:
        candidates.append({"primitive": f"gemm_b{block}" + ("_grouped" if groups > 1 else ""), "block": block,
                           "groups": groups})
    if group_out >= 32:  # 2 x 16 channels per step: only the VNNI kernels have the registers for it
        candidates.append({"primitive": "gemm_b32" + ("_grouped" if groups > 1 else ""), "block": 32, "groups": groups,
                           "kernels": ["avx512"]})
    if 1 < groups and not depthwise and fields["in_c"] * fields["kernel_h"] * fields["kernel_w"] <= 4608:
        candidates.append({"primitive": "gemm_b16_dense", "block": 16, "groups": 1})
    if (fields["kernel_h"], fields["kernel_w"], fields["stride_h"], fields["stride_w"]) == (3, 3, 1, 1) and not depthwise:
        for block in blocks:
            candidates.append({"primitive": f"winograd_b{block}" + ("_grouped" if groups > 1 else ""), "block": block,
                               "groups": groups, "algorithm": "winograd"})
    taps = fields["kernel_h"] * fields["kernel_w"]
    if codes is not None and not depthwise and zero_step_fraction(codes, groups, taps) >= SPARSE_STEPS_AT_LEAST:
        for block in blocks:
            candidates.append({"primitive": f"sparse_b{block}" + ("_grouped" if groups > 1 else ""), "block": block,
                               "groups": groups, "algorithm": "sparse"})
        if group_out >= 32:
            candidates.append({"primitive": "sparse_b32" + ("_grouped" if groups > 1 else ""), "block": 32,
                               "groups": groups, "algorithm": "sparse", "kernels": ["avx512"]})
    return candidates


def apply_candidate(op: ConvOp, candidate: dict[str, Any]) -> ConvOp:
    """``op`` running ``candidate``'s algorithm: a depthwise op, or a conv with that block, grouping and algorithm
    (weights are packed when loaded)."""
    common = {item.name: getattr(op, item.name) for item in fields(ConvOp)}
    common.update(primitive=candidate["primitive"], block=None, algorithm=None, groups_run=None)
    if candidate["primitive"] == "depthwise":
        return DepthwiseOp(**common, channels=op.out_c)
    common.update(block=candidate["block"], groups_run=candidate["groups"], algorithm=candidate.get("algorithm"))
    return ConvOp(**common)


def first_candidates(plan: Plan) -> None:
    """Without timing: every layer takes its first candidate."""
    plan.ops = [apply_candidate(op, op.candidates[0]) if isinstance(op, ConvOp) and op.candidates else op
                for op in plan.ops]
    for op in plan.ops:
        if isinstance(op, ConvOp):
            op.candidates = None


def select_primitives(plan: Plan, arrays: dict[str, np.ndarray], batch: int = 1,
                      threads: int | None = None, repeats: int = 15) -> None:
    """Time every candidate algorithm of each layer on its real shape with this machine's kernels; keep the
    fastest and record every timing in the plan."""
    module = engine_module()
    threads = threads or default_threads()
    kernels = resolve_kernels("auto")
    for index, op in enumerate(plan.ops):
        if not isinstance(op, ConvOp) or not op.candidates:
            continue
        candidates = [c for c in op.candidates if kernels in c.get("kernels", [kernels])]
        engines = {}
        for candidate in candidates:
            single = _single_op_plan(apply_candidate(op, candidate))
            ops, packed = kernel_arrays(single, arrays, kernels)
            engines[candidate["primitive"]] = module.Engine(ops, [t.bytes_per_sample for t in single.tensors], packed,
                                                            threads, kernels)
        # Candidates take turns, twice: a burst of other work on the machine then slows one round of one
        # candidate, and the faster of its two medians still counts.
        timings = {name: float("inf") for name in engines}
        for _ in range(2):
            for name, engine in engines.items():
                timings[name] = min(timings[name], engine.time_op(1, batch, repeats))
        chosen = apply_candidate(op, min(candidates, key=lambda c: timings[c["primitive"]]))
        chosen.candidates = None
        chosen.timings_us = {name: round(seconds * 1e6, 2) for name, seconds in timings.items()}
        plan.ops[index] = chosen
    plan.selection = {"batch": batch, "threads": threads, "kernels": kernels, "machine": platform.machine()}


def _single_op_plan(op: ConvOp) -> Plan:
    """A quantize -> op -> dequantize plan around one conv, so the engine can time it alone."""
    core = type(op)(**{item.name: getattr(op, item.name) for item in fields(op)})
    core.input, core.output = 0, 1
    core.skip = core.skip_grid = core.sum_grid = None  # the folded add costs every candidate the same
    grid = Grid(1.0, 0, 0, 255)
    tensors = [TensorRecord("in", op.in_c * op.in_h * op.in_w, [op.in_c, op.in_h, op.in_w]),
               TensorRecord("out", op.out_c * op.out_h * op.out_w, [op.out_c, op.out_h, op.out_w])]
    ops = [QuantizeOp(id="in", output=0, grid=grid, channels=op.in_c, height=op.in_h, width=op.in_w), core,
           DequantizeOp(id="out", input=1, grid=grid, channels=op.out_c, height=op.out_h, width=op.out_w)]
    return Plan(source="selection", input_shape=tensors[0].shape, output_shape=tensors[1].shape, tensors=tensors, ops=ops)
