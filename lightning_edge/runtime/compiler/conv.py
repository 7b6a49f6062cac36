"""Compiler rules of Conv and Gemm: one fused op each (bias, requantize, fused activation bounds), weights in
NHWC window order, the candidate algorithms primitive selection times."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightning_edge.runtime.compiler.graph import CompileError, GraphCompiler, MoveView, Pending, Tensor, finisher, rule
from lightning_edge.runtime.packing import INT32_MAX
from lightning_edge.runtime.plan import ConvOp
from lightning_edge.runtime.reference import ReferenceError, _attributes, symmetric_codes
from lightning_edge.runtime.selection import conv_candidates

MAX_TAPS = 128  # the kernels' window limit (conv_driver.h kMaxTaps)


def explicit_pads(node: Any, in_hw: tuple[int, int], kernel_hw: tuple[int, int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """ONNX ``pads`` (top, left, bottom, right), from ``auto_pad`` where the node sets it."""
    attributes = _attributes(node)
    mode = attributes.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "NOTSET":
        return list(attributes.get("pads", [0, 0, 0, 0]))
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise CompileError(node, f"auto_pad {mode!r} is not an ONNX padding mode")
    begin, end = [], []
    for size, kernel, stride, dilation in zip(in_hw, kernel_hw, strides, dilations):
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return [begin[0], begin[1], end[0], end[1]]


@rule("Conv")
def conv(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """An int8 conv (a Pending its QuantizeLinear finishes), or a float32 one where it reads float values or float
    weights (``float_region.float_conv``)."""
    from lightning_edge.runtime.compiler.float_region import float_conv, runs_in_float

    if runs_in_float(c, node, operands):
        return float_conv(c, node, operands)
    x = c.image(node, operands[0])
    attributes = _attributes(node)
    codes, weight_scale = weight(c, node, operands[1])
    if codes.ndim != 4:
        raise CompileError(node, "only 2-D convolutions are supported")
    out_c, group_in, kernel_h, kernel_w = codes.shape
    groups = int(attributes.get("group", 1))
    channels, in_h, in_w = x.shape
    if group_in * groups != channels or out_c % groups:
        raise CompileError(node, f"weight shape {codes.shape} with group={groups} does not fit {channels} input channels")
    strides = list(attributes.get("strides", [1, 1]))
    dilations = list(attributes.get("dilations", [1, 1]))
    if any(d != 1 for d in dilations):  # a dilated kernel is the kernel with zero taps between its taps
        codes = _dilated(codes, dilations)
        kernel_h, kernel_w = codes.shape[2:]
    if kernel_h * kernel_w > MAX_TAPS:
        raise CompileError(node, f"a {kernel_h}x{kernel_w} kernel (dilation included) has more than the {MAX_TAPS} taps "
                                 "the runtime's kernels take")
    pads = explicit_pads(node, (in_h, in_w), (kernel_h, kernel_w), strides, [1, 1])
    if max(pads[0], pads[2]) >= kernel_h or max(pads[1], pads[3]) >= kernel_w or min(pads) < 0:
        raise CompileError(node, f"padding {pads} must be smaller than the kernel {kernel_h}x{kernel_w}")
    out_h = (in_h + pads[0] + pads[2] - kernel_h) // strides[0] + 1
    out_w = (in_w + pads[1] + pads[3] - kernel_w) // strides[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise CompileError(node, f"the kernel does not fit the {in_h}x{in_w} input")
    fields = {"in_h": in_h, "in_w": in_w, "in_c": channels, "out_h": out_h, "out_w": out_w, "out_c": out_c,
              "kernel_h": kernel_h, "kernel_w": kernel_w, "stride_h": strides[0], "stride_w": strides[1],
              "pad_top": pads[0], "pad_left": pads[1], "groups": groups}
    # (out, kernel row, kernel column, channel): the order of an NHWC window
    weights = codes.transpose(0, 2, 3, 1).reshape(out_c, -1)
    bias = _bias(c, node, operands[2] if len(operands) > 2 else None, x.scale, weight_scale, out_c)
    return Pending(node, "conv", [x], {**fields, "codes": weights, "weight_scale": weight_scale, "bias": bias})


def _dilated(codes: np.ndarray, dilations: list[int]) -> np.ndarray:
    out_c, group_in, kernel_h, kernel_w = codes.shape
    dilated = np.zeros((out_c, group_in, (kernel_h - 1) * dilations[0] + 1, (kernel_w - 1) * dilations[1] + 1), codes.dtype)
    dilated[:, :, :: dilations[0], :: dilations[1]] = codes
    return dilated


@rule("ConvTranspose")
def conv_transpose(c: GraphCompiler, node: Any, operands: list[Any]) -> Pending:
    """ConvTranspose as the conv it is (INT8_SPEC rule 16): the input spread out by the stride with codes of real 0
    (its zero point) between its pixels and around them, then a stride-1 conv with the kernel flipped and its in
    and out channels swapped per group. The accumulators are the same exact integers."""
    from lightning_edge.runtime.compiler.movement import materialize

    x = c.image(node, operands[0])
    attributes = _attributes(node)
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or "output_shape" in attributes \
            or any(d != 1 for d in attributes.get("dilations", [1, 1])):
        raise CompileError(node, "ConvTranspose with auto_pad, output_shape or dilation is not supported; export "
                                 "explicit pads")
    codes, weight_scale = weight(c, node, operands[1])
    in_c, group_out, kernel_h, kernel_w = codes.shape
    groups = int(attributes.get("group", 1))
    channels, height, width = x.shape
    if in_c != channels or in_c % groups:
        raise CompileError(node, f"weight shape {codes.shape} with group={groups} does not fit {channels} input channels")
    strides = list(attributes.get("strides", [1, 1]))
    top, left, bottom, right = list(attributes.get("pads", [0, 0, 0, 0]))
    extra = list(attributes.get("output_padding", [0, 0]))
    spread = np.full((1, channels, (height - 1) * strides[0] + 1, (width - 1) * strides[1] + 1), -1, np.int64)
    spread[:, :, :: strides[0], :: strides[1]] = MoveView.of(x).index
    before, after = (kernel_h - 1 - top, kernel_w - 1 - left), (kernel_h - 1 - bottom + extra[0], kernel_w - 1 - right + extra[1])
    padded = np.pad(spread, ((0, 0), (0, 0), (max(before[0], 0), max(after[0], 0)), (max(before[1], 0), max(after[1], 0))),
                    constant_values=-1)
    padded = padded[:, :, max(-before[0], 0): padded.shape[2] - max(-after[0], 0), max(-before[1], 0): padded.shape[3] - max(-after[1], 0)]
    if padded.shape[2] < kernel_h or padded.shape[3] < kernel_w:
        raise CompileError(node, "its padding leaves no output")
    spread_input = materialize(c, MoveView(node, [x], padded, 0.0), (x.scale, x.zero, x.low, x.high),
                               f"{node.output[0]}/spread")
    group_in = in_c // groups
    flipped = codes[:, :, ::-1, ::-1].reshape(groups, group_in, group_out, kernel_h, kernel_w)
    conv_codes = flipped.transpose(0, 2, 1, 3, 4).reshape(groups * group_out, group_in, kernel_h, kernel_w)
    out_c = groups * group_out
    out_h, out_w = padded.shape[2] - kernel_h + 1, padded.shape[3] - kernel_w + 1
    scale = np.tile(weight_scale, groups).astype(np.float32)
    fields = {"in_h": padded.shape[2], "in_w": padded.shape[3], "in_c": channels, "out_h": out_h, "out_w": out_w,
              "out_c": out_c, "kernel_h": kernel_h, "kernel_w": kernel_w, "stride_h": 1, "stride_w": 1, "pad_top": 0,
              "pad_left": 0, "groups": groups}
    bias = _bias(c, node, operands[2] if len(operands) > 2 else None, x.scale, scale, out_c)
    return Pending(node, "conv", [spread_input], {**fields, "codes": np.ascontiguousarray(conv_codes.transpose(0, 2, 3, 1)).reshape(out_c, -1),
                                                  "weight_scale": scale, "bias": bias})


@rule("Gemm")
def gemm(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    from lightning_edge.runtime.compiler.float_region import float_gemm, runs_in_float

    if runs_in_float(c, node, operands):
        return float_gemm(c, node, operands)
    x = c.activation(node, operands[0])
    attributes = _attributes(node)
    if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
        raise CompileError(node, "only alpha=beta=1 and an untransposed input are supported")
    codes, weight_scale = weight(c, node, operands[1])
    if not attributes.get("transB", 0):
        codes = codes.T
    features = int(np.prod(x.shape))
    if len(x.shape) != 1 and x.shape[1:] != (1, 1):
        raise CompileError(node, f"Gemm reads a tensor of shape {x.shape}; flatten it first")
    if codes.shape[1] != features:
        raise CompileError(node, f"weight {codes.shape} does not fit {features} input features")
    if x.flat_order is not None:  # features stored permuted (a Flatten of NHWC storage): columns follow them
        stored = np.zeros_like(codes)
        stored[:, x.flat_order] = codes
        codes = stored
    out_c = codes.shape[0]
    fields = {"in_h": 1, "in_w": 1, "in_c": features, "out_h": 1, "out_w": 1, "out_c": out_c, "kernel_h": 1,
              "kernel_w": 1, "stride_h": 1, "stride_w": 1, "pad_top": 0, "pad_left": 0, "groups": 1}
    bias = _bias(c, node, operands[2] if len(operands) > 2 else None, x.scale, weight_scale, out_c)
    return Pending(node, "conv", [x], {**fields, "codes": codes, "weight_scale": weight_scale, "bias": bias, "flat": True})


@finisher("conv")
def conv_op(c: GraphCompiler, result: Pending, name: str, nodes: list[str], grid: tuple[float, int, int, int]) -> Tensor:
    x = result.inputs[0]
    f = result.fields
    unit = (np.float32(x.scale) * f["weight_scale"]).astype(np.float32)
    multiplier = (unit / np.float32(grid[0])).astype(np.float32)
    codes, bias = f["codes"], f["bias"]
    bound = np.abs(codes.astype(np.int64)).sum(axis=1) * 255
    if bound.max() > INT32_MAX:
        raise CompileError(result.node, "its accumulator could leave int32 (weights too large for the input range)")
    wide_bias = bool((bound + np.abs(bias)).max() > INT32_MAX)  # the scalar kernels add such a bias in int64
    shape = (f["out_c"],) if f.get("flat") else (f["out_c"], f["out_h"], f["out_w"])
    tensor = c.new_tensor(name, grid, shape)
    op_id = c.new_id()
    depthwise = f["groups"] == f["in_c"] == f["out_c"] and f["groups"] > 1 and not wide_bias
    candidates = conv_candidates(f, depthwise, codes)
    if wide_bias or 4 * bound.max() > INT32_MAX:  # Winograd computes 4 * acc; a wide bias needs the int16 layout
        candidates = [c_ for c_ in candidates if not c_.get("algorithm") and c_["block"] <= 16 and "kernels" not in c_]
    op = ConvOp(id=op_id, nodes=nodes, **{k: v for k, v in f.items() if k not in ("codes", "weight_scale", "bias", "flat")},
                input=x.index, output=tensor.index, input_grid=x.grid(), output_grid=tensor.grid(),
                macs=int(codes.size) * f["out_h"] * f["out_w"],
                bias=c.array(op_id, "bias", bias.astype(np.int32)),
                multiplier=c.array(op_id, "multiplier", multiplier),
                weights=c.array(op_id, "weights", codes.astype(np.int8)),  # window order; packed when loaded
                candidates=candidates, wide_bias=wide_bias)
    tensor.producer = c.emit(op)
    return tensor


def _bias(c: GraphCompiler, node: Any, name: str | None, input_scale: float, weight_scale: np.ndarray,
          channels: int) -> np.ndarray:
    """int32 bias on the accumulator's grid (s_x * s_w[c]), as reference._with_bias puts it there."""
    unit = (np.float32(input_scale) * weight_scale).astype(np.float32)
    if not name:
        return np.zeros(channels, np.int64)
    bias, bias_scale = weight(c, node, name, bias=True)
    bias = bias.reshape(-1)
    if bias.size != channels:
        raise CompileError(node, f"bias has {bias.size} values for {channels} output channels")
    if bias_scale is None:
        bias = np.rint(bias.astype(np.float32) / unit)
    elif not np.array_equal(np.broadcast_to(bias_scale, unit.shape), unit):
        real = bias.astype(np.float32) * np.broadcast_to(bias_scale, bias.shape).astype(np.float32)
        bias = np.rint(real / unit)
    bias = np.asarray(bias, dtype=np.float64)
    if np.abs(bias).max(initial=0) > INT32_MAX:
        raise CompileError(node, "its bias does not fit int32 on the accumulator's grid")
    return bias.astype(np.int64)


