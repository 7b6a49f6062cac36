"""Compile a standard ONNX QDQ file into the runtime's fused integer plan (a .edge file). numpy + onnx, no torch.

What it accepts: the graphs ``lightning_edge.export.to_onnx`` writes and those of other QDQ tools such as
ONNX Runtime's ``quantize_static`` (per-channel or per-tensor int8 weights, uint8 or int8 activations,
int32 or float biases, shared initializers through Identity): QuantizeLinear on the float input, then
Conv / Gemm / Add / GlobalAveragePool / MaxPool / Flatten / Reshape between DequantizeLinear and
QuantizeLinear pairs, Relu and Clip fused into their producer, and a DequantizeLinear output.

What it does, per INT8_SPEC.md:
- conv + bias + requantize + Relu/Clip becomes one op; the multiplier ``M[c] = float32(s_x*s_w[c]) / s_y``
  and the clamp bounds are computed here, once, exactly as ``reference.py`` computes them;
- a residual Add whose one operand is a conv output read by nothing else is folded into that conv's
  epilogue (the conv's requantized codes never reach memory);
- Gemm becomes a 1x1 conv over a 1x1 image; a Flatten of a spatial tensor permutes the Gemm's weight
  columns from NCHW to the runtime's NHWC order;
- weights are stored as int8 in the (kernel row, kernel column, channel) order of an NHWC window;
  ``kernel_arrays`` packs them for the CPU's kernel path when a plan is loaded;
- int8-activation files are shifted by +128 onto uint8 codes (every difference and order is unchanged);
- primitive selection: where a layer has more than one algorithm (8-, 16- or 32-channel blocks, a grouped
  conv per group or as one block-diagonal GEMM, Winograd F(2x2, 3x3), depthwise) the candidates are
  timed on the layer's real shape with this machine's kernels and the fastest is recorded in the plan.

Anything else stops with :class:`CompileError` naming the node and op, before anything runs.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lightning_edge.runtime.edge_format import write_edge
from lightning_edge.runtime.packing import INT32_MAX
from lightning_edge.runtime.plan import (AddOp, AveragePoolOp, ConvOp, DequantizeOp, Grid, MaxPoolOp, Op, Plan,
                                         QuantizeOp, TensorRecord)
from lightning_edge.runtime.reference import _attributes, quantize
from lightning_edge.runtime.selection import conv_candidates, first_candidates, select_primitives


class CompileError(ValueError):
    """The ONNX graph holds an op or pattern the runtime does not support; names the node and op."""

    def __init__(self, node: Any, problem: str):
        where = f"node {node.name!r} ({node.op_type})" if node is not None else "the graph"
        super().__init__(f"{where}: {problem}")


@dataclass
class _Tensor:
    """A uint8 tensor of the plan: index, grid (scale, zero, low, high on uint8 codes) and NCHW shape."""

    index: int
    scale: float
    zero: int
    low: int
    high: int
    shape: tuple[int, ...]                   # (C, H, W) or (F,)
    producer: Op | None = None               # the plan op that writes it
    nchw_order: tuple[int, int, int] | None = None  # a flattened (C, H, W) tensor, stored in NHWC order

    def grid(self) -> Grid:
        return Grid(float(self.scale), self.zero, self.low, self.high)


@dataclass
class _Pending:
    """A compute node's result before the QuantizeLinear that gives it a grid."""

    node: Any
    kind: str                     # conv | add | average_pool | max_pool | alias
    inputs: list[_Tensor]
    fields: dict[str, Any] = field(default_factory=dict)
    low: float = -math.inf        # fused activation bounds in real units
    high: float = math.inf
    activations: list[str] = field(default_factory=list)  # the Relu / Clip nodes fused into it


