"""The compiler's walk over an ONNX QDQ graph, and the registry each op family's rules join.

The walk visits nodes in their (topological) order and keeps three kinds of value:

- :class:`Tensor`: int8 codes on a grid, the output of a QuantizeLinear (what the plan stores);
- :class:`Pending`: the float result of an op with an integer form (a conv's accumulators, an add, a pool,
  codes that only moved), waiting for the QuantizeLinear that gives it a grid; its family's finisher then
  emits the plan op;
- :class:`Expression`: an elementwise float function of dequantized tensors and constants (HardSwish,
  x * Sigmoid(x), BatchNormalization, ...), which becomes a lookup table or a binary op when quantized;
- :class:`MoveView`: codes that only moved (reshape, transpose, slice, concat, pad, ...), as a map from each
  output element to the input element it copies; it becomes no op at all (the same storage, seen with another
  shape), a concat, or a gather, when quantized or read.

A rule ``RULES[op_type](compiler, node, operands)`` returns one of those for the node's first output; the
operands are the node's inputs resolved by :meth:`GraphCompiler.operand`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from lightning_edge.runtime.plan import DequantizeOp, FloatInputOp, Grid, Op, Plan, QuantizeOp, TensorRecord
from lightning_edge.runtime.reference import FLOAT_OPS, _attributes, float_op, quantize


class CompileError(ValueError):
    """The ONNX graph holds an op or pattern the runtime does not support; names the node and op."""

    def __init__(self, node: Any, problem: str):
        where = f"node {node.name!r} ({node.op_type})" if node is not None else "the graph"
        super().__init__(f"{where}: {problem}")


@dataclass
class Tensor:
    """A uint8 tensor of the plan: index, grid (scale, zero, low, high on uint8 codes) and NCHW shape."""

    index: int
    scale: float
    zero: int
    low: int
    high: int
    shape: tuple[int, ...]                   # (C, H, W) or (F,)
    producer: Op | None = None               # the plan op that writes it
    flat_order: np.ndarray | None = None     # a flat tensor stored permuted: where each logical feature is stored
    # The ONNX shape with the batch axis at its extent per sample (1, or P where a reshape folds P patches into
    # the batch), where it is not (1, *shape): such tensors are stored flat, in ONNX order.
    onnx_shape: tuple[int, ...] | None = None

    def grid(self) -> Grid:
        return Grid(float(self.scale), self.zero, self.low, self.high)

    def same_grid(self, grid: tuple[float, int, int, int]) -> bool:
        return (np.float32(self.scale), self.zero) == (np.float32(grid[0]), grid[1])

    def chw(self) -> tuple[int, int, int]:
        return (self.shape[0], 1, 1) if len(self.shape) == 1 else tuple(self.shape)

    def onnx(self) -> tuple[int, ...]:
        return self.onnx_shape if self.onnx_shape is not None else (1, *self.shape)


@dataclass
class Pending:
    """A result with an integer form before the QuantizeLinear that gives it a grid."""

    node: Any
    kind: str                     # the FINISHERS entry that emits its plan op
    inputs: list[Tensor]
    fields: dict[str, Any] = field(default_factory=dict)
    low: float = -math.inf        # fused activation bounds in real units
    high: float = math.inf
    activations: list[str] = field(default_factory=list)  # the Relu / Clip nodes fused into it


@dataclass
class MoveView:
    """Elements of int8 ``sources`` moved by ONNX data-movement nodes: ``index`` has the ONNX shape of the result
    for one sample (every map is made for a batch of 1; each sample of a batch moves alike) and holds ``slot << 32 | element`` (the source slot and its element in storage order), or -1 where
    padding puts the real value ``pad_value``."""

    node: Any
    sources: list[Tensor]
    index: np.ndarray
    pad_value: float = 0.0

    SLOT_SHIFT: ClassVar[int] = 32

    @classmethod
    def of(cls, tensor: Tensor) -> MoveView:
        """A tensor as a view: its NCHW elements numbered by where NHWC storage keeps them."""
        if len(tensor.shape) == 3:
            channels, height, width = tensor.shape
            storage = np.arange(channels * height * width).reshape(height, width, channels).transpose(2, 0, 1)
        else:
            storage = tensor.flat_order if tensor.flat_order is not None else np.arange(tensor.shape[0])
        return cls(None, [tensor], storage.reshape(tensor.onnx()).astype(np.int64))


@dataclass
class Expression:
    """An elementwise float function: ``node`` applied to operands that are dequantized tensors, constants
    (numpy arrays) or other expressions."""

    node: Any
    operands: list[Any]

    def sources(self) -> list[Tensor]:
        """The distinct int8 tensors it depends on, in order of appearance."""
        found: dict[int, Tensor] = {}
        for operand in self.operands:
            for tensor in operand.sources() if isinstance(operand, Expression) else [operand] if isinstance(operand, Tensor) else []:
                found.setdefault(tensor.index, tensor)
        return list(found.values())

    def nodes(self) -> list[Any]:
        inner = [n for operand in self.operands if isinstance(operand, Expression) for n in operand.nodes()]
        return list({id(n): n for n in [*inner, self.node]}.values())


Rule = Callable[["GraphCompiler", Any, list[Any]], Any]
Finisher = Callable[["GraphCompiler", Pending, str, list[str], tuple[float, int, int, int]], Tensor]
RULES: dict[str, Rule] = {}
FINISHERS: dict[str, Finisher] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register ``function`` as the compiler rule of ``op_types``."""
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = function
        return function
    return register