def weight(c: GraphCompiler, node: Any, name: str, bias: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes, per-output-channel scales) of a quantized weight, or (values, None) for a float bias."""
    producer = c.producers.get(name)
    if producer is not None and producer.op_type == "Identity":
        return weight(c, node, producer.input[0], bias)
    if producer is None or producer.op_type != "DequantizeLinear":
        if bias and name in c.constants:
            return c.constants[name], None
        raise CompileError(node, f"{name!r} must be a constant behind a DequantizeLinear (a quantized weight)")
    if producer.input[0] not in c.constants:
        raise CompileError(node, f"weight {producer.input[0]!r} is not a constant")
    codes = c.constants[producer.input[0]]
    scale = np.asarray(c.constants[producer.input[1]], dtype=np.float32).reshape(-1)
    zero = c.constants[producer.input[2]] if len(producer.input) > 2 and producer.input[2] else np.zeros(1, codes.dtype)
    if bias:  # int32 on the accumulator's grid, or (a bias shared between layers) codes of another grid
        if codes.dtype not in (np.int32, np.int8, np.uint8):
            raise CompileError(node, f"bias {producer.input[0]!r} must be int32 (or int8/uint8 codes), not {codes.dtype}")
        try:
            return symmetric_codes(codes, zero, producer.input[0]).astype(np.int64), scale
        except ReferenceError as error:
            raise CompileError(node, str(error)) from None
    try:
        codes = symmetric_codes(codes, zero, producer.input[0])
    except ReferenceError as error:
        raise CompileError(node, str(error)) from None
    if codes.dtype != np.int8:
        raise CompileError(node, f"weight {producer.input[0]!r} must be int8, not {codes.dtype}")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise CompileError(node, f"weight {producer.input[0]!r} has a scale that is not positive and finite")
    out_axis_size = codes.shape[0] if node.op_type == "Conv" or _attributes(node).get("transB", 0) else codes.shape[1]
    if scale.size not in (1, out_axis_size):
        raise CompileError(node, f"weight scales must be per tensor or per output channel ({scale.size} given)")
    return codes, np.broadcast_to(scale, (out_axis_size,)).astype(np.float32)