def compile(onnx_path: str | os.PathLike, edge_path: str | os.PathLike, *, select: bool = True,
            tune_batch: int = 1, threads: int | None = None) -> Plan:
    """Compile ``onnx_path`` into ``edge_path`` (written atomically); returns the plan.

    ``select`` times each layer's candidate kernels on its real shape at batch ``tune_batch`` with
    ``threads`` (default: all cores) and keeps the fastest; without it the first candidate is used.
    """
    import onnx

    path = os.fspath(onnx_path)
    try:
        model = onnx.load(path)
    except Exception as error:  # protobuf raises several types for damaged files
        raise CompileError(None, f"{path} is not a readable ONNX file ({error})") from error
    plan, arrays = _Compiler(model, os.path.basename(path)).build()
    if select:
        select_primitives(plan, arrays, batch=tune_batch, threads=threads)
    else:
        first_candidates(plan)
    write_edge(edge_path, plan.to_dict(), arrays)
    return plan


# ---------------------------------------------------------------------------------------------- graph walk
class _Compiler:
    def __init__(self, model: Any, source: str):
        from onnx import numpy_helper

        self.graph = model.graph
        self.source = source
        self.constants = {item.name: numpy_helper.to_array(item) for item in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
        self.producers = {output: node for node in self.graph.node for output in node.output}
        self.readers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {output.name for output in self.graph.output}
        self.ops: list[Op] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.tensors: list[TensorRecord] = []
        self.op_count = 0
        self.code_clips: set[str] = set()  # Clip nodes that narrow codes (7-bit activations), not activations

    # -------------------------------------------------------------- driver
    def build(self) -> tuple[Plan, dict[str, np.ndarray]]:
        if len(self.graph.input) != 1 or len(self.graph.output) != 1:
            raise CompileError(None, "the runtime runs graphs with one input and one output")
        input_info = self.graph.input[0]
        dims = [d.dim_value for d in input_info.type.tensor_type.shape.dim]
        if len(dims) != 4 or any(d <= 0 for d in dims[1:]):
            raise CompileError(None, f"input {input_info.name!r} must be (batch, C, H, W) with fixed C, H, W; got {dims}")
        self.input_name, self.input_shape = input_info.name, tuple(dims[1:])
        quantized: dict[str, _Tensor] = {}
        pending: dict[str, _Pending] = {}
        dequantized: dict[str, str] = {}
        output_tensor = None
        for node in self.graph.node:
            op = node.op_type
            if op == "Constant":
                continue
            if op == "Identity":
                source, target = node.input[0], node.output[0]
                for table in (quantized, pending, dequantized):
                    if source in table:
                        table[target] = table[source]
                if source == self.input_name:
                    self.input_name = target
                continue
            if op == "DequantizeLinear":
                if node.input[0] in self.constants:
                    continue  # a weight or bias: read where it is used
                if node.input[0] not in quantized:
                    raise CompileError(node, f"dequantizes {node.input[0]!r}, which is not a quantized activation")
                dequantized[node.output[0]] = node.input[0]
                if node.output[0] in self.outputs:
                    output_tensor, output_node = quantized[node.input[0]], node.name
            elif op == "QuantizeLinear":
                quantized[node.output[0]] = self._quantize(node, pending)
            elif op in ("Relu", "Clip") and node.input[0] in pending:
                result = pending.pop(node.input[0])
                low, high = (0.0, math.inf) if op == "Relu" else self._clip_bounds(node)
                result.low, result.high = max(result.low, low), min(result.high, high)
                result.activations.append(node.name)
                pending[node.output[0]] = result
            elif op == "Clip" and node.input[0] in quantized:
                quantized[node.output[0]] = self._clip_codes(node, quantized[node.input[0]])
            elif op in ("Conv", "Gemm", "Add", "GlobalAveragePool", "MaxPool", "Flatten", "Reshape"):
                operands = [quantized[dequantized[name]] if name in dequantized
                            else self._codes_of(pending.pop(name), name) if name in pending and pending[name].kind == "alias"
                            else name for name in node.input]
                pending[node.output[0]] = getattr(self, f"_{op.lower()}")(node, operands)
            elif op in ("Relu", "Clip"):
                raise CompileError(node, f"{op} must follow a Conv, Gemm, Add or pooling op before its QuantizeLinear")
            else:
                raise CompileError(node, f"op {op} is not supported by the INT8 runtime "
                                         "(supported: Conv, Gemm, Add, GlobalAveragePool, MaxPool, Flatten, Reshape, Relu, Clip)")
        if output_tensor is None:
            raise CompileError(None, f"output {next(iter(self.outputs))!r} must be a DequantizeLinear of an int8 tensor")
        channels, height, width = _chw(output_tensor.shape)
        self._emit(self._op(DequantizeOp, [output_node], input=output_tensor.index, grid=output_tensor.grid(),
                            channels=channels, height=height, width=width))
        op_types = {node.name: node.op_type for node in self.graph.node}
        for op in self.ops:  # what each op does, in ONNX terms (lightning-edge inspect shows it)
            compute = [op_types[name] for name in op.nodes
                       if op_types[name] not in ("QuantizeLinear", "DequantizeLinear") and name not in self.code_clips]
            op.fuses = "+".join(compute or [op_types[name] for name in op.nodes])  # quantize / dequantize
        plan = Plan(source=self.source, input_shape=list(self.input_shape), output_shape=list(output_tensor.shape),
                    tensors=self.tensors, ops=self.ops)
        return plan, self.arrays

    # -------------------------------------------------------------- tensors and ops
    def _new_tensor(self, name: str, grid: tuple[float, int, int, int], shape: tuple[int, ...],
                    producer: Op | None) -> _Tensor:
        tensor = _Tensor(len(self.tensors), *grid, shape=shape, producer=producer)
        self.tensors.append(TensorRecord(name, int(np.prod(shape)), list(shape)))
        return tensor

    def _emit(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def _array(self, op_id: str, key: str, value: np.ndarray) -> str:
        name = f"{op_id}.{key}"
        self.arrays[name] = np.ascontiguousarray(value)
        return name

    def _new_id(self) -> str:
        """A unique op id (array names hang off it; ops may move when adds fold)."""
        self.op_count += 1
        return f"op{self.op_count}"

    def _op(self, kind: type[Op], nodes: list[str], **fields: Any) -> Op:
        return kind(id=self._new_id(), nodes=nodes, **fields)

    def _quantize(self, node: Any, pending: dict[str, _Pending]) -> _Tensor:
        scale = np.float32(self._constant(node, node.input[1]))
        if scale.size != 1 or not np.isfinite(scale) or scale <= 0:
            raise CompileError(node, "activation scales must be one positive finite number (per-tensor)")
        zero_array = self.constants[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if zero_array.dtype not in (np.uint8, np.int8) or zero_array.size != 1:
            raise CompileError(node, f"activation zero points must be one uint8 or int8 value, not {zero_array.dtype}")
        shift = 128 if zero_array.dtype == np.int8 else 0
        info = np.iinfo(zero_array.dtype)
        grid = (float(scale), int(zero_array) + shift, int(info.min) + shift, int(info.max) + shift)
        source = node.input[0]
        if source == self.input_name:
            if any(isinstance(op, QuantizeOp) for op in self.ops):
                raise CompileError(node, "the input is quantized twice")
            tensor = self._new_tensor(node.output[0], grid, self.input_shape, None)
            tensor.producer = self._emit(self._op(
                QuantizeOp, [node.name], channels=self.input_shape[0], height=self.input_shape[1],
                width=self.input_shape[2], output=tensor.index, grid=tensor.grid()))
            return tensor
        if source not in pending:
            raise CompileError(node, f"quantizes {source!r}, which no supported op produced")
        return self._finish(node, pending.pop(source), grid, shift)

    def _codes_of(self, result: _Pending, name: str) -> _Tensor:
        """A max pool or shape op read by another one before any QuantizeLinear: codes on its input's grid."""
        source = result.inputs[0]
        if result.low > -math.inf or result.high < math.inf:
            raise CompileError(result.node, "an activation after a max pool or shape op needs a QuantizeLinear after it")
        return self._finish(None, result, (source.scale, source.zero, source.low, source.high), 0, name=name)

    def _finish(self, node: Any, result: _Pending, grid: tuple[float, int, int, int], shift: int,
                name: str | None = None) -> _Tensor:
        """A pending result meets its QuantizeLinear ``node`` (or, for chained shape ops, its input's grid)."""
        scale, zero, low, high = grid
        original = (zero - shift, low - shift, high - shift)
        if result.low > -math.inf:
            low = max(low, int(quantize(np.float32(result.low), np.float32(scale), *original)) + shift)
        if result.high < math.inf:
            high = min(high, int(quantize(np.float32(result.high), np.float32(scale), *original)) + shift)
        name = name or node.output[0]
        nodes = [result.node.name, *result.activations] + ([node.name] if node is not None else [])
        if result.kind == "alias":  # flatten / reshape / max pool onto the same grid
            source = result.inputs[0]
            if (np.float32(source.scale), source.zero) != (np.float32(scale), zero) or low > source.low or high < source.high:
                raise CompileError(result.node, "a shape op or max pool must keep its input's grid (same scale and zero point)")
            if result.fields.get("max_pool"):
                fields = {k: v for k, v in result.fields.items() if k not in ("max_pool", "out_shape")}
                tensor = self._new_tensor(name, grid[:2] + (low, high), result.fields["out_shape"], None)
                tensor.producer = self._emit(self._op(MaxPoolOp, nodes, input=source.index, output=tensor.index, **fields))
                return tensor
            tensor = _Tensor(source.index, source.scale, source.zero, source.low, source.high,
                             shape=result.fields["shape"], producer=source.producer,
                             nchw_order=result.fields.get("nchw_order"))
            return tensor
        if result.kind == "add":
            return self._add_op(result, name, nodes, (scale, zero, low, high))
        if result.kind == "average_pool":
            source = result.inputs[0]
            count = source.shape[1] * source.shape[2]
            multiplier = np.float32(source.scale) / (np.float32(scale) * np.float32(count))
            tensor = self._new_tensor(name, (scale, zero, low, high), (source.shape[0], 1, 1), None)
            tensor.producer = self._emit(self._op(
                AveragePoolOp, nodes, input=source.index, output=tensor.index, channels=source.shape[0],
                height=source.shape[1], width=source.shape[2], multiplier=float(multiplier),
                input_grid=source.grid(), output_grid=tensor.grid()))
            return tensor
        return self._conv_op(result, name, nodes, (scale, zero, low, high))

    # -------------------------------------------------------------- conv / gemm
    def _conv(self, node: Any, operands: list[Any]) -> _Pending:
        x = self._activation(node, operands[0])
        if len(x.shape) != 3:
            raise CompileError(node, f"Conv reads a tensor of shape {x.shape}; it needs (C, H, W)")
        attributes = _attributes(node)
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise CompileError(node, "auto_pad is not supported; export with explicit pads")
        if any(d != 1 for d in attributes.get("dilations", [1, 1])):
            raise CompileError(node, "dilated convolutions are not supported")
        codes, weight_scale = self._weight(node, operands[1])
        if codes.ndim != 4:
            raise CompileError(node, "only 2-D convolutions are supported")
        out_c, group_in, kernel_h, kernel_w = codes.shape
        groups = int(attributes.get("group", 1))
        channels, in_h, in_w = x.shape
        if group_in * groups != channels or out_c % groups:
            raise CompileError(node, f"weight shape {codes.shape} with group={groups} does not fit {channels} input channels")
        strides = list(attributes.get("strides", [1, 1]))
        pads = list(attributes.get("pads", [0, 0, 0, 0]))
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
        bias = self._bias(node, operands[2] if len(operands) > 2 else None, x.scale, weight_scale, out_c)
        return _Pending(node, "conv", [x], {**fields, "codes": weights, "weight_scale": weight_scale, "bias": bias})

    def _gemm(self, node: Any, operands: list[Any]) -> _Pending:
        x = self._activation(node, operands[0])
        attributes = _attributes(node)
        if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
            raise CompileError(node, "only alpha=beta=1 and an untransposed input are supported")
        codes, weight_scale = self._weight(node, operands[1])
        if not attributes.get("transB", 0):
            codes = codes.T
        features = int(np.prod(x.shape))
        if len(x.shape) != 1 and x.shape[1:] != (1, 1):
            raise CompileError(node, f"Gemm reads a tensor of shape {x.shape}; flatten it first")
        if codes.shape[1] != features:
            raise CompileError(node, f"weight {codes.shape} does not fit {features} input features")
        if x.nchw_order is not None and x.nchw_order[1] * x.nchw_order[2] > 1:
            c, h, w = x.nchw_order  # the runtime stores the flattened tensor in (h, w, c) order
            codes = codes.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, features)
        out_c = codes.shape[0]
        fields = {"in_h": 1, "in_w": 1, "in_c": features, "out_h": 1, "out_w": 1, "out_c": out_c, "kernel_h": 1,
                  "kernel_w": 1, "stride_h": 1, "stride_w": 1, "pad_top": 0, "pad_left": 0, "groups": 1}
        bias = self._bias(node, operands[2] if len(operands) > 2 else None, x.scale, weight_scale, out_c)
        return _Pending(node, "conv", [x], {**fields, "codes": codes, "weight_scale": weight_scale, "bias": bias,
                                            "flat": True})

    def _conv_op(self, result: _Pending, name: str, nodes: list[str], grid: tuple[float, int, int, int]) -> _Tensor:
        x = result.inputs[0]
        f = result.fields
        unit = (np.float32(x.scale) * f["weight_scale"]).astype(np.float32)
        multiplier = (unit / np.float32(grid[0])).astype(np.float32)
        codes, bias = f["codes"], f["bias"]
        bound = np.abs(codes.astype(np.int64)).sum(axis=1) * 255
        if (bound + np.abs(bias)).max() > INT32_MAX or 4 * bound.max() > INT32_MAX:  # Winograd computes 4 * acc
            raise CompileError(result.node, "its accumulator could leave int32 (weights too large for the input range)")
        shape = (f["out_c"],) if f.get("flat") else (f["out_c"], f["out_h"], f["out_w"])
        tensor = self._new_tensor(name, grid, shape, None)
        op_id = self._new_id()
        depthwise = f["groups"] == f["in_c"] == f["out_c"] and f["groups"] > 1 and f["kernel_h"] * f["kernel_w"] <= 64
        op = ConvOp(id=op_id, nodes=nodes, **{k: v for k, v in f.items() if k not in ("codes", "weight_scale", "bias", "flat")},
                    input=x.index, output=tensor.index, input_grid=x.grid(), output_grid=tensor.grid(),
                    macs=int(codes.size) * f["out_h"] * f["out_w"],
                    bias=self._array(op_id, "bias", bias.astype(np.int32)),
                    multiplier=self._array(op_id, "multiplier", multiplier),
                    weights=self._array(op_id, "weights", codes.astype(np.int8)),  # window order; packed when loaded
                    candidates=conv_candidates(f, depthwise))
        tensor.producer = self._emit(op)
        return tensor

    def _bias(self, node: Any, name: str | None, input_scale: float, weight_scale: np.ndarray, channels: int) -> np.ndarray:
        """int32 bias on the accumulator's grid (s_x * s_w[c]), as reference._with_bias puts it there."""
        unit = (np.float32(input_scale) * weight_scale).astype(np.float32)
        if not name:
            return np.zeros(channels, np.int64)
        bias, bias_scale = self._weight(node, name, bias=True)
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

    def _weight(self, node: Any, name: str, bias: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        producer = self.producers.get(name)
        if producer is not None and producer.op_type == "Identity":
            return self._weight(node, producer.input[0], bias)
        if producer is None or producer.op_type != "DequantizeLinear":
            if bias and name in self.constants:
                return self.constants[name], None
            raise CompileError(node, f"{name!r} must be a constant behind a DequantizeLinear (a quantized weight)")
        if producer.input[0] not in self.constants:
            raise CompileError(node, f"weight {producer.input[0]!r} is not a constant")
        codes = self.constants[producer.input[0]]
        scale = np.asarray(self.constants[producer.input[1]], dtype=np.float32).reshape(-1)
        zero = self.constants[producer.input[2]] if len(producer.input) > 2 and producer.input[2] else np.zeros(1, codes.dtype)
        if bias:
            if codes.dtype != np.int32:
                raise CompileError(node, f"bias {producer.input[0]!r} must be int32, not {codes.dtype}")
            return codes.astype(np.int64), scale
        if codes.dtype != np.int8:
            raise CompileError(node, f"weight {producer.input[0]!r} must be int8, not {codes.dtype}")
        if np.any(np.asarray(zero) != 0):
            raise CompileError(node, f"weight {producer.input[0]!r} has a nonzero zero point; INT8_SPEC weights are symmetric")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise CompileError(node, f"weight {producer.input[0]!r} has a scale that is not positive and finite")
        out_axis_size = codes.shape[0] if node.op_type == "Conv" or _attributes(node).get("transB", 0) else codes.shape[1]
        if scale.size not in (1, out_axis_size):
            raise CompileError(node, f"weight scales must be per tensor or per output channel ({scale.size} given)")
        return codes, np.broadcast_to(scale, (out_axis_size,)).astype(np.float32)

    # -------------------------------------------------------------- add, pooling, shapes
    def _add(self, node: Any, operands: list[Any]) -> _Pending:
        a, b = (self._activation(node, operand) for operand in operands)
        if a.shape != b.shape:
            raise CompileError(node, f"adds tensors of shapes {a.shape} and {b.shape}; broadcasting is not supported")
        return _Pending(node, "add", [a, b])

    def _add_op(self, result: _Pending, name: str, nodes: list[str], grid: tuple[float, int, int, int]) -> _Tensor:
        a, b = result.inputs
        for conv, skip in ((a, b), (b, a)):
            op = conv.producer
            if isinstance(op, ConvOp) and op.skip is None and self._read_once(op.output, result.node):
                return self._fold_add(op, conv, skip, name, nodes, grid)
        tensor = self._new_tensor(name, grid, a.shape, None)
        tensor.producer = self._emit(self._op(
            AddOp, nodes, input=a.index, skip=b.index, output=tensor.index, size=int(np.prod(a.shape)),
            input_grid=a.grid(), skip_grid=b.grid(), output_grid=tensor.grid()))
        return tensor

    def _read_once(self, tensor_index: int, add_node: Any) -> bool:
        """Whether the conv output's only reader is this Add (through one DequantizeLinear)."""
        name = self.tensors[tensor_index].name
        if name in self.outputs:
            return False
        readers = self.readers.get(name, [])
        if len(readers) != 1 or readers[0].op_type != "DequantizeLinear":
            return False
        return [reader is add_node for reader in self.readers.get(readers[0].output[0], [])] == [True]

    def _fold_add(self, op: ConvOp, conv: _Tensor, skip: _Tensor, name: str, nodes: list[str],
                  grid: tuple[float, int, int, int]) -> _Tensor:
        """The conv's epilogue does the add: move the conv to this position with the skip operand."""
        self.ops.remove(op)
        tensor = self._new_tensor(name, grid, conv.shape, None)
        op.skip, op.skip_grid, op.sum_grid, op.output = skip.index, skip.grid(), tensor.grid(), tensor.index
        op.nodes = op.nodes + nodes
        self.tensors[conv.index].folded = True
        tensor.producer = self._emit(op)
        return tensor

    def _globalaveragepool(self, node: Any, operands: list[Any]) -> _Pending:
        x = self._activation(node, operands[0])
        if len(x.shape) != 3:
            raise CompileError(node, f"GlobalAveragePool reads a tensor of shape {x.shape}")
        return _Pending(node, "average_pool", [x])

    def _maxpool(self, node: Any, operands: list[Any]) -> _Pending:
        x = self._activation(node, operands[0])
        attributes = _attributes(node)
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attributes.get("ceil_mode", 0) \
                or any(d != 1 for d in attributes.get("dilations", [1, 1])) or len(node.output) > 1:
            raise CompileError(node, "only MaxPool with explicit pads, floor mode, no dilation and no indices is supported")
        kernel_h, kernel_w = attributes["kernel_shape"]
        strides = list(attributes.get("strides", [1, 1]))
        pads = list(attributes.get("pads", [0, 0, 0, 0]))
        if max(pads[0], pads[2]) >= kernel_h or max(pads[1], pads[3]) >= kernel_w:
            raise CompileError(node, f"padding {pads} must be smaller than the kernel")
        channels, height, width = x.shape
        out_h = (height + pads[0] + pads[2] - kernel_h) // strides[0] + 1
        out_w = (width + pads[1] + pads[3] - kernel_w) // strides[1] + 1
        return _Pending(node, "alias", [x], {
            "max_pool": True, "out_shape": (channels, out_h, out_w), "channels": channels, "height": height,
            "width": width, "out_h": out_h, "out_w": out_w, "kernel_h": kernel_h, "kernel_w": kernel_w,
            "stride_h": strides[0], "stride_w": strides[1], "pad_top": pads[0], "pad_left": pads[1]})

    def _flatten(self, node: Any, operands: list[Any]) -> _Pending:
        x = self._activation(node, operands[0])
        if int(_attributes(node).get("axis", 1)) != 1:
            raise CompileError(node, "only Flatten with axis=1 is supported")
        return self._flat(node, x)

    def _reshape(self, node: Any, operands: list[Any]) -> _Pending:
        x = self._activation(node, operands[0])
        shape = [int(s) for s in self.constants.get(operands[1], [])] if isinstance(operands[1], str) else []
        features = int(np.prod(x.shape))
        if len(shape) != 2 or shape[1] not in (-1, features) or shape[1] == -1 and shape[0] not in (0, -1):
            raise CompileError(node, f"only a Reshape to (batch, features) is supported, not {shape}")
        return self._flat(node, x)

    def _flat(self, node: Any, x: _Tensor) -> _Pending:
        order = x.nchw_order or (tuple(x.shape) if len(x.shape) == 3 else None)
        return _Pending(node, "alias", [x], {"shape": (int(np.prod(x.shape)),), "nchw_order": order})

    def _clip_codes(self, node: Any, source: _Tensor) -> _Tensor:
        """Clip on codes (7-bit activations): narrows the producing op's clamp bounds."""
        low, high = self._clip_bounds(node)
        shift = source.zero - int(self._zero_of(node))
        new_low = source.low if low == -math.inf else max(source.low, math.ceil(low) + shift)
        new_high = source.high if high == math.inf else min(source.high, math.floor(high) + shift)
        if (new_low, new_high) == (source.low, source.high):
            return source  # the codes are inside these bounds already (a shape op after a clipped tensor)
        op = source.producer
        if op is None or self.tensors[source.index].name != node.input[0] or len(self.readers.get(node.input[0], [])) != 1:
            raise CompileError(node, "a Clip on int8 codes must be the only reader of the QuantizeLinear it clips")
        key = "sum_grid" if getattr(op, "sum_grid", None) else "output_grid" if hasattr(op, "output_grid") else "grid"
        setattr(op, key, replace(getattr(op, key), low=new_low, high=new_high))
        op.nodes = op.nodes + [node.name]
        self.code_clips.add(node.name)
        self.tensors[source.index].name = node.output[0]  # the unclipped codes never exist
        return _Tensor(source.index, source.scale, source.zero, new_low, new_high, source.shape, source.producer,
                       source.nchw_order)

    def _zero_of(self, node: Any) -> int:
        quantizer = self.producers[node.input[0]]
        return int(self.constants[quantizer.input[2]]) if len(quantizer.input) > 2 else 0

    def _clip_bounds(self, node: Any) -> tuple[float, float]:
        attributes = _attributes(node)
        low = self.constants[node.input[1]] if len(node.input) > 1 and node.input[1] else attributes.get("min", -math.inf)
        high = self.constants[node.input[2]] if len(node.input) > 2 and node.input[2] else attributes.get("max", math.inf)
        return float(low), float(high)

    def _activation(self, node: Any, operand: Any) -> _Tensor:
        if not isinstance(operand, _Tensor):
            raise CompileError(node, f"reads {operand!r}, which is not a dequantized int8 activation")
        return operand

    def _constant(self, node: Any, name: str) -> np.ndarray:
        if name not in self.constants:
            raise CompileError(node, f"{name!r} must be a constant")
        return self.constants[name]


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (shape[0], 1, 1) if len(shape) == 1 else tuple(shape)