def finisher(kind: str) -> Callable[[Finisher], Finisher]:
    """Register ``function`` as what a :class:`Pending` of ``kind`` becomes when it meets its QuantizeLinear."""
    def register(function: Finisher) -> Finisher:
        FINISHERS[kind] = function
        return function
    return register


class GraphCompiler:
    """One compilation: the graph's constants and readers, the plan's tensors, ops and arrays as they grow."""

    def __init__(self, model: Any, source: str, input_shape: tuple[int, int, int] | None = None,
                 precision: str = "fp32"):
        from onnx import numpy_helper

        self.precision = precision

        self.requested_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
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
        self.quantized: dict[str, Tensor] = {}
        self.pending: dict[str, Pending] = {}
        self.expressions: dict[str, Expression] = {}
        self.views: dict[str, MoveView] = {}
        self.floats: dict[str, Any] = {}           # float-region tensors (float_region.FloatTensor), by name
        self.float_copies: dict[tuple, Any] = {}   # codes already brought into a float region, by (index, shape)
        self.materialized: dict[int, tuple[MoveView, Tensor]] = {}  # views made plan tensors, by id: each made once
        self.dequantized: dict[str, str] = {}
        self.dequantized_constants: dict[str, Any] = {}  # DequantizeLinear outputs of constants, by name

    # -------------------------------------------------------------- driver
    def build(self) -> tuple[Plan, dict[str, np.ndarray]]:
        graph_inputs = [item for item in self.graph.input if item.name not in self.constants]  # old files list weights
        if not graph_inputs:
            raise CompileError(None, "the graph has no input (every graph input is an initializer)")
        if self.requested_shape is not None and len(graph_inputs) != 1:
            raise CompileError(None, f"input_shape fixes the shape of a graph with one input; this one has "
                                     f"{len(graph_inputs)}")
        self.input_names: dict[str, int] = {}   # graph input (and Identity aliases) -> its index
        self.input_shapes: list[tuple[int, int, int]] = []
        self.graph_input_names = [item.name for item in graph_inputs]
        for index, input_info in enumerate(graph_inputs):
            self.input_names[input_info.name] = index
            self.input_shapes.append(self._input_shape(input_info))
        self.input_shape = self.input_shapes[0]
        for name, index in list(self.input_names.items()):
            if any(reader.op_type != "QuantizeLinear" for reader in self._readers_through_identity(name)):
                from lightning_edge.runtime.compiler.float_region import float_input

                self.floats[name] = float_input(self, name, index)  # a float region reads it (a plain FP32 file)
        dequantized_outputs: dict[str, tuple[Tensor, str]] = {}  # graph outputs that DequantizeLinear writes
        for node in self.graph.node:
            op = node.op_type
            if op == "Constant":
                continue
            if op == "Identity":
                self._alias(node.input[0], node.output[0])
            elif op == "QuantizeLinear" and self.is_constant(node.input[0]):
                self.constants[node.output[0]] = self._quantized_constant(node)
            elif op == "DequantizeLinear":
                if self.is_constant(node.input[0]):
                    self.dequantized_constants[node.output[0]] = node  # a weight or bias: read where it is used
                    continue
                if node.input[0] not in self.quantized:
                    raise CompileError(node, f"dequantizes {node.input[0]!r}, which is not a quantized activation")
                self.dequantized[node.output[0]] = node.input[0]
                if node.output[0] in self.outputs:
                    dequantized_outputs[node.output[0]] = (self.activation(node, self.quantized[node.input[0]]), node.name)
            elif op == "QuantizeLinear":
                self.quantized[node.output[0]] = self._quantize(node)
            elif op in ("Relu", "Clip") and node.input[0] in self.pending:
                result = self.pending.pop(node.input[0])
                low, high = (0.0, math.inf) if op == "Relu" else self.clip_bounds(node)
                result.low, result.high = max(result.low, low), min(result.high, high)
                result.activations.append(node.name)
                self.pending[node.output[0]] = result
            elif op == "Clip" and node.input[0] in self.quantized:
                from lightning_edge.runtime.compiler.movement import clip_codes

                self.quantized[node.output[0]] = clip_codes(self, node, self.quantized[node.input[0]])
            elif op in FLOAT_OPS and all(not name or self.is_constant(name) for name in node.input):
                values = [self.constant(node, name) if name else None for name in node.input]
                result = float_op(node, values)  # shape arithmetic and other constant subgraphs fold here
                for name, value in zip(node.output, result if isinstance(result, tuple) else (result,)):
                    self.constants[name] = np.asarray(value)
            elif op == "Shape":
                self.constants[node.output[0]] = self._shape(node)
            elif op in RULES:
                value = RULES[op](self, node, [self.operand(node, name) for name in node.input])
                for name, item in (value if isinstance(value, dict) else {node.output[0]: value}).items():
                    self._store(name, item)
            else:
                raise CompileError(node, f"op {op} is not supported by the INT8 runtime (supported: "
                                         f"{', '.join(sorted(RULES))}, QuantizeLinear, DequantizeLinear, Identity)")
        # every output's value first (a float function or moved codes may need an op), then the output ops, last
        values = [self._output_value(output.name, dequantized_outputs) for output in self.graph.output]
        outputs = [{"name": output.name, "shape": self._output(value, index)}
                   for index, (output, value) in enumerate(zip(self.graph.output, values))]
        return self._plan(outputs)

    def _input_shape(self, input_info: Any) -> tuple[int, int, int]:
        """(C, H, W) of a graph input (``input_shape`` where the file leaves sizes dynamic)."""
        dims = [d.dim_value for d in input_info.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise CompileError(None, f"input {input_info.name!r} must be (batch, C, H, W); got rank {len(dims)}")
        shape = tuple(dims[1:])
        if self.requested_shape is not None:
            if len(self.requested_shape) != 3 or min(self.requested_shape) <= 0 or \
                    any(d > 0 and d != r for d, r in zip(shape, self.requested_shape)):
                raise CompileError(None, f"input_shape {self.requested_shape} does not fit input {input_info.name!r} "
                                         f"of shape {dims}")
            shape = self.requested_shape
        if any(d <= 0 for d in shape):
            raise CompileError(None, f"input {input_info.name!r} has dynamic sizes {dims}; give compile(..., "
                                     "input_shape=(C, H, W)) (lightning-edge compile --input-shape C H W)")
        return shape

    def _output(self, value: tuple[Any, str | None], index: int) -> list[int]:
        """Emit the op writing an output value as the plan's output ``index``: a ``dequantize`` of codes, or a
        ``float_output`` of a float tensor. Returns its shape per sample."""
        tensor, node_name = value
        if node_name is None:
            from lightning_edge.runtime.compiler.float_region import float_output

            return float_output(self, tensor, index)
        channels, height, width = tensor.chw()
        self.emit(self.op(DequantizeOp, [node_name], input=tensor.index, grid=tensor.grid(), channels=channels,
                          height=height, width=width, index=index))
        return list(tensor.shape)

    def _output_value(self, name: str, dequantized: dict[str, tuple[Tensor, str]]) -> tuple[Any, str | None]:
        """Graph output ``name`` as (codes, the node that dequantizes them), or (a float tensor, None)."""
        if name not in dequantized and (name in self.floats or name in self.expressions):
            from lightning_edge.runtime.compiler.float_region import to_float

            return to_float(self, None, self.expressions[name]) if name in self.expressions else self.floats[name], None
        if name in dequantized:
            return dequantized[name]
        # codes moved after their last DequantizeLinear (a Flatten at the end) are output too
        value = self.views.get(name) or (self.pending.get(name) if getattr(self.pending.get(name), "kind", "") == "max_pool"
                                         else None)
        if value is None and name not in self.dequantized:
            raise CompileError(None, f"output {name!r} must be a DequantizeLinear of an int8 tensor (or codes moved "
                                     "after one), or a float value")
        tensor = self.activation(None, self.operand(None, name))
        return tensor, value.node.name if value is not None and value.node is not None else self.producers[name].name

    def _plan(self, outputs: list[dict[str, Any]]) -> tuple[Plan, dict[str, np.ndarray]]:
        """The plan of the ops emitted, once the output ops are: each op's ``fuses`` filled in, and the tensors that
        can be stored as bfloat16 so."""
        from lightning_edge.runtime.compiler.float_region import store_bf16

        store_bf16(self)
        op_types = {node.name: node.op_type for node in self.graph.node}
        for op in self.ops:  # what each op does, in ONNX terms (lightning-edge inspect shows it)
            compute = [op_types[name] for name in op.nodes
                       if op_types[name] not in ("QuantizeLinear", "DequantizeLinear") and name not in self.code_clips]
            op.fuses = "+".join(compute or [op_types[name] for name in op.nodes])  # quantize / dequantize
        inputs = [{"name": name, "shape": list(shape)} for name, shape in zip(self.graph_input_names, self.input_shapes)]
        plan = Plan(source=self.source, input_shape=list(self.input_shape), output_shape=list(outputs[0]["shape"]),
                    tensors=self.tensors, ops=self.ops, outputs=outputs, inputs=inputs)
        return plan, self.arrays

    def _readers_through_identity(self, name: str) -> list[Any]:
        """The nodes reading ``name``, an Identity seen through to its own readers."""
        found = []
        for reader in self.readers.get(name, []):
            found += self._readers_through_identity(reader.output[0]) if reader.op_type == "Identity" else [reader]
        return found

    def _shape(self, node: Any) -> np.ndarray:
        """Shape of an activation, known at compile time (batch 1, as every view is built)."""
        value = self.operand(node, node.input[0])
        if isinstance(value, Tensor):
            dims = value.onnx()
        elif isinstance(value, MoveView):
            dims = value.index.shape
        elif value in self.floats.values():
            dims = value.shape
        else:
            raise CompileError(node, f"the shape of {node.input[0]!r} is not known at compile time")
        attributes = _attributes(node)
        return np.array(dims[attributes.get("start", 0): attributes.get("end", len(dims))], dtype=np.int64)

    def _store(self, name: str, value: Any) -> None:
        from lightning_edge.runtime.compiler.float_region import FloatTensor

        table = (self.expressions if isinstance(value, Expression) else self.views if isinstance(value, MoveView)
                 else self.floats if isinstance(value, FloatTensor) else self.constants if isinstance(value, np.ndarray)
                 else self.pending)
        table[name] = value

    def _alias(self, source: str, target: str) -> None:
        for table in (self.constants, self.dequantized_constants, self.quantized, self.pending, self.expressions,
                      self.views, self.floats, self.dequantized):
            if source in table:
                table[target] = table[source]
        if source in self.input_names:
            self.input_names[target] = self.input_names[source]

    # -------------------------------------------------------------- operands
    def operand(self, node: Any, name: str) -> Any:
        """An input of ``node``: a dequantized :class:`Tensor`, an :class:`Expression`, a :class:`Pending` (a
        result not yet quantized), or the name of a constant or of anything else."""
        if name in self.dequantized:
            return self.quantized[self.dequantized[name]]
        if name in self.expressions:
            return self.expressions[name]
        if name in self.views:
            return self.views[name]
        if name in self.floats:
            return self.floats[name]
        if name in self.pending:
            if self.pending[name].kind == "max_pool":  # a max pool read by a shape op before any QuantizeLinear
                return self._codes_of(self.pending.pop(name), name)
            return self.pending[name]
        return name

    def activation(self, node: Any, operand: Any) -> Tensor:
        """``operand`` as int8 codes (moved codes materialized), or a CompileError saying what is missing."""
        if isinstance(operand, Tensor):
            return operand
        if isinstance(operand, MoveView):
            from lightning_edge.runtime.compiler.movement import materialize

            return materialize(self, operand, None, operand.node.output[0] if operand.node is not None else "view")
        if isinstance(operand, (Pending, Expression)):
            raise CompileError(node, f"reads the float result of {operand.node.name!r} ({operand.node.op_type}); "
                                     "the runtime needs a QuantizeLinear/DequantizeLinear pair between them")
        if hasattr(operand, "shape") and hasattr(operand, "index") and not isinstance(operand, np.ndarray):
            what = f"op {node.op_type} runs" if node is not None else "this op runs"
            raise CompileError(node, f"{what} on int8 codes only in the runtime (it has no float32 form yet) and reads a "
                                     "float32 tensor; quantize the model (a QuantizeLinear/DequantizeLinear pair before it)")
        raise CompileError(node, f"reads {operand!r}, which is not a dequantized int8 activation")

    def image(self, node: Any, operand: Any) -> Tensor:
        """``operand`` as codes of a (C, H, W) image, or a CompileError naming the shape it has."""
        tensor = self.activation(node, operand)
        if len(tensor.shape) != 3 or tensor.onnx_shape is not None:
            raise CompileError(node, f"{node.op_type} reads a tensor of shape {tensor.onnx()}; it needs (batch, C, H, W)")
        return tensor

    def is_constant(self, name: str) -> bool:
        return name in self.constants or name in self.dequantized_constants

    def constant(self, node: Any, name: str) -> np.ndarray:
        """A constant's value; a DequantizeLinear of a constant gives its float32 value (``DQ`` per axis)."""
        if isinstance(name, str) and name not in self.constants and name in self.dequantized_constants:
            dequantizer = self.dequantized_constants[name]
            codes = self.constants[dequantizer.input[0]]
            scale = np.asarray(self.constant(dequantizer, dequantizer.input[1]), dtype=np.float32)
            zero = self.optional_constant(dequantizer, 2)
            zero = np.zeros((), np.int64) if zero is None else zero.astype(np.int64)
            if scale.size > 1:
                shape = [1] * codes.ndim
                shape[int(_attributes(dequantizer).get("axis", 1)) % codes.ndim] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            self.constants[name] = (codes.astype(np.int64) - zero).astype(np.float32) * scale
        if not isinstance(name, str) or name not in self.constants:
            raise CompileError(node, f"{name!r} must be a constant")
        return self.constants[name]

    def optional_constant(self, node: Any, index: int) -> np.ndarray | None:
        return self.constant(node, node.input[index]) if len(node.input) > index and node.input[index] else None

    def clip_bounds(self, node: Any) -> tuple[float, float]:
        attributes = _attributes(node)
        low, high = self.optional_constant(node, 1), self.optional_constant(node, 2)
        low = attributes.get("min", -math.inf) if low is None else low
        high = attributes.get("max", math.inf) if high is None else high
        return float(low), float(high)

    # -------------------------------------------------------------- tensors and ops
    def new_tensor(self, name: str, grid: tuple[float, int, int, int], shape: tuple[int, ...],
                   producer: Op | None = None) -> Tensor:
        tensor = Tensor(len(self.tensors), *grid, shape=tuple(shape), producer=producer)
        self.tensors.append(TensorRecord(name, int(np.prod(shape)), list(shape)))
        return tensor

    def emit(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def array(self, op_id: str, key: str, value: np.ndarray) -> str:
        name = f"{op_id}.{key}"
        self.arrays[name] = np.ascontiguousarray(value)
        return name

    @staticmethod
    def grid_record(grid: tuple[float, int, int, int]) -> Grid:
        return Grid(float(grid[0]), int(grid[1]), int(grid[2]), int(grid[3]))

    def new_id(self) -> str:
        """A unique op id (array names hang off it; ops may move when adds fold)."""
        self.op_count += 1
        return f"op{self.op_count}"

    def op(self, kind: type[Op], nodes: list[str], **fields: Any) -> Op:
        return kind(id=self.new_id(), nodes=nodes, **fields)

    def produce(self, kind: type[Op], nodes: list[str], name: str, values: tuple[float, int, int, int],
                shape: tuple[int, ...], **fields: Any) -> Tensor:
        """Emit an op of ``kind`` writing a new tensor ``name`` on the grid ``values``; returns the tensor."""
        tensor = self.new_tensor(name, values, shape)
        tensor.producer = self.emit(self.op(kind, nodes, output=tensor.index, **fields))
        return tensor

    # -------------------------------------------------------------- quantize
    def _quantized_constant(self, node: Any) -> np.ndarray:
        """A float constant with its own QuantizeLinear (ONNX Runtime's weights of some networks): its codes."""
        value = self.constant(node, node.input[0]).astype(np.float32)
        scale = np.asarray(self.constant(node, node.input[1]), dtype=np.float32)
        zero = self.optional_constant(node, 2)
        zero = np.zeros((), np.uint8) if zero is None else zero
        if scale.size > 1:  # per axis
            axis = int(_attributes(node).get("axis", 1)) % value.ndim
            shape = [1] * value.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.asarray(zero).reshape(shape)
        info = np.iinfo(zero.dtype)
        codes = np.rint(value / scale).astype(np.int64) + zero.astype(np.int64)
        return np.clip(codes, info.min, info.max).astype(zero.dtype)

    def grid_of(self, node: Any) -> tuple[tuple[float, int, int, int], int]:
        """The grid a QuantizeLinear puts values on (on uint8 codes) and the shift (+128 for int8 files)."""
        scale = np.float32(self.constant(node, node.input[1]))
        if scale.size != 1 or not np.isfinite(scale) or scale <= 0:
            raise CompileError(node, "activation scales must be one positive finite number (per-tensor)")
        zero_array = self.optional_constant(node, 2)
        zero_array = np.zeros((), np.uint8) if zero_array is None else zero_array
        if zero_array.dtype not in (np.uint8, np.int8) or zero_array.size != 1:
            raise CompileError(node, f"activation zero points must be one uint8 or int8 value, not {zero_array.dtype}")
        shift = 128 if zero_array.dtype == np.int8 else 0
        info = np.iinfo(zero_array.dtype)
        return (float(scale), int(zero_array) + shift, int(info.min) + shift, int(info.max) + shift), shift

    def _quantize(self, node: Any) -> Tensor | MoveView:
        grid, shift = self.grid_of(node)
        source = node.input[0]
        if source in self.input_names and source not in self.floats:
            index = self.input_names[source]
            if any(isinstance(op, QuantizeOp) and op.index == index for op in self.ops):
                raise CompileError(node, f"input {source!r} is quantized twice")
            shape = self.input_shapes[index]
            tensor = self.produce(QuantizeOp, [node.name], node.output[0], grid, shape, channels=shape[0],
                                  height=shape[1], width=shape[2], grid=self.grid_record(grid), index=index)
            self.ops.remove(tensor.producer)  # input ops come first (they read only the plan's inputs)
            self.ops.insert(sum(isinstance(op, (QuantizeOp, FloatInputOp)) for op in self.ops), tensor.producer)
            return tensor
        if source in self.expressions:
            from lightning_edge.runtime.compiler.elementwise import finish_expression

            return finish_expression(self, node, self.expressions[source], grid, shift)
        if source in self.views:
            from lightning_edge.runtime.compiler.movement import quantize_view

            return quantize_view(self, node, self.views[source], grid)
        if source in self.floats:
            from lightning_edge.runtime.compiler.float_region import to_codes

            return to_codes(self, node, self.floats[source], grid)
        if source not in self.pending:
            raise CompileError(node, f"quantizes {source!r}, which no supported op produced")
        return self.finish(node, self.pending.pop(source), grid, shift)

    def _codes_of(self, result: Pending, name: str) -> Tensor:
        """A max pool read by a shape op before any QuantizeLinear: codes on its input's grid."""
        source = result.inputs[0]
        if result.low > -math.inf or result.high < math.inf:
            raise CompileError(result.node, "an activation after a max pool or shape op needs a QuantizeLinear after it")
        return self.finish(None, result, (source.scale, source.zero, source.low, source.high), 0, name=name)

    def finish(self, node: Any, result: Pending, grid: tuple[float, int, int, int], shift: int,
               name: str | None = None) -> Tensor:
        """A pending result meets its QuantizeLinear ``node`` (or, for chained shape ops, its input's grid):
        fused activation bounds narrow the grid's clamp, then its family's finisher emits the op."""
        scale, zero, low, high = grid
        original = (zero - shift, low - shift, high - shift)
        if result.low > -math.inf:
            low = max(low, int(quantize(np.float32(result.low), np.float32(scale), *original)) + shift)
        if result.high < math.inf:
            high = min(high, int(quantize(np.float32(result.high), np.float32(scale), *original)) + shift)
        nodes = [result.node.name, *result.activations] + ([node.name] if node is not None else [])
        return FINISHERS[result.kind](self, result, name or node.output[0], nodes, (scale, zero, low, high))
