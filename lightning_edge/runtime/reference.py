"""INT8_SPEC.md in plain numpy: the oracle the runtime's kernels must match bit for bit.

It reads a standard ONNX QDQ graph (from ``lightning_edge.export.to_onnx`` or ONNX Runtime's
``quantize_static``) on its own, independent of the runtime's compiler, and evaluates it in integer
arithmetic, exactly as the spec words it:

- quantize the float input: ``clamp(round_half_even(x / s) + z)``;
- conv / linear: ``acc = sum((x_q - z_x) * w_q) + bias_q`` (exact), then
  ``y = clamp(round_half_even(float32(acc) * M[c]) + z_y, lo, hi)`` with ``M[c] = float32(s_x * s_w[c]) / s_y``
  computed in float32, the product and the division as separate float32 operations (never fused);
- fused ReLU: ``lo = z_y``; fused Clip(a, b): ``lo, hi`` are the bounds quantized onto the output grid;
- residual add: both operands dequantized in float32 (``float32(q - z) * s``), added, quantized onto the
  output grid by division, like the input;
- average pooling: ``acc = sum(q - z_x)`` over the window (exact), then requantized as conv with
  ``M = s_x / (s_y * count)`` (float32);
- max pooling, flatten and reshape act on the codes (exact), requantized only if the next grid differs.

Slow but simple: tests use it, never ``Session``. Arithmetic on codes is exact (float64 products of
int8 values are exact integers far below 2^53); every float32 step is spelled out.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

_COMPUTE_OPS = ("Conv", "Gemm", "Add", "GlobalAveragePool", "MaxPool", "Flatten", "Reshape")


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


@dataclass
class _Pending:
    """A compute node's result before the QuantizeLinear that puts it on its output grid."""

    kind: str                      # "accumulator" (int64 acc with a float32 scale per channel), "real" or "codes"
    value: np.ndarray
    scale: Any = None              # accumulator: float32 per-channel real scale of one acc unit (s_x * s_w)
    source: QTensor | None = None  # codes: the grid the codes are on
    low: float | None = None       # fused activation bounds, in real units
    high: float | None = None
    count: int = 1                 # average pooling: elements per window


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _code_range(zero_point: np.ndarray) -> tuple[int, int]:
    info = np.iinfo(zero_point.dtype)
    return int(info.min), int(info.max)


