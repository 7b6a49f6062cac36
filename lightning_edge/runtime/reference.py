"""docs/INT8_SPEC.md in plain numpy: the oracle the runtime's kernels must match bit for bit.

It reads a standard ONNX graph (a QDQ file from ``lightning_edge.export.to_onnx`` or ONNX Runtime's
``quantize_static``, or a plain FP32 file) on its own, independent of the runtime's compiler, and evaluates it
as the spec words it. Every tensor is one of:

- a float tensor (a graph input, a ``DequantizeLinear`` output, a float op's result), or a constant;
- an int8 tensor on a grid (``QTensor``: a ``QuantizeLinear`` output), kept in ``tensors`` for checks;
- a pending integer result (``_Pending``) that the next ``QuantizeLinear`` puts onto its grid.

Ops are looked up by ONNX op type in three registries:

- ``INTEGER_OPS`` (Conv, ConvTranspose, Gemm, AveragePool, GlobalAveragePool, ReduceMean over H and W): exact
  integer accumulators (spec rules 5, 6, 9, 13-15), used when the activation input is an int8 tensor and the
  result reaches a ``QuantizeLinear`` (through fused Relu/Clip at most);
- ``MOVE_OPS`` (Concat, Split, Slice, Pad, Transpose, Reshape, MaxPool, nearest Resize, ...): they only move
  or select elements, so on int8 inputs they move codes, requantized only where grids differ (rule 11);
- ``FLOAT_OPS``: every op in float32, one ONNX node at a time (rules 10, 16, 17). Any op without an integer form
  computes ``Q_out(f(DQ(inputs)))``, which is exactly what evaluating the graph's own DequantizeLinear, float op
  and QuantizeLinear nodes gives. The functions are public so that the compiler can evaluate an elementwise
  subgraph on all 256 codes of an input and get a table that is the spec by construction:
  ``FLOAT_OPS[node.op_type](node, inputs, _attributes(node))``, or ``float_op(node, inputs)``.

Slow but simple: tests use it, never ``Session``. Arithmetic on codes is exact (float64 sums of products of int8
values are exact integers far below 2^53); every float32 step is spelled out.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np


class ReferenceError(ValueError):
    """The graph holds something the INT8 spec (and this reference) does not define."""


@dataclass
class QTensor:
    """An int8/uint8 tensor on a grid: codes, float32 scale, zero point and the codes' clamp range."""

    codes: np.ndarray
    scale: np.float32
    zero_point: int
    lo: int
    hi: int

    def real(self) -> np.ndarray:
        """Dequantized, in float32: ``float32(q - z) * s``."""
        return (self.codes.astype(np.int32) - self.zero_point).astype(np.float32) * self.scale

    def same_grid(self, scale: np.float32, zero_point: int) -> bool:
        return bool(np.float32(self.scale) == np.float32(scale)) and self.zero_point == zero_point


@dataclass
class _Pending:
    """An integer op's result before the QuantizeLinear that puts it on its output grid.

    ``accumulator``: int64 ``value``, one unit = ``scale`` (float32, per output channel, or s_x for a pool whose
    multiplier divides by ``count``). ``moved``: a data-movement ``node`` over ``operands`` (QTensors, other
    moved results, constants), evaluated on codes once the output grid is known."""

    kind: str
    value: np.ndarray | None = None
    scale: Any = None
    count: Any = None                              # pools: elements per window, an int or an array
    low: float | None = None                       # fused Relu/Clip bounds, in real units
    high: float | None = None
    node: Any = None
    operands: list[Any] = field(default_factory=list)
    output_index: int = 0


def _attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded)."""
    import onnx

    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def _code_range(zero_point: np.ndarray) -> tuple[int, int]:
    info = np.iinfo(zero_point.dtype)
    return int(info.min), int(info.max)


def quantize(x: np.ndarray, scale: np.float32, zero_point: Any, lo: int, hi: int) -> np.ndarray:
    """ONNX QuantizeLinear: ``clamp(round_half_even(x / scale) + zero_point, lo, hi)``, the division in float32.
    ``scale`` and ``zero_point`` may be arrays already shaped to broadcast (per-axis constants). The ratio is
    clamped to [lo - z, hi - z] before rounding (the same integers, as the bounds are integers), so infinities
    land on the grid's ends; NaN becomes ``lo`` (INT8_SPEC rule 6)."""
    zero = np.asarray(zero_point, dtype=np.int64)
    ratio = np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32)
    clamped = np.clip(ratio, (lo - zero).astype(np.float32), (hi - zero).astype(np.float32))
    codes = np.rint(np.where(np.isnan(clamped), np.float32(lo) - zero, clamped)).astype(np.int64) + zero
    return np.clip(codes, lo, hi)


def symmetric_codes(codes: np.ndarray, zero: Any, name: str) -> np.ndarray:
    """Weight codes with a per-tensor zero point taken out (rule 2): ``q - z``, which must fit int8. ONNX Runtime
    quantizes an initializer shared through an Identity as an activation (uint8, zero point near 128); its real
    values are exactly those of the int8 codes ``q - z`` on the same scale."""
    zero = np.asarray(zero)
    if codes.dtype != np.uint8 and not np.any(zero != 0):
        return codes
    if zero.size > 1 and np.any(zero != zero.reshape(-1)[0]):
        raise ReferenceError(f"weight {name!r} has per-channel nonzero zero points; INT8_SPEC weights are symmetric")
    centered = codes.astype(np.int64) - int(zero.reshape(-1)[0])
    if centered.min(initial=0) < -128 or centered.max(initial=0) > 127:
        raise ReferenceError(f"weight {name!r}: its codes minus their zero point leave int8; INT8_SPEC weights are symmetric")
    return centered.astype(np.int8)


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """INT8_SPEC rule 6: ``clamp(round_half_even(float32(acc) * M) + z, lo, hi)``, M per channel (axis 1)."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    scaled = acc.astype(np.float32) * np.asarray(multiplier, dtype=np.float32).reshape(shape)
    return np.clip(np.rint(scaled).astype(np.int64) + int(zero_point), lo, hi)


def _per_axis(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-axis scale or zero point (1-D) shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    values = np.asarray(values)
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return values.reshape(shape)


# ====================================================================== float ops (spec rules 10, 16, 17)
FloatOp = Callable[[Any, list, dict], Any]
FLOAT_OPS: dict[str, FloatOp] = {}
MOVE_OPS: set[str] = set()


def _register(*op_types: str, move: bool = False) -> Callable[[FloatOp], FloatOp]:
    def decorate(function: FloatOp) -> FloatOp:
        for op_type in op_types:
            FLOAT_OPS[op_type] = function
            if move:
                MOVE_OPS.add(op_type)
        return function
    return decorate


def float_op(node: Any, inputs: list) -> Any:
    """Evaluate one ONNX node by the spec's float rules: an array, or a tuple for a node with several outputs."""
    if node.op_type not in FLOAT_OPS:
        raise ReferenceError(f"node {node.name!r}: op {node.op_type} is not defined by the INT8 spec")
    return FLOAT_OPS[node.op_type](node, inputs, _attributes(node))


def _f32(x: Any) -> Any:
    """float tensors as float32 (ONNX float constants may arrive as float64); integer tensors unchanged."""
    if x is None:
        return None
    x = np.asarray(x)
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def _round_once(x64: np.ndarray) -> np.ndarray:
    """A float64 result rounded to float32 once (transcendentals, reductions)."""
    return np.asarray(x64, dtype=np.float64).astype(np.float32)


def _elementwise(function: Callable) -> FloatOp:
    """An IEEE float32 elementwise op (one rounding per numpy call) over float32 operands."""
    def evaluate(node: Any, inputs: list, attributes: dict) -> np.ndarray:
        return np.asarray(function(*[_f32(x) for x in inputs]))
    return evaluate


def _transcendental(function: Callable) -> FloatOp:
    """f computed in float64 from the float32 operand(s), rounded to float32 once."""
    def evaluate(node: Any, inputs: list, attributes: dict) -> np.ndarray:
        return _round_once(function(*[np.asarray(_f32(x), dtype=np.float64) for x in inputs]))
    return evaluate


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.asarray(a).dtype, np.integer):  # shape arithmetic: ONNX truncates
        return np.trunc(np.true_divide(a, b)).astype(np.asarray(a).dtype)
    return np.divide(a, b)


