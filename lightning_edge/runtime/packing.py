"""Weights as each kernel path reads them, packed when a plan is loaded (so one .edge file serves every CPU).

A .edge file stores int8 weights in the (kernel row, kernel column, channel) order of an NHWC window;
``kernel_arrays`` turns a :class:`~lightning_edge.runtime.plan.Plan` into the engine's op records and
arrays for one kernel path: int16 pairs for the scalar and AVX2 kernels (centered int32 taps for depthwise), int8
quads plus the zero-point compensation in the bias for AVX-512 VNNI, depthwise convs in lane layouts (VNNI
quads, AVX2 int16 pairs, the compensation in the bias too), the Winograd transform U = G'gG'^T
for Winograd layers, and a grouped conv expanded block-diagonally where selection found one dense GEMM
faster. numpy only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lightning_edge.runtime.plan import Plan

INT32_MAX = 2**31 - 1


# Winograd F(2x2, 3x3) weight transform, scaled by 2 per side so that it stays in integers: U = 4 G g G^T.
_WINOGRAD_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], dtype=np.int64)


def winograd_weights(codes: np.ndarray, group_in: int) -> np.ndarray:
    """(out, 9 * group_in) 3x3 weights in window order -> (out, 16 * group_in) U in (position, channel) order."""
    g = codes.astype(np.int64).reshape(codes.shape[0], 3, 3, group_in)
    u = np.einsum("ik,okjc,lj->oilc", _WINOGRAD_G2, g, _WINOGRAD_G2)  # G' g G'^T over the kernel's rows, columns
    return u.reshape(codes.shape[0], 16 * group_in)


def pack_gemm_weights(codes: np.ndarray, groups: int, block: int, taps: int, depth_group: int = 2,
                      k_major: bool = False) -> np.ndarray:
    """Weights as the GEMM kernels read them: [group][block][tap][channel group][channel in block][depth_group]
    (``k_major``: [...][channel group][depth_group][channel in block], NEON's multiply-by-scalar order).

    ``codes`` is (out, taps * channels per group) in window order; each tap's channels are padded with
    zeros to a multiple of ``depth_group`` (2 for the int16 kernels' pairs, 4 for VNNI's quads), as the
    widened input is."""
    out_c, depth = codes.shape
    group_in, group_out = depth // taps, out_c // groups
    group_in_padded = -(-group_in // depth_group) * depth_group
    blocks = -(-group_out // block)
    dtype = np.int16 if depth_group == 2 else np.int8
    w = np.zeros((groups, blocks * block, taps, group_in_padded), dtype)
    w[:, :group_out, :, :group_in] = codes.reshape(groups, group_out, taps, group_in)
    w = w.reshape(groups, blocks, block, taps * group_in_padded // depth_group, depth_group)
    return np.ascontiguousarray(w.transpose(0, 1, 3, 4, 2) if k_major else w.transpose(0, 1, 3, 2, 4))


def sparse_steps(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pack_gemm_weights``' array, [group][block][step][...] (a step being one tap's depth group of input
    channels for the block's output channels), without its all-zero steps: (the nonzero steps' weights one
    after another, each one's step index within its column, int32 column starts [groups * blocks + 1]). The
    sparse kernels multiply only these (kernels.h)."""
    columns, depth = packed.shape[0] * packed.shape[1], packed.shape[2]
    steps = packed.reshape(columns, depth, -1)
    nonzero = np.any(steps != 0, axis=2)
    starts = np.zeros(columns + 1, np.int32)
    starts[1:] = np.cumsum(nonzero.sum(axis=1))
    return np.ascontiguousarray(steps[nonzero]), np.nonzero(nonzero)[1].astype(np.int32), starts


# The depthwise lane layouts: (taps per lane, registers per block, int32 lanes per register, weight dtype).
# "columns" is "quads" with each quad holding four of one kernel column's taps (kernel_h <= 8; see column_taps).
DEPTHWISE_LAYOUTS = {"quads": (4, 4, 16, np.int8), "pairs": (2, 2, 8, np.int16), "columns": (4, 4, 16, np.int8)}


def column_taps(codes: np.ndarray, kernel_h: int, kernel_w: int) -> np.ndarray:
    """(channels, kernel_h * kernel_w) depthwise weights in row-major tap order as (channels, kernel_w * 4 * q),
    q = ceil(kernel_h / 4) quads per column: each kernel column's taps (ky = 0 .. kernel_h - 1, then zeros)
    together, the columns layout's quads."""
    if kernel_h > 8:
        raise ValueError(f"the columns layout holds kernel_h <= 8, not {kernel_h}")
    channels, rows = codes.shape[0], 4 * -(-kernel_h // 4)
    grid = np.zeros((channels, rows, kernel_w), codes.dtype)
    grid[:, :kernel_h] = codes.reshape(channels, kernel_h, kernel_w)
    return np.ascontiguousarray(grid.transpose(0, 2, 1).reshape(channels, kernel_w * rows))


def pack_depthwise_lanes(codes: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, layout: str) -> tuple[np.ndarray, ...]:
    """A depthwise conv's (channels, taps) int8 weights, its zero-point-compensated int32 bias and its float32
    multipliers in a lane layout of the runtime's kernels.h (``quads``: VNNI, blocks of 64 channels, taps in
    fours; ``pairs``: AVX2, blocks of 16, taps in twos). Channels are padded to whole blocks (weight, bias and
    multiplier 0) and taps to whole groups (weight 0); weights [block][tap group][register][lane][tap], bias
    and multipliers [block][register][lane], register r lane i holding channel 4 * registers * (i // 4) + 4 * r + i % 4."""
    group, registers, lanes, dtype = DEPTHWISE_LAYOUTS[layout]
    width = registers * lanes
    channels, taps = codes.shape
    blocks, groups = -(-channels // width), -(-taps // group)
    order = np.array([[4 * registers * (lane // 4) + 4 * reg + lane % 4 for lane in range(lanes)] for reg in range(registers)])
    w = np.zeros((blocks * width, groups * group), dtype)
    w[:channels, :taps] = codes
    w = w.reshape(blocks, width, groups, group)[:, order]  # (block, register, lane, tap group, tap)
    per_channel = []
    for values, value_type in ((bias, np.int32), (multiplier, np.float32)):
        padded = np.zeros(blocks * width, value_type)
        padded[:channels] = values
        per_channel.append(np.ascontiguousarray(padded.reshape(blocks, width)[:, order]))
    return (np.ascontiguousarray(w.transpose(0, 3, 1, 2, 4)), *per_channel)


def _block_diagonal(codes: np.ndarray, groups: int, kernel_taps: int) -> np.ndarray:
    """A grouped conv's weights as one dense conv's: zeros outside each group's block of input channels."""
    out_c, depth = codes.shape
    group_in, group_out = depth // kernel_taps, out_c // groups
    dense = np.zeros((out_c, kernel_taps, group_in * groups), codes.dtype)
    for g in range(groups):
        dense[g * group_out:(g + 1) * group_out, :, g * group_in:(g + 1) * group_in] = \
            codes[g * group_out:(g + 1) * group_out].reshape(group_out, kernel_taps, group_in)
    return dense.reshape(out_c, -1)


def kernel_arrays(plan: Plan, tensors: dict[str, np.ndarray], kernels: str) -> tuple[list[dict], dict]:
    """The plan's ops as the engine's records and its arrays as the ``kernels`` path reads them."""
    ops, arrays = [], dict(tensors)
    for op in plan.ops:
        op = op.to_dict()
        for key in ("candidates", "timings_us", "nodes", "fuses", "macs", "primitive"):  # not the engine's
            op.pop(key, None)
        if op["kind"] in ("conv", "depthwise") and "weights" in op:
            _check_packing_fields(op)
            codes = np.asarray(tensors[op["weights"]]).reshape(int(op["out_c"]), -1)
            taps = int(op["kernel_h"]) * int(op["kernel_w"])
            if codes.dtype != np.int8 or codes.shape[1] % taps:
                raise ValueError(f"{op['id']}: weights must be int8 (out_c, taps * channels)")
            layout = "scalar" if op.get("wide_bias") else kernels  # a wide bias runs the scalar kernels
            name = op["weights"] + f".{layout}"
            compensated = tensors[op["bias"]].astype(np.int64) - int(op["input_grid"]["zero"]) * codes.astype(np.int64).sum(axis=1)
            fits = np.abs(compensated).max(initial=0) <= INT32_MAX  # else centered codes (int16 GEMM pairs, int32 taps)
            lanes = {"avx512": "quads", "avx2": "pairs"}.get(layout) if fits else None  # raw-code layouts
            if op["kind"] == "depthwise" and lanes:  # raw codes in lanes, the compensation in the bias
                if lanes == "quads" and int(op["kernel_h"]) <= 8:  # one input column's codes for several pixels
                    lanes, codes = "columns", column_taps(codes, int(op["kernel_h"]), int(op["kernel_w"]))
                suffix = f".{lanes}"
                arrays[name], arrays[op["bias"] + suffix], arrays[op["multiplier"] + suffix] = pack_depthwise_lanes(
                    codes, compensated, np.asarray(tensors[op["multiplier"]], np.float32), lanes)
                op["bias"], op["multiplier"], op["layout"] = op["bias"] + suffix, op["multiplier"] + suffix, lanes
            elif op["kind"] == "depthwise":
                arrays[name] = np.ascontiguousarray(codes.astype(np.int32).T)  # [taps][channels]
            else:
                groups = int(op.get("groups_run", op["groups"]))
                if groups != op["groups"]:
                    codes = _block_diagonal(codes, int(op["groups"]), taps)
                quads = lanes == "quads" and op.get("algorithm") != "winograd"
                if op["block"] == 32 and not quads:
                    op["block"] = 16  # the int16 kernels have registers for 16 channels per step
                if op.get("algorithm") == "winograd":
                    arrays[name] = pack_gemm_weights(winograd_weights(codes, codes.shape[1] // taps), groups, op["block"], 16)
                elif quads:  # VNNI's u8 x s8 layout, the zero-point compensation in the bias (INT8_SPEC rule 5)
                    arrays[name] = pack_gemm_weights(codes, groups, op["block"], taps, depth_group=4)
                    arrays[op["bias"] + ".u8"] = compensated.astype(np.int32)
                    op["bias"], op["layout"] = op["bias"] + ".u8", "quads"
                else:  # int16 pairs (also where the compensated bias would leave int32)
                    arrays[name] = pack_gemm_weights(codes, groups, op["block"], taps, k_major=layout == "neon")
                if op.get("algorithm") == "sparse":
                    arrays[name], arrays[name + ".steps"], arrays[name + ".step_starts"] = sparse_steps(arrays[name])
                    op["steps"], op["step_starts"] = name + ".steps", name + ".step_starts"
                op["groups"] = groups
            op["weights"] = name
        ops.append(_engine_record(op))
    return ops, arrays


def _engine_record(op: dict[str, Any]) -> dict[str, Any]:
    """The op's fields as the engine reads them: numbers, strings and grids; a list becomes ``key.count`` and
    ``key.0``, ``key.1``, ... (its None items left out), a bool a 0 or 1."""
    record = {}
    for key, value in op.items():
        if isinstance(value, list):
            record[f"{key}.count"] = len(value)
            record.update({f"{key}.{i}": item for i, item in enumerate(value) if item is not None})
        else:
            record[key] = int(value) if isinstance(value, bool) else value
    return record


def _check_packing_fields(op: dict[str, Any]) -> None:
    """The fields packing divides by or sizes arrays from: positive integers that divide evenly."""
    for key in ("out_c", "in_c", "kernel_h", "kernel_w", "groups", "groups_run", "block"):
        if key in op and (not isinstance(op[key], int) or isinstance(op[key], bool) or not 0 < op[key] <= 1 << 16):
            raise ValueError(f"{op.get('id')}: {key}={op[key]!r} is not a positive integer in range")
    for key in ("groups", "groups_run"):
        if key in op and (op["out_c"] % op[key] or op.get("in_c", op["out_c"]) % op[key]):
            raise ValueError(f"{op.get('id')}: {key}={op[key]} does not divide the channels")