def quantize(x: np.ndarray, scale: np.float32, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """ONNX QuantizeLinear: ``clamp(round_half_even(x / scale) + zero_point, lo, hi)`` in float32."""
    codes = np.rint(x.astype(np.float32) / np.float32(scale)).astype(np.int64) + int(zero_point)
    return np.clip(codes, lo, hi)


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """INT8_SPEC rule 6: ``clamp(round_half_even(float32(acc) * M) + z, lo, hi)``, M per channel (axis 1)."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    scaled = acc.astype(np.float32) * np.asarray(multiplier, dtype=np.float32).reshape(shape)
    return np.clip(np.rint(scaled).astype(np.int64) + int(zero_point), lo, hi)


class ReferenceModel:
    """An ONNX QDQ model evaluated by the spec. ``run(x)`` returns the float32 outputs; ``tensors`` keeps
    every int8 tensor of the last run by its ONNX name (the QuantizeLinear output), for layer-by-layer checks."""

    def __init__(self, model: Any):
        import onnx
        from onnx import numpy_helper

        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        self.graph = model.graph
        self.constants = {item.name: numpy_helper.to_array(item) for item in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
        self.producers = {output: node for node in self.graph.node for output in node.output}
        self.input_name = self.graph.input[0].name
        self.output_names = [output.name for output in self.graph.output]
        self.tensors: dict[str, QTensor] = {}

    # ------------------------------------------------------------------ evaluation
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        floats: dict[str, np.ndarray] = {self.input_name: np.asarray(x, dtype=np.float32)}
        quantized: dict[str, QTensor] = {}
        pending: dict[str, _Pending] = {}
        dequantized: dict[str, str] = {}  # DequantizeLinear output -> quantized tensor it reads
        for node in self.graph.node:
            op = node.op_type
            if op == "Constant":
                continue
            if op == "Identity":
                source, target = node.input[0], node.output[0]
                for table in (self.constants, floats, quantized, pending, dequantized):
                    if source in table:
                        table[target] = table[source]
                continue
            if op == "DequantizeLinear":
                if node.input[0] in self.constants:
                    continue  # a weight or bias: read where it is used
                dequantized[node.output[0]] = node.input[0]
                if node.output[0] in self.output_names:
                    floats[node.output[0]] = quantized[node.input[0]].real()
            elif op == "QuantizeLinear":
                scale = np.float32(self.constants[node.input[1]])
                zero = self.constants[node.input[2]] if len(node.input) > 2 else np.zeros((), np.uint8)
                lo, hi = _code_range(zero)
                source = node.input[0]
                if source in floats:
                    codes = quantize(floats[source], scale, int(zero), lo, hi)
                elif source in pending:
                    codes = self._finish(pending.pop(source), scale, int(zero), lo, hi)
                else:
                    raise ReferenceError(f"QuantizeLinear {node.name!r} reads {source!r}, which no supported op produced")
                quantized[node.output[0]] = QTensor(codes.astype(zero.dtype), scale, int(zero), lo, hi)
            elif op in ("Relu", "Clip") and node.input[0] in pending:
                result = pending.pop(node.input[0])
                low, high = (0.0, math.inf) if op == "Relu" else self._clip_bounds(node)
                result.low = low if result.low is None else max(result.low, low)
                result.high = high if result.high is None else min(result.high, high)
                pending[node.output[0]] = result
            elif op == "Clip" and node.input[0] in quantized:  # clipping codes (7-bit activations)
                source = quantized[node.input[0]]
                low, high = self._clip_bounds(node)
                lo = source.lo if low == -math.inf else max(source.lo, math.ceil(low))
                hi = source.hi if high == math.inf else min(source.hi, math.floor(high))
                quantized[node.output[0]] = QTensor(np.clip(source.codes, lo, hi).astype(source.codes.dtype),
                                                    source.scale, source.zero_point, lo, hi)
            elif op in _COMPUTE_OPS:
                inputs = [self._operand(name, dequantized, quantized, pending) for name in node.input]
                pending[node.output[0]] = getattr(self, f"_{op.lower()}")(node, inputs)
            else:
                raise ReferenceError(f"node {node.name!r}: op {op} is not part of the INT8 spec")
        self.tensors = quantized
        missing = [name for name in self.output_names if name not in floats]
        if missing:
            raise ReferenceError(f"outputs {missing} are not dequantized int8 tensors")
        return [floats[name] for name in self.output_names]

    def _operand(self, name: str, dequantized: dict[str, str], quantized: dict[str, QTensor],
                 pending: dict[str, _Pending]) -> Any:
        if name in dequantized:
            return quantized[dequantized[name]]
        if name in pending and pending[name].kind == "codes":  # max pool -> flatten: still on the pool input's grid
            result = pending.pop(name)
            source = result.source
            return QTensor(result.value, source.scale, source.zero_point, source.lo, source.hi)
        return name  # an initializer (through its DequantizeLinear) or a shape: resolved by the op

    def _weight(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(codes, per-channel scales, axis) of a DequantizeLinear'd initializer; per-tensor scales broadcast."""
        node = self.producers.get(name)
        if node is not None and node.op_type == "Identity":
            return self._weight(node.input[0])  # an initializer shared by several layers
        if node is None or node.op_type != "DequantizeLinear":
            if name in self.constants:
                return self.constants[name], None, 0
            raise ReferenceError(f"{name!r} is neither a dequantized initializer nor a constant")
        codes = self.constants[node.input[0]]
        scale = np.asarray(self.constants[node.input[1]], dtype=np.float32)
        zero = self.constants[node.input[2]] if len(node.input) > 2 else np.zeros_like(codes.flat[0])
        if np.any(np.asarray(zero) != 0):
            raise ReferenceError(f"weight {node.input[0]!r} has a nonzero zero point; INT8_SPEC weights are symmetric")
        return codes, scale, int(_attributes(node).get("axis", 1))

    def _clip_bounds(self, node: Any) -> tuple[float, float]:
        attributes = _attributes(node)
        low = self.constants[node.input[1]] if len(node.input) > 1 and node.input[1] else attributes.get("min", -math.inf)
        high = self.constants[node.input[2]] if len(node.input) > 2 and node.input[2] else attributes.get("max", math.inf)
        return float(low), float(high)

    # ------------------------------------------------------------------ ops
    def _conv(self, node: Any, inputs: list[Any]) -> _Pending:
        x, weight_name = inputs[0], inputs[1]
        if not isinstance(x, QTensor):
            raise ReferenceError(f"Conv {node.name!r} reads a float tensor; the INT8 spec needs a quantized input")
        codes, weight_scale, _ = self._weight(weight_name)
        attributes = _attributes(node)
        groups = int(attributes.get("group", 1))
        strides = attributes.get("strides", [1, 1])
        pads = attributes.get("pads", [0, 0, 0, 0])
        if any(d != 1 for d in attributes.get("dilations", [1, 1])):
            raise ReferenceError(f"Conv {node.name!r}: dilation is not supported")
        centered = x.codes.astype(np.float64) - x.zero_point  # real zero is code z_x: pad with 0 after centering
        centered = np.pad(centered, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        batch, channels = centered.shape[:2]
        out_channels, per_group, kh, kw = codes.shape
        windows = np.lib.stride_tricks.sliding_window_view(centered, (kh, kw), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
        out_h, out_w = windows.shape[2:4]
        windows = windows.reshape(batch, groups, per_group, out_h, out_w, kh * kw)
        weights = codes.astype(np.float64).reshape(groups, out_channels // groups, per_group, kh * kw)
        acc = np.einsum("bgchwk,gock->bgohw", windows, weights, optimize=True)
        acc = np.rint(acc).astype(np.int64).reshape(batch, out_channels, out_h, out_w)
        return self._with_bias(node, acc, x.scale, weight_scale, inputs[2] if len(inputs) > 2 else None)

    def _gemm(self, node: Any, inputs: list[Any]) -> _Pending:
        x, weight_name = inputs[0], inputs[1]
        attributes = _attributes(node)
        if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
            raise ReferenceError(f"Gemm {node.name!r}: only alpha=beta=1 and an untransposed input are supported")
        codes, weight_scale, _ = self._weight(weight_name)
        if not attributes.get("transB", 0):
            codes = codes.T  # stored (in, out): make it (out, in)
        centered = x.codes.astype(np.float64) - x.zero_point
        acc = np.rint(centered @ codes.astype(np.float64).T).astype(np.int64)
        return self._with_bias(node, acc, x.scale, weight_scale, inputs[2] if len(inputs) > 2 else None)

    def _with_bias(self, node: Any, acc: np.ndarray, input_scale: np.float32, weight_scale: np.ndarray,
                   bias_name: str | None) -> _Pending:
        channels = acc.shape[1]
        weight_scale = np.broadcast_to(np.asarray(weight_scale, dtype=np.float32).reshape(-1), (channels,))
        unit = (np.float32(input_scale) * weight_scale).astype(np.float32)
        if bias_name:
            bias, bias_scale, _ = self._weight(bias_name)
            if bias_scale is None:  # a float bias: onto the accumulator's grid
                bias = np.rint(bias.astype(np.float32) / unit).astype(np.int64)
            elif not np.array_equal(np.broadcast_to(bias_scale, unit.shape), unit):
                # A bias on another grid (a quantizer that shared it between layers): its real value, re-gridded.
                real = bias.astype(np.float32) * np.broadcast_to(bias_scale, bias.shape).astype(np.float32)
                bias = np.rint(real / unit).astype(np.int64)
            acc = acc + np.asarray(bias, dtype=np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
        if np.abs(acc).max(initial=0) > 2**31 - 1:
            raise ReferenceError(f"{node.op_type} {node.name!r}: the accumulator leaves int32")
        return _Pending("accumulator", acc, scale=unit)

    def _add(self, node: Any, inputs: list[Any]) -> _Pending:
        if not all(isinstance(operand, QTensor) for operand in inputs):
            raise ReferenceError(f"Add {node.name!r} needs two quantized operands")
        return _Pending("real", inputs[0].real() + inputs[1].real())

    def _globalaveragepool(self, node: Any, inputs: list[Any]) -> _Pending:
        x = inputs[0]
        count = x.codes.shape[2] * x.codes.shape[3]
        acc = (x.codes.astype(np.int64) - x.zero_point).sum(axis=(2, 3), keepdims=True)
        return _Pending("accumulator", acc, scale=np.float32(x.scale), count=count)

    def _maxpool(self, node: Any, inputs: list[Any]) -> _Pending:
        x = inputs[0]
        attributes = _attributes(node)
        kh, kw = attributes["kernel_shape"]
        strides = attributes.get("strides", [1, 1])
        pads = attributes.get("pads", [0, 0, 0, 0])
        padded = np.pad(x.codes.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                        constant_values=np.iinfo(np.int64).min)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
        return _Pending("codes", windows.max(axis=(4, 5)), source=x)

    def _flatten(self, node: Any, inputs: list[Any]) -> _Pending:
        x = inputs[0]
        axis = int(_attributes(node).get("axis", 1))
        return _Pending("codes", x.codes.reshape(int(np.prod(x.codes.shape[:axis])), -1), source=x)

    def _reshape(self, node: Any, inputs: list[Any]) -> _Pending:
        x, shape = inputs[0], self.constants[inputs[1]]
        return _Pending("codes", x.codes.reshape([x.codes.shape[i] if s == 0 else s for i, s in enumerate(shape)]), source=x)

    def _finish(self, result: _Pending, scale: np.float32, zero_point: int, lo: int, hi: int) -> np.ndarray:
        """Put a compute result onto its output grid, with its fused activation's bounds."""
        if result.low is not None and result.low > -math.inf:
            lo = max(lo, int(quantize(np.float32(result.low), scale, zero_point, lo, hi)))
        if result.high is not None and result.high < math.inf:
            hi = min(hi, int(quantize(np.float32(result.high), scale, zero_point, lo, hi)))
        if result.kind == "accumulator":
            if result.count > 1:
                multiplier = np.float32(result.scale) / (np.float32(scale) * np.float32(result.count))
            else:
                multiplier = np.asarray(result.scale, dtype=np.float32) / np.float32(scale)
            return requantize(result.value, np.atleast_1d(multiplier), zero_point, lo, hi)
        if result.kind == "real":
            return quantize(result.value, scale, zero_point, lo, hi)
        source = result.source
        if source.scale == scale and source.zero_point == zero_point:
            return np.clip(result.value, lo, hi)
        real = (result.value - source.zero_point).astype(np.float32) * source.scale
        return quantize(real, scale, zero_point, lo, hi)