for _name, _function in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _divide,
                         "Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil,
                         "Reciprocal": lambda x: np.float32(1) / x, "Relu": lambda x: np.maximum(x, x.dtype.type(0)),
                         "Equal": np.equal, "Less": np.less, "Greater": np.greater, "Not": np.logical_not,
                         "And": np.logical_and, "Or": np.logical_or, "Where": np.where}.items():
    FLOAT_OPS[_name] = _elementwise(_function)
FLOAT_OPS["Max"] = _elementwise(lambda *xs: np.maximum.reduce(np.broadcast_arrays(*xs)))
FLOAT_OPS["Min"] = _elementwise(lambda *xs: np.minimum.reduce(np.broadcast_arrays(*xs)))

_erf = np.frompyfunc(math.erf, 1, 1)


def _erf64(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(np.float64)


for _name, _function in {"Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "Tanh": np.tanh, "Exp": np.exp,
                         "Log": np.log, "Sqrt": np.sqrt, "Erf": _erf64, "Pow": np.power,
                         "Softplus": lambda x: np.logaddexp(0.0, x),
                         "Mish": lambda x: x * np.tanh(np.logaddexp(0.0, x))}.items():
    FLOAT_OPS[_name] = _transcendental(_function)


@_register("Gelu")
def gelu(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Opset-20 Gelu in float64, rounded once: ``0.5 x (1 + erf(x / sqrt 2))`` or its tanh approximation."""
    x = np.asarray(_f32(inputs[0]), dtype=np.float64)
    if attributes.get("approximate", "none") == "tanh":
        return _round_once(0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))))
    return _round_once(0.5 * x * (1.0 + _erf64(x / math.sqrt(2.0))))


@_register("Clip")
def clip(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """``min(max(x, low), high)`` with the bounds from inputs 1, 2 (opset 11+) or the min/max attributes."""
    x = _f32(inputs[0])
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attributes.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attributes.get("max")
    if low is not None:
        x = np.maximum(x, np.asarray(low, dtype=x.dtype))
    if high is not None:
        x = np.minimum(x, np.asarray(high, dtype=x.dtype))
    return x


@_register("LeakyRelu")
def leaky_relu(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """``x < 0 ? float32(alpha * x) : x``."""
    x = _f32(inputs[0])
    return np.where(x < 0, np.float32(attributes.get("alpha", 0.01)) * x, x)


@_register("PRelu")
def prelu(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """``x < 0 ? float32(slope * x) : x``, the slope broadcast per channel."""
    x, slope = _f32(inputs[0]), _f32(inputs[1])
    return np.where(x < 0, slope * x, x)


def hard_sigmoid_f32(x: np.ndarray, alpha: np.float32, beta: np.float32) -> np.ndarray:
    """``max(0, min(1, alpha * x + beta))``: a float32 product, then a float32 sum (never fused)."""
    return np.maximum(np.float32(0), np.minimum(np.float32(1), (np.float32(alpha) * x) + np.float32(beta)))


@_register("HardSigmoid")
def hard_sigmoid(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    return hard_sigmoid_f32(_f32(inputs[0]), np.float32(attributes.get("alpha", 0.2)),
                            np.float32(attributes.get("beta", 0.5)))


@_register("HardSwish")
def hard_swish(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """``x * HardSigmoid(x)`` with alpha = float32(1/6), beta = 0.5: three float32 operations."""
    x = _f32(inputs[0])
    return x * hard_sigmoid_f32(x, np.float32(1.0 / 6.0), np.float32(0.5))


@_register("BatchNormalization")
def batch_normalization(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Spec rule 14: ``a = float32(gamma / sqrt(var + eps))``, ``b = float32(beta - mean * a)`` (float64 inside),
    ``y = float32(x * a) + b`` (two float32 operations), per channel (axis 1)."""
    x = _f32(inputs[0])
    a, b = batch_norm_coefficients(inputs, attributes)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x * a.reshape(shape)) + b.reshape(shape)


def batch_norm_coefficients(inputs: list, attributes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rule 14's per-channel ``a``, ``b`` (float32) of a BatchNormalization's scale, bias, mean, var inputs."""
    gamma, beta, mean, var = (np.asarray(_f32(v), dtype=np.float64) for v in inputs[1:5])
    epsilon = float(np.float32(attributes.get("epsilon", 1e-5)))
    a = _round_once(gamma / np.sqrt(var + epsilon))
    return a, _round_once(beta - mean * a.astype(np.float64))


@_register("Softmax", "LogSoftmax")
def softmax(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Softmax (opset 13: along ``axis``, default -1) entirely in float64, rounded once."""
    x = np.asarray(_f32(inputs[0]), dtype=np.float64)
    axis = int(attributes.get("axis", -1))
    shifted = x - x.max(axis=axis, keepdims=True)
    total = np.exp(shifted).sum(axis=axis, keepdims=True)
    if node.op_type == "LogSoftmax":
        return _round_once(shifted - np.log(total))
    return _round_once(np.exp(shifted) / total)


@_register("LayerNormalization")
def layer_normalization(node: Any, inputs: list, attributes: dict) -> Any:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the axes from ``axis`` on, in float64, rounded once."""
    x = np.asarray(_f32(inputs[0]), dtype=np.float64)
    axis = int(attributes.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    inverse = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + float(np.float32(attributes.get("epsilon", 1e-5))))
    y = (x - mean) * inverse * np.asarray(_f32(inputs[1]), dtype=np.float64)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + np.asarray(_f32(inputs[2]), dtype=np.float64)
    outputs = (_round_once(y), _round_once(mean), _round_once(inverse))
    return outputs[: len(node.output)] if len(node.output) > 1 else outputs[0]


def _reduce_axes(inputs: list, attributes: dict, ndim: int) -> tuple[int, ...] | None:
    """ONNX reduction axes: the attribute (opset < 18) or input 1; None means all (unless noop_with_empty_axes)."""
    axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attributes.get("axes")
    if axes is None or len(axes) == 0:
        return None if not attributes.get("noop_with_empty_axes", 0) else ()
    return tuple(sorted(int(a) % ndim for a in np.asarray(axes).reshape(-1)))


@_register("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def reduce(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Sums and means in float64, rounded to float32 once; max and min exact."""
    x = _f32(inputs[0])
    axes = _reduce_axes(inputs, attributes, x.ndim)
    keep = bool(attributes.get("keepdims", 1))
    if axes == ():
        return x
    if node.op_type in ("ReduceMax", "ReduceMin"):
        return (np.max if node.op_type == "ReduceMax" else np.min)(x, axis=axes, keepdims=keep)
    total = np.asarray(x, dtype=np.float64).sum(axis=axes, keepdims=keep)
    if node.op_type == "ReduceMean":
        total = total / (x.size // max(total.size, 1))
    return _round_once(total) if np.issubdtype(x.dtype, np.floating) else total.astype(x.dtype)


@_register("MatMul")
def matmul(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Float32 operands, products and sums in float64, rounded once."""
    a, b = (np.asarray(_f32(v), dtype=np.float64) for v in inputs[:2])
    return _round_once(np.matmul(a, b))


@_register("Gemm")
def gemm(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """``alpha * A' B' + beta * C`` in float64, rounded once."""
    a, b = (np.asarray(_f32(v), dtype=np.float64) for v in inputs[:2])
    a = a.T if attributes.get("transA", 0) else a
    b = b.T if attributes.get("transB", 0) else b
    y = float(attributes.get("alpha", 1.0)) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + float(attributes.get("beta", 1.0)) * np.asarray(_f32(inputs[2]), dtype=np.float64)
    return _round_once(y)


# ---------------------------------------------------------------------- convolution and pooling geometry
def _spatial(attributes: dict, name: str, rank: int, default: int) -> list[int]:
    return list(attributes.get(name, [default] * rank))


def _padding(attributes: dict, size: Iterable[int], kernel: list[int], strides: list[int],
             dilations: list[int]) -> tuple[list[int], list[int]]:
    """Begin and end padding per spatial axis: explicit ``pads`` or ``auto_pad`` (SAME_UPPER puts the odd one at
    the end, SAME_LOWER at the beginning; VALID none)."""
    rank = len(kernel)
    auto = attributes.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = _spatial(attributes, "pads", 2 * rank, 0)
        return pads[:rank], pads[rank:]
    if auto == "VALID":
        return [0] * rank, [0] * rank
    begin, end = [], []
    for length, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (-(-length // s) - 1) * s + (k - 1) * d + 1 - length)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin, end


def _windows(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """(N, C, out_h, out_w, k_h, k_w) windows of a padded NCHW array (a view)."""
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = np.lib.stride_tricks.sliding_window_view(x, extent, axis=(2, 3))
    return view[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]


def _check_2d(node: Any, x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ReferenceError(f"{node.op_type} {node.name!r}: only NCHW (2-D spatial) tensors are supported")


def _conv_geometry(node: Any, x: np.ndarray, weights: np.ndarray, attributes: dict) -> tuple:
    """(out_channels, per_group, kernel, strides, dilations, (pad_begin, pad_end), groups) of a 2-D Conv."""
    _check_2d(node, x)
    out_channels, per_group, *kernel = weights.shape
    strides = _spatial(attributes, "strides", 2, 1)
    dilations = _spatial(attributes, "dilations", 2, 1)
    padding = _padding(attributes, x.shape[2:], kernel, strides, dilations)
    return out_channels, per_group, kernel, strides, dilations, padding, int(attributes.get("group", 1))


def _conv_sum(node: Any, x: np.ndarray, weights: np.ndarray, attributes: dict) -> np.ndarray:
    """``sum(x * w)`` over each window and input channel of its group, in float64: exact for centered int8 codes,
    a float64 sum of exact products for float32 data. ``x`` is unpadded (N, C, H, W); padding adds zeros.

    Summed one kernel tap at a time, as a (pixels x channels) by (channels x outputs) product per group on the
    NHWC input (a depthwise conv's is an elementwise product): no (pixels x window) copy is ever made, which
    would be kernel_h * kernel_w times the input's size."""
    out_channels, per_group, kernel, strides, dilations, (begin, end), groups = _conv_geometry(node, x, weights, attributes)
    per_group_out = out_channels // groups
    batch = x.shape[0]
    padded = np.pad(x.astype(np.float64).transpose(0, 2, 3, 1), ((0, 0), (begin[0], end[0]), (begin[1], end[1]), (0, 0)))
    out_h = (padded.shape[1] - (kernel[0] - 1) * dilations[0] - 1) // strides[0] + 1
    out_w = (padded.shape[2] - (kernel[1] - 1) * dilations[1] - 1) // strides[1] + 1
    w = weights.astype(np.float64).reshape(groups, per_group_out, per_group, kernel[0], kernel[1])
    total = np.zeros((groups, batch * out_h * out_w, per_group_out))
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            top, left = a * dilations[0], b * dilations[1]
            tap = padded[:, top:top + (out_h - 1) * strides[0] + 1:strides[0], left:left + (out_w - 1) * strides[1] + 1:strides[1]]
            tap = tap.reshape(batch * out_h * out_w, groups, per_group).transpose(1, 0, 2)  # (groups, pixels, channels)
            if per_group == 1 and per_group_out == 1:
                total += tap * w[:, :, 0, a, b][:, None, :]
            else:
                total += np.matmul(tap, w[:, :, :, a, b].transpose(0, 2, 1))
    return total.reshape(groups, batch, out_h, out_w, per_group_out).transpose(1, 0, 4, 2, 3).reshape(batch, out_channels, out_h, out_w)


def _conv_transpose_sum(node: Any, x: np.ndarray, weights: np.ndarray, attributes: dict) -> np.ndarray:
    """The transposed-conv sum in float64: input (h, w) times w[c, o, a, b] lands on output
    (h * s + a * d - pad_begin, w * s + b * d - pad_left); output_padding extends the end."""
    _check_2d(node, x)
    if attributes.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in attributes:
        raise ReferenceError(f"ConvTranspose {node.name!r}: only explicit pads are supported (no auto_pad/output_shape)")
    in_channels, per_group_out, kh, kw = weights.shape
    groups = int(attributes.get("group", 1))
    strides = _spatial(attributes, "strides", 2, 1)
    dilations = _spatial(attributes, "dilations", 2, 1)
    pads = _spatial(attributes, "pads", 4, 0)
    extra = _spatial(attributes, "output_padding", 2, 0)
    batch, _, height, width = x.shape
    full_h = (height - 1) * strides[0] + (kh - 1) * dilations[0] + 1 + extra[0]
    full_w = (width - 1) * strides[1] + (kw - 1) * dilations[1] + 1 + extra[1]
    full = np.zeros((batch, groups, per_group_out, full_h, full_w))
    xg = x.astype(np.float64).reshape(batch, groups, in_channels // groups, height, width)
    wg = weights.astype(np.float64).reshape(groups, in_channels // groups, per_group_out, kh, kw)
    for a in range(kh):
        for b in range(kw):
            top, left = a * dilations[0], b * dilations[1]
            full[:, :, :, top: top + (height - 1) * strides[0] + 1: strides[0],
                 left: left + (width - 1) * strides[1] + 1: strides[1]] += np.einsum("ngchw,gco->ngohw", xg, wg[..., a, b])
    full = full.reshape(batch, groups * per_group_out, full_h, full_w)
    return full[:, :, pads[0]: full_h - pads[2], pads[1]: full_w - pads[3]]


def _with_float_bias(y64: np.ndarray, bias: Any) -> np.ndarray:
    if bias is not None:
        y64 = y64 + np.asarray(_f32(bias), dtype=np.float64).reshape(1, -1, 1, 1)
    return _round_once(y64)


@_register("Conv")
def conv(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Float conv: float64 sum of the float32 products plus the bias, rounded once."""
    x, w = (np.asarray(_f32(v), dtype=np.float64) for v in inputs[:2])
    return _with_float_bias(_conv_sum(node, x, w, attributes), inputs[2] if len(inputs) > 2 else None)


def bf16_round(x: Any) -> np.ndarray:
    """float32 values rounded to bfloat16 as vcvtneps2bf16 does (rule 20): to nearest even, zeros and denormals
    to a zero of their sign, NaN kept quiet; returned as float32 (the low 16 bits zero)."""
    bits = np.ascontiguousarray(_f32(x), dtype=np.float32).view(np.uint32)
    exponent, magnitude = bits & np.uint32(0x7F800000), bits & np.uint32(0x7FFFFFFF)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    rounded = np.where(magnitude > np.uint32(0x7F800000), (bits | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), rounded)
    rounded = np.where(exponent == 0, bits & np.uint32(0x80000000), rounded)
    return rounded.astype(np.uint32).view(np.float32)


def _flushed(x: np.ndarray) -> np.ndarray:
    """float32 results below the smallest normal flushed to a zero of their sign (vdpbf16ps's FTZ)."""
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), x).astype(np.float32)


def _tap_windows(node: Any, x: np.ndarray, weights: np.ndarray, attributes: dict) -> tuple[list[np.ndarray], tuple[int, int]]:
    """A Conv's input (N, C, H, W) padded with zeros, as one (N, C, out_h, out_w) window per kernel tap (row-major
    order), and (out_h, out_w)."""
    _, _, kernel, strides, dilations, (begin, end), _ = _conv_geometry(node, x, weights, attributes)
    padded = np.pad(x, ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
    out_h = (padded.shape[2] - (kernel[0] - 1) * dilations[0] - 1) // strides[0] + 1
    out_w = (padded.shape[3] - (kernel[1] - 1) * dilations[1] - 1) // strides[1] + 1
    taps = [padded[:, :, a * dilations[0]: a * dilations[0] + (out_h - 1) * strides[0] + 1: strides[0],
                   b * dilations[1]: b * dilations[1] + (out_w - 1) * strides[1] + 1: strides[1]]
            for a in range(kernel[0]) for b in range(kernel[1])]
    return taps, (out_h, out_w)


def bf16_conv(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Conv in bfloat16 (rule 20): x and w rounded to bfloat16; per output, a float32 accumulator from +0 takes,
    for each tap (a, b) in row-major order and each pair (2i, 2i + 1) of the group's input channels (a zero
    channel after an odd count), ``fma(x[2i+1], w[2i+1], acc)`` then ``fma(x[2i], w[2i], acc)``, each rounded to
    float32 with a denormal result flushed; then ``acc + bias`` in float32."""
    x, weights = bf16_round(inputs[0]), bf16_round(inputs[1])
    out_channels, per_group, kernel, _, _, _, groups = _conv_geometry(node, x, weights, attributes)
    batch = x.shape[0]
    taps, (out_h, out_w) = _tap_windows(node, x, weights, attributes)
    # (batch, groups, reduction, pixels), r = tap * per_group + channel: taps outer, channels inner.
    columns = np.stack(taps, axis=2).reshape(batch, groups, per_group, len(taps), out_h * out_w)
    columns = columns.transpose(0, 1, 3, 2, 4).reshape(batch, groups, len(taps) * per_group, -1).astype(np.float64)
    w = weights.reshape(groups, out_channels // groups, per_group, len(taps)).transpose(0, 1, 3, 2)
    w = w.reshape(groups, out_channels // groups, -1).astype(np.float64)
    acc = np.zeros((batch, groups, out_channels // groups, out_h * out_w), np.float32)
    for tap in range(len(taps)):
        for even in range(0, per_group, 2):
            for channel in (even + 1, even):
                if channel < per_group:
                    r = tap * per_group + channel
                    acc = _flushed((acc + columns[:, :, None, r, :] * w[None, :, :, r, None]).astype(np.float32))
    acc = acc.reshape(batch, out_channels, out_h, out_w)
    if len(inputs) > 2 and inputs[2] is not None:
        acc = (acc + np.asarray(_f32(inputs[2]), np.float32).reshape(1, -1, 1, 1)).astype(np.float32)
    return acc


def fp16_round(x: Any) -> np.ndarray:
    """float32 values rounded to IEEE half precision (rule 21): to nearest, ties to even; past 65504 to infinity;
    half denormals kept; returned as float32."""
    with np.errstate(over="ignore"):  # past the half range is infinity, by the rule
        return np.asarray(_f32(x), np.float32).astype(np.float16).astype(np.float32)


def fp16_conv(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Conv in half precision (rule 21): x and w rounded to half; per output, a half accumulator from +0 takes,
    for each tap (a, b) in row-major order and each input channel of the group in order, ``acc = half(acc + x *
    w)`` (one rounding, NEON's vfma of halves); then ``float32(acc) + bias`` in float32."""
    x, weights = fp16_round(inputs[0]), fp16_round(inputs[1])
    out_channels, per_group, kernel, _, _, _, groups = _conv_geometry(node, x, weights, attributes)
    batch = x.shape[0]
    taps, (out_h, out_w) = _tap_windows(node, x, weights, attributes)
    w = weights.astype(np.float64).reshape(groups, out_channels // groups, per_group, kernel[0] * kernel[1])
    acc = np.zeros((batch, groups, out_channels // groups, out_h, out_w), np.float16)
    for tap, window in enumerate(taps):
        window = window.reshape(batch, groups, per_group, out_h, out_w).astype(np.float64)
        for channel in range(per_group):
            # Exact product of two halves plus a half, rounded to double (never near a half's tie, see rule
            # 21), then to half.
            acc = (acc.astype(np.float64) + window[:, :, None, channel] * w[None, :, :, channel, tap, None, None]).astype(np.float16)
    acc = acc.reshape(batch, out_channels, out_h, out_w).astype(np.float32)
    if len(inputs) > 2 and inputs[2] is not None:
        acc = (acc + np.asarray(_f32(inputs[2]), np.float32).reshape(1, -1, 1, 1)).astype(np.float32)
    return acc


def _gemm_as_conv(conv: FloatOp) -> FloatOp:
    """Gemm in a reduced precision (rules 20 and 21) where alpha is 1 and C is absent or one row: ``A B'`` as the
    1x1 conv of A's features (``conv``), then ``+ beta * C`` with ``beta * C`` in float32; any other Gemm in
    float32 (``gemm``)."""
    return functools.partial(_gemm_by_conv, conv)


def _gemm_by_conv(conv: FloatOp, node: Any, inputs: list, attributes: dict) -> np.ndarray:
    a, b = np.asarray(_f32(inputs[0]), np.float32), np.asarray(_f32(inputs[1]), np.float32)
    b = b.T if attributes.get("transB", 0) else b
    bias = np.asarray(_f32(inputs[2]), np.float32) if len(inputs) > 2 and inputs[2] is not None else None
    features = b.shape[1]
    one_row = bias is None or (bias.ndim <= 2 and bias.size in (1, features) and (bias.ndim < 2 or bias.shape[0] == 1))
    if attributes.get("transA", 0) or np.float32(attributes.get("alpha", 1.0)) != 1 or a.ndim != 2 or not one_row:
        return gemm(node, inputs, attributes)
    if bias is not None:
        bias = np.broadcast_to(bias.reshape(-1), (features,)) * np.float32(attributes.get("beta", 1.0))
    y = conv(node, [a[:, :, None, None], b.T[:, :, None, None], bias], {})
    return y.reshape(len(a), features)


# Ops a precision other than float32 computes its own way (ReferenceModel(precision=...)).
PRECISION_OPS: dict[str, dict[str, FloatOp]] = {
    "fp32": {},
    "bf16": {"Conv": bf16_conv, "Gemm": _gemm_as_conv(bf16_conv)},
    "fp16": {"Conv": fp16_conv, "Gemm": _gemm_as_conv(fp16_conv)},
}


@_register("ConvTranspose")
def conv_transpose(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x, w = (np.asarray(_f32(v), dtype=np.float64) for v in inputs[:2])
    return _with_float_bias(_conv_transpose_sum(node, x, w, attributes), inputs[2] if len(inputs) > 2 else None)


def _pool_geometry(attributes: dict, size: tuple[int, ...]) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """kernel, strides, dilations, begin and end padding (end includes the overhang that ceil_mode adds: the last
    window may run past the padded input, but one that would start in the end padding is dropped, as in ONNX and
    PyTorch)."""
    kernel = list(attributes["kernel_shape"])
    strides = _spatial(attributes, "strides", 2, 1)
    dilations = _spatial(attributes, "dilations", 2, 1)
    begin, end = _padding(attributes, size, kernel, strides, dilations)
    end = list(end)
    if attributes.get("ceil_mode", 0):
        for axis, (length, k, s, d) in enumerate(zip(size, kernel, strides, dilations)):
            span = length + begin[axis] + end[axis] - ((k - 1) * d + 1)
            out = -(-span // s) + 1
            if (out - 1) * s >= length + begin[axis]:
                out -= 1
            end[axis] = max(end[axis], (out - 1) * s + (k - 1) * d + 1 - length - begin[axis])
    return kernel, strides, dilations, begin, end


def _pool_sums(node: Any, x: np.ndarray, attributes: dict) -> tuple[np.ndarray, np.ndarray]:
    """AveragePool's window sums (in x's dtype: int64 codes exact, float64 data) and element counts per output
    position: the elements inside the input (count_include_pad=0), or inside the input and its explicit padding
    (count_include_pad=1; a ceil_mode overhang never counts)."""
    _check_2d(node, x)
    kernel, strides, dilations, begin, end = _pool_geometry(attributes, x.shape[2:])
    explicit_begin, explicit_end = _padding(attributes, x.shape[2:], kernel, strides, dilations)
    widths = ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1]))
    sums = _windows(np.pad(x, widths), kernel, strides, dilations).sum(axis=(4, 5))
    inside = np.ones((1, 1) + x.shape[2:], dtype=np.int64)
    if attributes.get("count_include_pad", 0):
        inside = np.pad(inside, ((0, 0), (0, 0), (explicit_begin[0], explicit_end[0]), (explicit_begin[1], explicit_end[1])),
                        constant_values=1)
        widths = ((0, 0), (0, 0), (begin[0] - explicit_begin[0], end[0] - explicit_end[0]),
                  (begin[1] - explicit_begin[1], end[1] - explicit_end[1]))
    counts = _windows(np.pad(inside, widths), kernel, strides, dilations).sum(axis=(4, 5))
    return sums, counts


@_register("AveragePool")
def average_pool(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Float average pool: float64 window sum divided by the count (see ``_pool_sums``), rounded once."""
    sums, counts = _pool_sums(node, np.asarray(_f32(inputs[0]), dtype=np.float64), attributes)
    return _round_once(sums / counts)


@_register("GlobalAveragePool")
def global_average_pool(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x = np.asarray(_f32(inputs[0]), dtype=np.float64)
    return _round_once(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True))


# ---------------------------------------------------------------------- data movement (rule 11): any dtype
def _lowest(dtype: np.dtype) -> Any:
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


@_register("MaxPool", move=True)
def max_pool(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """Window maxima; padding never wins (ceil_mode, dilations, auto_pad as ONNX defines them)."""
    x = np.asarray(inputs[0])
    _check_2d(node, x)
    if len(node.output) > 1 and node.output[1]:
        raise ReferenceError(f"MaxPool {node.name!r}: the Indices output is not supported")
    kernel, strides, dilations, begin, end = _pool_geometry(attributes, x.shape[2:])
    padded = np.pad(x, ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])), constant_values=_lowest(x.dtype))
    return _windows(padded, kernel, strides, dilations).max(axis=(4, 5))


@_register("GlobalMaxPool", move=True)
def global_max_pool(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x = np.asarray(inputs[0])
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@_register("Identity", "Dropout", move=True)
def identity(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    return np.asarray(inputs[0])


@_register("Reshape", move=True)
def reshape(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """ONNX Reshape: a 0 copies the input's dimension (allowzero=0), -1 is inferred."""
    x, shape = np.asarray(inputs[0]), [int(s) for s in np.asarray(inputs[1]).reshape(-1)]
    if not attributes.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_register("Flatten", move=True)
def flatten(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x = np.asarray(inputs[0])
    axis = int(attributes.get("axis", 1)) % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _axes(inputs: list, attributes: dict) -> list[int] | None:
    axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attributes.get("axes")
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


@_register("Squeeze", move=True)
def squeeze(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x, axes = np.asarray(inputs[0]), _axes(inputs, attributes)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


@_register("Unsqueeze", move=True)
def unsqueeze(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x, axes = np.asarray(inputs[0]), _axes(inputs, attributes)
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


@_register("Transpose", move=True)
def transpose(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x = np.asarray(inputs[0])
    return np.transpose(x, attributes.get("perm", list(range(x.ndim))[::-1]))


@_register("Concat", move=True)
def concat(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    return np.concatenate([np.asarray(x) for x in inputs], axis=int(attributes["axis"]))


@_register("Split", move=True)
def split(node: Any, inputs: list, attributes: dict) -> tuple:
    """Sizes from input 1 (opset 13+) or the attribute; else equal parts (the last smaller, opset 18)."""
    x = np.asarray(inputs[0])
    axis = int(attributes.get("axis", 0)) % x.ndim
    sizes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attributes.get("split")
    if sizes is None:
        part = -(-x.shape[axis] // len(node.output))
        sizes = [min(part, x.shape[axis] - i * part) for i in range(len(node.output))]
    return tuple(np.split(x, np.cumsum([int(s) for s in sizes])[:-1], axis=axis))


@_register("Slice", move=True)
def slice_(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """ONNX Slice (opset 10+): starts, ends, axes, steps as inputs; out-of-range bounds clamp as in Python."""
    x = np.asarray(inputs[0])
    starts, ends = (np.asarray(v).reshape(-1) for v in inputs[1:3])
    axes = np.asarray(inputs[3]).reshape(-1) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = np.asarray(inputs[4]).reshape(-1) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


@_register("Pad", move=True)
def pad(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    """ONNX Pad (opset 11+): constant (input 2, default 0), reflect or edge; negative pads crop."""
    x = np.asarray(inputs[0])
    pads = [int(p) for p in np.asarray(inputs[1]).reshape(-1)]
    if len(inputs) > 3 and inputs[3] is not None:
        raise ReferenceError(f"Pad {node.name!r}: the axes input is not supported")
    rank = x.ndim
    mode = attributes.get("mode", "constant")
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[i + rank])) for i in range(rank))
    x = x[crop]
    widths = [(max(0, pads[i]), max(0, pads[i + rank])) for i in range(rank)]
    if mode == "constant":
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0
        return np.pad(x, widths, constant_values=np.asarray(value).astype(x.dtype).reshape(()))
    return np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge"}[mode])


@_register("Gather", move=True)
def gather(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x, indices = np.asarray(inputs[0]), np.asarray(inputs[1]).astype(np.int64)
    axis = int(attributes.get("axis", 0)) % x.ndim
    return np.take(x, np.where(indices < 0, indices + x.shape[axis], indices), axis=axis)


@_register("Expand", move=True)
def expand(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x = np.asarray(inputs[0])
    shape = np.broadcast_shapes(x.shape, tuple(int(s) for s in np.asarray(inputs[1]).reshape(-1)))
    return np.array(np.broadcast_to(x, shape))


@_register("Tile", move=True)
def tile(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    return np.tile(np.asarray(inputs[0]), [int(r) for r in np.asarray(inputs[1]).reshape(-1)])


@_register("Shape")
def shape(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    dims = np.asarray(inputs[0]).shape
    return np.array(dims[attributes.get("start", 0): attributes.get("end", len(dims))], dtype=np.int64)


@_register("ConstantOfShape")
def constant_of_shape(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    from onnx import numpy_helper

    value = numpy_helper.to_array(attributes["value"]) if "value" in attributes else np.zeros(1, np.float32)
    return np.full([int(s) for s in np.asarray(inputs[0]).reshape(-1)], value.reshape(-1)[0], dtype=value.dtype)


@_register("Cast")
def cast(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    from onnx import helper

    return np.asarray(inputs[0]).astype(helper.tensor_dtype_to_np_dtype(attributes["to"]))


@_register("Range")
def range_(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    return np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))


# ---------------------------------------------------------------------- Resize (rule 15)
def _source_coordinates(mode: str, out_size: int, in_size: int, scale: np.float32) -> np.ndarray:
    """Position in the input of each output index i, in float32 (each a float32 operation, left to right):
    half_pixel ``(i + 0.5) / scale - 0.5``; pytorch_half_pixel the same, 0 when out_size == 1;
    align_corners ``i * (in - 1) / (out - 1)``, 0 when out_size == 1; asymmetric ``i / scale``."""
    i = np.arange(out_size, dtype=np.float32)
    half = np.float32(0.5)
    if mode == "half_pixel":
        return (i + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (i + half) / scale - half if out_size > 1 else np.zeros(1, np.float32)
    if mode == "align_corners":
        return (i * np.float32(in_size - 1)) / np.float32(out_size - 1) if out_size > 1 else np.zeros(1, np.float32)
    if mode == "asymmetric":
        return i / scale
    raise ReferenceError(f"Resize: coordinate_transformation_mode {mode!r} is not supported")


def _nearest(position: np.ndarray, mode: str, in_size: int) -> np.ndarray:
    """Nearest input index per nearest_mode, clamped into the input."""
    floor = np.floor(position)
    if mode == "round_prefer_floor":
        index = np.where(position - floor == np.float32(0.5), floor, np.rint(position))
    elif mode == "round_prefer_ceil":
        index = np.where(position - floor == np.float32(0.5), floor + 1, np.rint(position))
    elif mode == "floor":
        index = floor
    elif mode == "ceil":
        index = np.ceil(position)
    else:
        raise ReferenceError(f"Resize: nearest_mode {mode!r} is not supported")
    return np.clip(index.astype(np.int64), 0, in_size - 1)


def _resize_plan(node: Any, x: np.ndarray, inputs: list, attributes: dict) -> list[tuple[int, int, np.float32]]:
    """(in size, out size, float32 scale) for H and W: from ``sizes`` (scale = float32(out) / float32(in)) or
    ``scales`` (out = floor(in * scale)); N and C must stay."""
    _check_2d(node, x)
    if attributes.get("antialias", 0) or attributes.get("axes") is not None:
        raise ReferenceError(f"Resize {node.name!r}: antialias and axes are not supported")
    scales = inputs[2] if len(inputs) > 2 and inputs[2] is not None and np.asarray(inputs[2]).size else None
    sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
    if sizes is not None:
        out = [int(s) for s in np.asarray(sizes).reshape(-1)]
        factors = [np.float32(o) / np.float32(i) for o, i in zip(out, x.shape)]
    elif scales is not None:
        factors = [np.float32(s) for s in np.asarray(scales).reshape(-1)]
        out = [int(math.floor(i * float(s))) for i, s in zip(x.shape, factors)]
    else:
        raise ReferenceError(f"Resize {node.name!r} has neither scales nor sizes")
    if out[:2] != list(x.shape[:2]):
        raise ReferenceError(f"Resize {node.name!r}: only H and W may be resized")
    return [(x.shape[axis], out[axis], factors[axis]) for axis in (2, 3)]


def resize_nearest(node: Any, x: np.ndarray, inputs: list, attributes: dict) -> np.ndarray:
    """Nearest Resize picks elements (exact on codes)."""
    coordinate = attributes.get("coordinate_transformation_mode", "half_pixel")
    rows, cols = (_nearest(_source_coordinates(coordinate, out, size, scale),
                           attributes.get("nearest_mode", "round_prefer_floor"), size)
                  for size, out, scale in _resize_plan(node, x, inputs, attributes))
    return x[:, :, rows][:, :, :, cols]


def _linear_taps(position: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear neighbours and weights along one axis, float32: p = clamp(position, 0, in - 1), i0 = floor(p),
    i1 = min(i0 + 1, in - 1), w1 = p - i0, w0 = 1 - w1."""
    p = np.clip(position, np.float32(0), np.float32(in_size - 1))
    i0 = np.floor(p).astype(np.int64)
    w1 = p - i0.astype(np.float32)
    return i0, np.minimum(i0 + 1, in_size - 1), np.float32(1) - w1, w1


def resize_linear(node: Any, x: np.ndarray, inputs: list, attributes: dict) -> np.ndarray:
    """Bilinear Resize in float32: ``top = x[y0,x0]*wx0 + x[y0,x1]*wx1``, ``bottom`` likewise on row y1,
    ``y = top*wy0 + bottom*wy1``, every product and sum a float32 operation in this order."""
    coordinate = attributes.get("coordinate_transformation_mode", "half_pixel")
    (h, out_h, scale_h), (w, out_w, scale_w) = _resize_plan(node, x, inputs, attributes)
    y0, y1, wy0, wy1 = _linear_taps(_source_coordinates(coordinate, out_h, h, scale_h), h)
    x0, x1, wx0, wx1 = _linear_taps(_source_coordinates(coordinate, out_w, w, scale_w), w)
    x = _f32(x)

    def row(index: np.ndarray) -> np.ndarray:
        picked = x[:, :, index]
        return (picked[:, :, :, x0] * wx0) + (picked[:, :, :, x1] * wx1)

    return (row(y0) * wy0[:, None]) + (row(y1) * wy1[:, None])


@_register("Resize", move=True)
def resize(node: Any, inputs: list, attributes: dict) -> np.ndarray:
    x = np.asarray(inputs[0])
    mode = attributes.get("mode", "nearest")
    if mode == "nearest":
        return resize_nearest(node, x, inputs, attributes)
    if mode == "linear":
        return resize_linear(node, x, inputs, attributes)
    raise ReferenceError(f"Resize {node.name!r}: mode {mode!r} is not supported")


def _is_move(node: Any) -> bool:
    """A data-movement node: moves or selects elements, so it can act on codes."""
    if node.op_type == "Resize":
        return _attributes(node).get("mode", "nearest") == "nearest"
    return node.op_type in MOVE_OPS


def _data_inputs(node: Any) -> list[str]:
    """The inputs a data-movement node moves (the others are shapes, indices, pads)."""
    return list(node.input) if node.op_type == "Concat" else [node.input[0]]


# ====================================================================== integer ops (rules 5, 6, 9, 13-15)
IntegerOp = Callable[["ReferenceModel", Any], "_Pending | None"]
INTEGER_OPS: dict[str, IntegerOp] = {}


def _integer(op_type: str) -> Callable[[IntegerOp], IntegerOp]:
    def decorate(function: IntegerOp) -> IntegerOp:
        INTEGER_OPS[op_type] = function
        return function
    return decorate


@_integer("Conv")
def integer_conv(model: "ReferenceModel", node: Any) -> _Pending | None:
    """Rule 5: ``acc = sum((q - z_x) * w)`` + bias (dilation, auto_pad, groups with a channel multiplier)."""
    x, weight = model.quantized(node.input[0]), model.weight(node.input[1])
    if x is None or weight is None:
        return None
    codes, weight_scale = weight
    acc = _conv_sum(node, x.codes.astype(np.float64) - x.zero_point, codes, _attributes(node))
    return model.with_bias(node, np.rint(acc).astype(np.int64), x.scale, weight_scale, node.input[2] if len(node.input) > 2 else "")


@_integer("ConvTranspose")
def integer_conv_transpose(model: "ReferenceModel", node: Any) -> _Pending | None:
    """Rule 13: the transposed-conv sum of ``(q - z_x) * w`` (exact) + bias; weights (C_in, C_out / group, kh, kw),
    per-channel scales along axis 1 (repeated per group)."""
    x, weight = model.quantized(node.input[0]), model.weight(node.input[1])
    if x is None or weight is None:
        return None
    codes, weight_scale = weight
    attributes = _attributes(node)
    acc = _conv_transpose_sum(node, x.codes.astype(np.float64) - x.zero_point, codes, attributes)
    scale = np.asarray(weight_scale, dtype=np.float32).reshape(-1)
    if scale.size > 1 and scale.size != acc.shape[1]:
        scale = np.tile(scale, acc.shape[1] // scale.size)
    return model.with_bias(node, np.rint(acc).astype(np.int64), x.scale, scale, node.input[2] if len(node.input) > 2 else "")


@_integer("Gemm")
def integer_gemm(model: "ReferenceModel", node: Any) -> _Pending | None:
    """Rule 5 for a linear layer: alpha = beta = 1, A untransposed, B int8 (per output channel)."""
    attributes = _attributes(node)
    x, weight = model.quantized(node.input[0]), model.weight(node.input[1])
    if x is None or weight is None:
        return None
    if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
        raise ReferenceError(f"Gemm {node.name!r}: only alpha=beta=1 and an untransposed input are supported")
    codes, weight_scale = weight
    if not attributes.get("transB", 0):
        codes = codes.T  # stored (in, out): make it (out, in)
    centered = x.codes.astype(np.float64) - x.zero_point
    acc = np.rint(centered @ codes.astype(np.float64).T).astype(np.int64)
    return model.with_bias(node, acc, x.scale, weight_scale, node.input[2] if len(node.input) > 2 else "")


@_integer("AveragePool")
def integer_average_pool(model: "ReferenceModel", node: Any) -> _Pending | None:
    """Rule 9: ``acc = sum(q - z_x)`` over the window, divided by its count in the requantize multiplier."""
    x = model.quantized(node.input[0])
    if x is None:
        return None
    sums, counts = _pool_sums(node, x.codes.astype(np.int64) - x.zero_point, _attributes(node))
    return _Pending("accumulator", sums, scale=np.float32(x.scale), count=counts)


@_integer("GlobalAveragePool")
def integer_global_average_pool(model: "ReferenceModel", node: Any) -> _Pending | None:
    x = model.quantized(node.input[0])
    if x is None:
        return None
    acc = (x.codes.astype(np.int64) - x.zero_point).sum(axis=(2, 3), keepdims=True)
    return _Pending("accumulator", acc, scale=np.float32(x.scale), count=x.codes.shape[2] * x.codes.shape[3])


@_integer("ReduceMean")
def integer_reduce_mean(model: "ReferenceModel", node: Any) -> _Pending | None:
    """ReduceMean over H and W of an NCHW tensor is a global average pool (keepdims 0 or 1)."""
    x = model.quantized(node.input[0])
    if x is None or x.codes.ndim != 4:
        return None
    axes_input = model.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if _reduce_axes([None, axes_input], _attributes(node), 4) != (2, 3):
        return None
    acc = (x.codes.astype(np.int64) - x.zero_point).sum(axis=(2, 3), keepdims=bool(_attributes(node).get("keepdims", 1)))
    return _Pending("accumulator", acc, scale=np.float32(x.scale), count=x.codes.shape[2] * x.codes.shape[3])


# ====================================================================== the graph
class ReferenceModel:
    """An ONNX model evaluated by the spec. ``run(x)`` returns the outputs (float32 where the graph dequantizes);
    ``precision="bf16"`` computes float convs in bfloat16 (rule 20), ``"fp16"`` in half precision (rule 21), as
    ``compile(..., precision=...)`` does;
    ``tensors`` keeps every int8 tensor of the last run by its ONNX name (the QuantizeLinear output), for
    layer-by-layer checks."""

    def __init__(self, model: Any, precision: str = "fp32"):
        import onnx
        from onnx import numpy_helper

        if precision not in PRECISION_OPS:
            raise ReferenceError(f"unknown precision {precision!r}; use one of {sorted(PRECISION_OPS)}")
        self.precision_ops = PRECISION_OPS[precision]

        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        self.graph = model.graph
        self.constants: dict[str, np.ndarray] = {item.name: numpy_helper.to_array(item) for item in self.graph.initializer}
        self.producers = {output: node for node in self.graph.node for output in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.input_names = [item.name for item in self.graph.input if item.name not in self.constants]
        self.output_names = [output.name for output in self.graph.output]
        self._fold_constants()
        self.tensors: dict[str, QTensor] = {}
        self.values: dict[str, Any] = {}
        self.dequantized: dict[str, str] = {}

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    def _fold_constants(self) -> None:
        """Evaluate, once, every node whose inputs are all constants: Constant nodes, shared initializers through
        Identity, and quantized constants (``constant -> QuantizeLinear``: codes = Q(constant), per axis; rule 18)."""
        from onnx import numpy_helper

        for node in self.graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
                continue
            if not node.input or not all(name == "" or name in self.constants for name in node.input):
                continue
            inputs = [self.constants.get(name) if name else None for name in node.input]
            if node.op_type == "QuantizeLinear":
                result = self._quantize_constant(node, inputs)
            elif node.op_type == "DequantizeLinear":
                result = self._dequantize_constant(node, inputs)
            else:
                result = float_op(node, inputs)
            for name, value in zip(node.output, result if isinstance(result, tuple) else (result,)):
                self.constants[name] = np.asarray(value)

    @staticmethod
    def _zero_point(inputs: list) -> np.ndarray:
        return inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros((), np.uint8)

    def _quantize_constant(self, node: Any, inputs: list) -> np.ndarray:
        value, zero = np.asarray(inputs[0]), self._zero_point(inputs)
        axis = int(_attributes(node).get("axis", 1))
        lo, hi = _code_range(zero)
        codes = quantize(value, _per_axis(inputs[1], axis, value.ndim), _per_axis(zero, axis, value.ndim), lo, hi)
        return codes.astype(zero.dtype)

    def _dequantize_constant(self, node: Any, inputs: list) -> np.ndarray:
        codes, zero = np.asarray(inputs[0]), self._zero_point(inputs)
        axis = int(_attributes(node).get("axis", 1))
        centered = codes.astype(np.int64) - _per_axis(zero, axis, codes.ndim).astype(np.int64)
        return centered.astype(np.float32) * _per_axis(inputs[1], axis, codes.ndim).astype(np.float32)

    def constant(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise ReferenceError(f"{name!r} must be a constant")
        return self.constants[name]

    # ------------------------------------------------------------------ evaluation
    def run(self, x: Any) -> list[np.ndarray]:
        """Evaluate the graph on ``x``: one array (a single-input graph), a list in graph-input order, or a dict
        by input name. Returns the graph's outputs in order."""
        self.values = dict(self.constants)
        self.values.update(self._bind_inputs(x))
        self.tensors, self.dequantized = {}, {}
        for node in self.graph.node:
            if all(name in self.constants for name in node.output):
                continue
            self._evaluate(node)
        return [self._output(name) for name in self.output_names]

    def _bind_inputs(self, x: Any) -> dict[str, np.ndarray]:
        if isinstance(x, dict):
            values = dict(x)
        elif isinstance(x, (list, tuple)):
            values = dict(zip(self.input_names, x))
        else:
            values = {self.input_names[0]: x}
        missing = [name for name in self.input_names if name not in values]
        if missing or len(values) != len(self.input_names):
            raise ReferenceError(f"the graph's inputs are {self.input_names}; got {sorted(values)}")
        return {name: _f32(value) for name, value in values.items()}

    def _evaluate(self, node: Any) -> None:
        """One node: quantize / dequantize, fused Relu/Clip, an integer op, a data movement on codes, or float."""
        op = node.op_type
        if op == "QuantizeLinear":
            self._quantize_node(node)
        elif op == "DequantizeLinear":
            self._dequantize_node(node)
        elif op in ("Relu", "Clip") and self._pending(node.input[0], "accumulator") is not None:
            self._fuse_activation(node)
        elif op == "Clip" and isinstance(self.values.get(node.input[0]), QTensor):
            self._clip_codes(node)
        elif op in INTEGER_OPS and self._feeds_quantize(node.output[0]) and self._set(node, INTEGER_OPS[op](self, node)):
            pass
        elif _is_move(node) and all(self._is_int8(name) for name in _data_inputs(node)):
            operands = [self._operand(name) for name in node.input]
            for index, name in enumerate(node.output):
                self.values[name] = _Pending("moved", node=node, operands=operands, output_index=index)
        else:
            inputs = [self.real(name) if name else None for name in node.input]
            own = self.precision_ops.get(op)
            result = own(node, inputs, _attributes(node)) if own else float_op(node, inputs)
            for name, value in zip(node.output, result if isinstance(result, tuple) else (result,)):
                self.values[name] = value

    def _set(self, node: Any, result: _Pending | None) -> bool:
        if result is None:
            return False
        self.values[node.output[0]] = result
        return True

    def _feeds_quantize(self, name: str) -> bool:
        """Every reader of ``name`` is a QuantizeLinear, or a Relu/Clip (constant bounds) that feeds only them:
        where an integer accumulator can be put onto a grid."""
        readers = self.consumers.get(name, [])
        if not readers or name in self.output_names:
            return False
        for reader in readers:
            if reader.op_type == "QuantizeLinear":
                continue
            bounds = list(reader.input[1:])
            if reader.op_type in ("Relu", "Clip") and all(not b or b in self.constants for b in bounds) \
                    and self._feeds_quantize(reader.output[0]):
                continue
            return False
        return True

    def _pending(self, name: str, kind: str) -> _Pending | None:
        value = self.values.get(name)
        return value if isinstance(value, _Pending) and value.kind == kind else None

    def _is_int8(self, name: str) -> bool:
        """``name`` dequantizes an int8 tensor, or is moved int8 codes."""
        return name in self.dequantized or self._pending(name, "moved") is not None

    def _operand(self, name: str) -> Any:
        """A data-movement operand: the int8 tensor it dequantizes, a moved result, a constant, or nothing."""
        if not name:
            return None
        if name in self.dequantized:
            return self.tensors[self.dequantized[name]]
        value = self.values[name]
        return value if isinstance(value, _Pending) else np.asarray(value)

    # ------------------------------------------------------------------ tensor views
    def quantized(self, name: str) -> QTensor | None:
        """The int8 tensor behind ``name``: a dequantized QuantizeLinear output, or moved codes all on one grid."""
        if name in self.dequantized:
            return self.tensors[self.dequantized[name]]
        pending = self._pending(name, "moved")
        if pending is None:
            return None
        grids = list(_leaves(pending))
        first = grids[0]
        if not all(grid.same_grid(first.scale, first.zero_point) for grid in grids):
            return None
        codes = self._moved_codes(pending, first.scale, first.zero_point, first.lo, first.hi)
        return QTensor(codes.astype(first.codes.dtype), first.scale, first.zero_point, first.lo, first.hi)

    def real(self, name: str) -> np.ndarray:
        """``name`` as ONNX defines it: floats, codes of a QuantizeLinear output, a moved result dequantized."""
        value = self.values[name]
        if isinstance(value, QTensor):
            return value.codes
        if isinstance(value, _Pending):
            if value.kind != "moved":
                raise ReferenceError(f"{name!r} is an integer accumulator read by an op other than QuantizeLinear")
            return self._moved_real(value)
        return value

    def _moved_real(self, pending: _Pending) -> np.ndarray:
        inputs = [self._moved_real(v) if isinstance(v, _Pending) else v.real() if isinstance(v, QTensor) else v
                  for v in pending.operands]
        return _output_of(float_op(pending.node, inputs), pending.output_index)

    def _moved_codes(self, pending: _Pending, scale: np.float32, zero_point: int, lo: int, hi: int) -> np.ndarray:
        """Rule 11: each input code requantized onto the output grid (unchanged where it is the same grid), then
        moved; Pad's constant value becomes the code Q_out(v)."""
        inputs = []
        for value in pending.operands:
            if isinstance(value, _Pending):
                value = self._moved_codes(value, scale, zero_point, lo, hi)
            elif isinstance(value, QTensor):
                value = (value.codes.astype(np.int64) if value.same_grid(scale, zero_point)
                         else quantize(value.real(), scale, zero_point, lo, hi))
            inputs.append(value)
        if pending.node.op_type == "Pad" and _attributes(pending.node).get("mode", "constant") == "constant":
            inputs += [None] * (3 - len(inputs))
            inputs[2] = quantize(np.float32(0 if inputs[2] is None else inputs[2].reshape(())), scale, zero_point, lo, hi)
        return _output_of(float_op(pending.node, inputs), pending.output_index)

    def _output(self, name: str) -> np.ndarray:
        if name not in self.values:
            raise ReferenceError(f"output {name!r} was not computed")
        return self.real(name)

    # ------------------------------------------------------------------ quantize and dequantize
    def _quantize_node(self, node: Any) -> None:
        scale = np.asarray(self.constant(node.input[1]), dtype=np.float32)
        if scale.size != 1:
            raise ReferenceError(f"QuantizeLinear {node.name!r}: activations are quantized per tensor")
        scale = np.float32(scale.reshape(()))
        zero = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        zero_point, (lo, hi) = int(zero.reshape(())), _code_range(zero)
        source = self.values[node.input[0]]
        if isinstance(source, _Pending):
            codes = self._finish(source, scale, zero_point, lo, hi)
        elif isinstance(source, QTensor):
            raise ReferenceError(f"QuantizeLinear {node.name!r} reads int8 codes")
        else:
            codes = quantize(source, scale, zero_point, lo, hi)
        tensor = QTensor(codes.astype(zero.dtype), scale, zero_point, lo, hi)
        self.tensors[node.output[0]] = tensor
        self.values[node.output[0]] = tensor

    def _dequantize_node(self, node: Any) -> None:
        source = self.values[node.input[0]]
        if not isinstance(source, QTensor):
            raise ReferenceError(f"DequantizeLinear {node.name!r} reads {node.input[0]!r}, which is not a quantized tensor")
        self.dequantized[node.output[0]] = node.input[0]
        self.values[node.output[0]] = source.real()

    def _finish(self, result: _Pending, scale: np.float32, zero_point: int, lo: int, hi: int) -> np.ndarray:
        """Put an integer result onto its output grid, with its fused activation's bounds (rules 6, 7, 9, 11)."""
        if result.low is not None and result.low > -math.inf:
            lo = max(lo, int(quantize(np.float32(result.low), scale, zero_point, lo, hi)))
        if result.high is not None and result.high < math.inf:
            hi = min(hi, int(quantize(np.float32(result.high), scale, zero_point, lo, hi)))
        if result.kind == "moved":
            return np.clip(self._moved_codes(result, scale, zero_point, lo, hi), lo, hi)
        if result.count is None:
            return requantize(result.value, np.atleast_1d(np.asarray(result.scale, np.float32) / scale), zero_point, lo, hi)
        multiplier = np.float32(result.scale) / (scale * np.asarray(result.count, dtype=np.float32))
        scaled = result.value.astype(np.float32) * multiplier
        return np.clip(np.rint(scaled).astype(np.int64) + zero_point, lo, hi)

    # ------------------------------------------------------------------ activations on codes and accumulators
    def _fuse_activation(self, node: Any) -> None:
        """Relu / Clip between an integer op and its QuantizeLinear: bounds applied on the output grid (rule 7)."""
        result = self._pending(node.input[0], "accumulator")
        low, high = (0.0, math.inf) if node.op_type == "Relu" else self._clip_bounds(node)
        self.values[node.output[0]] = replace(result, low=low if result.low is None else max(result.low, low),
                                              high=high if result.high is None else min(result.high, high))

    def _clip_codes(self, node: Any) -> None:
        """Clip on int8 codes (QuantizeLinear -> Clip -> DequantizeLinear: 7-bit activations): a narrower range."""
        source = self.values[node.input[0]]
        low, high = self._clip_bounds(node)
        lo = source.lo if low == -math.inf else max(source.lo, math.ceil(low))
        hi = source.hi if high == math.inf else min(source.hi, math.floor(high))
        tensor = QTensor(np.clip(source.codes, lo, hi).astype(source.codes.dtype), source.scale, source.zero_point, lo, hi)
        self.values[node.output[0]] = tensor
        self.tensors[node.output[0]] = tensor  # its DequantizeLinear reads the clipped codes

    def _clip_bounds(self, node: Any) -> tuple[float, float]:
        attributes = _attributes(node)
        low = self.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else attributes.get("min", -math.inf)
        high = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else attributes.get("max", math.inf)
        return float(low), float(high)

    # ------------------------------------------------------------------ weights
    def weight(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(int8 codes, float32 scales) of a DequantizeLinear'd constant weight, or None (a float weight: the op
        then has no integer form)."""
        node = self.producers.get(name)
        while node is not None and node.op_type == "Identity":  # an initializer shared by several layers
            node = self.producers.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in self.constants:
            return None
        codes = self.constants[node.input[0]]
        zero = self._zero_point([None, None, self.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None])
        return symmetric_codes(codes, zero, node.input[0]), np.asarray(self.constants[node.input[1]], dtype=np.float32)

    def with_bias(self, node: Any, acc: np.ndarray, input_scale: np.float32, weight_scale: np.ndarray,
                  bias_name: str) -> _Pending:
        """Rule 4: add the int32 bias (a float bias, or one on another grid, re-gridded onto s_x * s_w[c])."""
        channels = acc.shape[1]
        weight_scale = np.broadcast_to(np.asarray(weight_scale, dtype=np.float32).reshape(-1), (channels,))
        unit = (np.float32(input_scale) * weight_scale).astype(np.float32)
        if bias_name:
            quantized_bias = self.weight(bias_name)
            if quantized_bias is None:  # a float bias: onto the accumulator's grid
                bias = np.rint(self.constant(bias_name).astype(np.float32) / unit).astype(np.int64)
            else:
                bias, bias_scale = quantized_bias
                if not np.array_equal(np.broadcast_to(bias_scale, unit.shape), unit):
                    # A bias on another grid (a quantizer that shared it between layers): its real value, re-gridded.
                    real = bias.astype(np.float32) * np.broadcast_to(bias_scale, bias.shape).astype(np.float32)
                    bias = np.rint(real / unit).astype(np.int64)
            acc = acc + np.asarray(bias, dtype=np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
        if np.abs(acc).max(initial=0) > 2**31 - 1:
            raise ReferenceError(f"{node.op_type} {node.name!r}: the accumulator leaves int32")
        return _Pending("accumulator", acc, scale=unit)


def _leaves(pending: _Pending) -> Iterable[QTensor]:
    """The int8 tensors a moved result reads."""
    for value in pending.operands:
        if isinstance(value, QTensor):
            yield value
        elif isinstance(value, _Pending):
            yield from _leaves(value)


def _output_of(result: Any, index: int) -> np.ndarray:
    return result[index] if isinstance(result, tuple) else result
