"""Float regions: ops with no integer form (LayerNormalization, Softmax, MatMul of activations, reductions,
elementwise functions of several tensors) run in float32 inside the same plan (INT8_SPEC rules 10 and 17).

Codes enter a region through ``to_float`` (``float32(q - z) * s``) and leave it through ``to_codes`` at the
next QuantizeLinear; float tensors keep the ONNX shape (batch left out) in row-major order. An elementwise
function becomes one ``float_expression`` op: a small register program over its leaves (codes read through
their dequantization table, float tensors, constants) with numpy broadcasting expressed as strides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_edge.runtime.compiler.graph import (CompileError, Expression, GraphCompiler, MoveView, Op, Pending, Tensor,
                                                   rule)
from lightning_edge.runtime.plan import (FLOAT_OPCODES, Bf16ConvOp, bf16_pairs_fit, FloatConvOp, FloatExpressionOp, FloatInputOp, FloatLayerNormOp,
                                         FloatMatMulOp, FloatOutputOp, FloatPoolOp, FloatReduceOp, FloatSoftmaxOp, GatherOp, TensorRecord, ToCodesOp,
                                         Fp16ConvOp, ReducedPrecisionConvOp, ToFloatOp)
from lightning_edge.runtime.reference import (FLOAT_OPS, _attributes, _linear_taps, _padding, _pool_geometry, _reduce_axes,
                                             _resize_plan, _source_coordinates, batch_norm_coefficients, bf16_round,
                                             fp16_round)

_OPCODE = {name: index for index, name in enumerate(FLOAT_OPCODES)}
# ONNX op -> the program's opcode, for the elementwise ops whose operands are all registers.
_DIRECT = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min", "Neg": "neg", "Abs": "abs",
           "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Erf": "erf",
           "Pow": "pow", "Softplus": "softplus", "Mish": "mish", "Reciprocal": "reciprocal", "Floor": "floor",
           "Ceil": "ceil", "PRelu": "prelu"}


@dataclass
class FloatTensor:
    """A float32 tensor of the plan (a float region's value): index and ONNX shape for one sample (the batch axis
    at its extent per sample, as every map is made), stored in ONNX order."""

    index: int
    shape: tuple[int, ...]
    producer: Op | None = None


def new_float(c: GraphCompiler, name: str, shape: tuple[int, ...]) -> FloatTensor:
    c.tensors.append(TensorRecord(name, int(np.prod(shape)), list(shape), dtype="f32"))
    return FloatTensor(len(c.tensors) - 1, tuple(shape))


def _image(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) codes of this ONNX shape are stored as (NHWC); anything but an image is a flat (F, 1, 1)."""
    if shape[0] == 1 and len(shape) == 4:
        return tuple(shape[1:])
    return (int(np.prod(shape)), 1, 1)


def to_float(c: GraphCompiler, node: Any, operand: Any) -> FloatTensor:
    """``operand`` (codes, moved codes or an elementwise function) as a float tensor of the plan."""
    if isinstance(operand, FloatTensor):
        return operand
    if isinstance(operand, Expression):  # evaluated once however many ops read it (the entry keeps its id alive)
        key = ("expression", id(operand))
        if key not in c.float_copies:
            c.float_copies[key] = (operand, _evaluated(c, operand))
        return c.float_copies[key][1]
    tensor = c.activation(node, operand)
    if tensor.flat_order is not None:
        raise CompileError(node, "a float op reads a flattened tensor stored permuted; quantize it after the Flatten")
    key = (tensor.index, tensor.onnx())  # an alias of the same codes may see them with another shape
    cached = c.float_copies.get(key)
    if cached is not None:
        return cached
    channels, height, width = tensor.chw()
    result = new_float(c, f"{c.tensors[tensor.index].name}.float", tensor.onnx())
    result.producer = c.emit(c.op(ToFloatOp, [node.name], input=tensor.index, output=result.index, channels=channels,
                                  height=height, width=width, grid=tensor.grid()))
    c.float_copies[key] = result
    return result


def float_input(c: GraphCompiler, name: str, index: int) -> FloatTensor:
    """Graph input ``name``, the plan's input ``index``, as a float tensor (an op at the plan's start): what a float
    region reading it, or a QuantizeLinear of it (then a ``to_codes``), starts from."""
    channels, height, width = c.input_shapes[index]
    result = new_float(c, name, (1, channels, height, width))
    result.producer = c.emit(c.op(FloatInputOp, [], output=result.index, channels=channels, height=height, width=width,
                                  index=index))
    return result


def float_output(c: GraphCompiler, value: FloatTensor, index: int = 0) -> list[int]:
    """A float tensor as the plan's output ``index`` (an op at the plan's end); returns the output's shape, (C, H, W)
    for an image, else (F,) (the engine's output is (batch, F) for anything else)."""
    channels, height, width = _image(value.shape)
    c.emit(c.op(FloatOutputOp, [], input=value.index, channels=channels, height=height, width=width, index=index))
    return [channels, height, width] if (height, width) != (1, 1) else [channels]


def _evaluated(c: GraphCompiler, expression: Expression) -> FloatTensor:
    """An expression as a float tensor: one float_expression op, or, where moves came after the function (a Flatten
    of a Relu), the function's tensor moved."""
    from lightning_edge.runtime.compiler.movement import is_move

    if is_move(expression.node):
        return move_float(c, expression.node, [to_float(c, expression.node, expression.operands[0])])[expression.node.output[0]]
    fused = _fused_epilogue(c, expression)
    if fused is not None:
        return fused
    return float_expression(c, expression, f"{expression.node.output[0]}")


def _fused_epilogue(c: GraphCompiler, expression: Expression) -> FloatTensor | None:
    """``relu(conv + other)``, ``conv + other`` or ``relu(conv)`` (Relu or Clip with constant bounds) where ``conv``
    is a bf16_conv's result that nothing else reads and ``other`` a float tensor of its shape computed before it:
    the conv adds and clamps in its own epilogue and its tensor is the result; None where it cannot."""
    node, low, high, inner = expression.node, -math.inf, math.inf, expression
    if node.op_type in ("Relu", "Clip"):
        try:
            low, high = (0.0, math.inf) if node.op_type == "Relu" else c.clip_bounds(node)
        except CompileError:  # a bound computed at run time
            return None
        if low > high:  # ONNX makes every value `high`; the float_expression op computes that, the conv refuses it
            return None
        inner = expression.operands[0] if expression.operands else None
    skip = None
    if isinstance(inner, Expression) and inner.node.op_type == "Add" and len(inner.operands) == 2:
        if inner is not expression and [r.name for r in c.readers.get(inner.node.output[0], [])] != [node.name]:
            return None  # the sum is read elsewhere too
        conv_side = [operand for operand in inner.operands if _lone_bf16_result(c, operand, inner.node)]
        if not conv_side:
            return None
        conv_result = conv_side[0]
        other = inner.operands[1] if inner.operands[0] is conv_result else inner.operands[0]
        computed_later = isinstance(other, Expression) or (
            isinstance(other, FloatTensor) and other.producer is not None and
            c.ops.index(other.producer) > c.ops.index(conv_result.producer))
        if isinstance(other, Expression):
            other = to_float(c, inner.node, other)
        if not isinstance(other, FloatTensor) or other.shape != conv_result.shape or other.producer is None:
            return None
        if computed_later:
            # A shortcut's subsampling, evaluated only now: the conv, which nothing but this Add reads, moves
            # after it.
            c.ops.remove(conv_result.producer)
            c.ops.append(conv_result.producer)
        skip, inner_node = other.index, inner.node
    elif _lone_bf16_result(c, inner, node):
        conv_result, inner_node = inner, None
    else:
        return None
    conv = conv_result.producer
    conv.skip = skip
    conv.low = None if low == -math.inf else float(np.float32(low))
    conv.high = None if high == math.inf else float(np.float32(high))
    conv.nodes = [*conv.nodes, *([inner_node.name] if inner_node is not None else []), *([node.name] if inner is not expression else [])]
    c.tensors[conv_result.index].name = node.output[0]  # the tensor holds the epilogue's values (what a trace shows)
    return conv_result


def _lone_bf16_result(c: GraphCompiler, operand: Any, reader: Any) -> bool:
    """``operand`` is a bf16_conv's (or fp16_conv's) result with no epilogue yet, read by ``reader`` alone and not
    a graph output."""
    if not isinstance(operand, FloatTensor) or not isinstance(operand.producer, ReducedPrecisionConvOp):
        return False
    conv = operand.producer
    if conv.skip is not None or conv.low is not None or conv.high is not None:
        return False
    name = c.tensors[operand.index].name
    return name not in c.outputs and [r.name for r in c.readers.get(name, [])] == [reader.name]


def store_bf16(c: GraphCompiler) -> None:
    """Once every op is emitted: a bf16_conv's result that only bf16_convs read, each as its input (never as a
    skip, never a graph output), is stored as bfloat16 bits in channel pairs (``bf16_pairs_fit``). Its readers
    round it to bfloat16 first (rule 20), so its values are the same and its traffic halves."""
    readers: dict[int, list[Op]] = {}
    for op in c.ops:
        for index in op.reads():
            readers.setdefault(index, []).append(op)
    for op in c.ops:
        if not isinstance(op, Bf16ConvOp) or c.tensors[op.output].name in c.outputs:
            continue
        found = readers.get(op.output, [])
        if found and all(isinstance(r, Bf16ConvOp) and r.input == op.output and r.skip != op.output for r in found) and (
                bf16_pairs_fit(op, found)):
            c.tensors[op.output].dtype = "bf16"


def to_codes(c: GraphCompiler, quantizer: Any, value: FloatTensor, grid: tuple[float, int, int, int]) -> Tensor:
    """A float tensor meets its QuantizeLinear: codes stored as (C, H, W) NHWC, or (F,)."""
    channels, height, width = _image(value.shape)
    natural = value.shape[0] == 1 and len(value.shape) in (2, 4)
    storage = (channels, height, width) if natural and len(value.shape) == 4 else (channels,)
    tensor = c.produce(ToCodesOp, [quantizer.name], quantizer.output[0], grid, storage, input=value.index,
                       channels=channels, height=height, width=width, grid=c.grid_record(grid))
    tensor.onnx_shape = None if natural else tuple(value.shape)
    return tensor


# ---------------------------------------------------------------------------------------------- expressions
def float_expression(c: GraphCompiler, expression: Expression, name: str) -> FloatTensor:
    """An elementwise function as one float_expression op (any number of int8 or float tensors, constants)."""
    builder = _Program(c)
    result = builder.register_of(expression)
    shape = np.broadcast_shapes(*[leaf[1] for leaf in builder.leaves], *[k.shape for k in builder.constants])
    if len(shape) > 6:
        raise CompileError(expression.node, f"its result has shape {shape}; float expressions take rank 6 at most")
    output = new_float(c, name, tuple(shape))
    op_id = c.new_id()
    rank = len(shape)
    strides = [c.array(op_id, f"strides{i}", _aligned(leaf_strides, leaf_shape, rank))
               for i, (_, leaf_shape, leaf_strides) in enumerate(builder.leaves)]
    constant_strides = [c.array(op_id, f"constant_strides{i}", _aligned(_row_major(k.shape), k.shape, rank))
                        for i, k in enumerate(builder.constants)]
    output.producer = c.emit(FloatExpressionOp(
        id=op_id, nodes=list(dict.fromkeys(n.name for n in expression.nodes())), inputs=[leaf[0] for leaf in builder.leaves],
        tables=[c.array(op_id, f"table{i}", table) if table is not None else None for i, table in enumerate(builder.tables)],
        strides=strides, constants=[c.array(op_id, f"constant{i}", k.astype(np.float32)) for i, k in enumerate(builder.constants)],
        constant_strides=constant_strides, shape=list(shape),
        program=c.array(op_id, "program", np.asarray(builder.program, np.int32).reshape(-1, 5)),
        immediates=c.array(op_id, "immediates", np.asarray(builder.immediates, np.float32).reshape(-1, 2)),
        registers=builder.registers, result=result, output=output.index))
    return output


def _row_major(shape: tuple[int, ...]) -> np.ndarray:
    strides = np.ones(len(shape), np.int64)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * shape[axis + 1]
    return strides


def _aligned(strides: Any, shape: tuple[int, ...], rank: int) -> np.ndarray:
    """Element strides of an operand of ``shape`` per axis of a ``rank``-axis result (numpy's right alignment, 0
    where it broadcasts)."""
    return np.asarray([0] * (rank - len(shape)) + [int(s) if d > 1 else 0 for s, d in zip(strides, shape)], np.int32)


class _Program:
    """Registers for the expression's nodes and leaves, in evaluation order."""

    def __init__(self, c: GraphCompiler):
        self.c = c
        self.program: list[list[int]] = []
        self.immediates: list[list[float]] = []
        self.leaves: list[tuple[int, tuple[int, ...], np.ndarray]] = []  # (tensor index, ONNX shape, strides)
        self.tables: list[np.ndarray | None] = []
        self.constants: list[np.ndarray] = []
        self.registers = 0
        self.seen: dict[int, int] = {}

    def emit(self, opcode: str, a: int = 0, b: int = 0, d: int = 0, immediates: tuple[float, float] = (0.0, 0.0)) -> int:
        register = self.registers
        self.registers += 1
        self.program.append([_OPCODE[opcode], register, a, b, d])
        self.immediates.append([float(immediates[0]), float(immediates[1])])
        return register

    def leaf(self, value: Any) -> int:
        key = id(value)
        if key in self.seen:
            return self.seen[key]
        if isinstance(value, Tensor):
            if value.flat_order is not None:
                raise CompileError(None, "a float function reads a flattened tensor stored permuted")
            index = MoveView.of(value).index
            strides = np.array([int(np.take(index, 1, axis=a).flat[0] - index.flat[0]) if index.shape[a] > 1 else 0
                                for a in range(index.ndim)], np.int64)
            table = (np.arange(256) - value.zero).astype(np.float32) * np.float32(value.scale)
            self.leaves.append((value.index, tuple(index.shape), strides))
            self.tables.append(table)
        else:
            self.leaves.append((value.index, value.shape, _row_major(value.shape)))
            self.tables.append(None)
        register = self.emit("input", len(self.leaves) - 1)
        self.seen[key] = register
        return register

    def constant(self, value: np.ndarray) -> int:
        self.constants.append(np.asarray(value, np.float32))
        return self.emit("constant", len(self.constants) - 1)

    def register_of(self, value: Any) -> int:
        if isinstance(value, (Tensor, FloatTensor)):
            return self.leaf(value)
        if isinstance(value, np.ndarray):
            return self.constant(value)
        if isinstance(value, MoveView):
            return self.leaf(self.c.activation(None, value))
        if id(value) in self.seen:
            return self.seen[id(value)]
        evaluated = self.c.float_copies.get(("expression", id(value)))
        register = self.leaf(evaluated[1]) if evaluated is not None else self._node(value)
        self.seen[id(value)] = register
        return register

    def _node(self, expression: Expression) -> int:
        node, operands = expression.node, expression.operands
        op = node.op_type
        attributes = _attributes(node)
        if op in ("Max", "Min") and len(operands) > 2:
            result = self.register_of(operands[0])
            for operand in operands[1:]:
                result = self.emit(_DIRECT[op], result, self.register_of(operand))
            return result
        if op == "Clip":
            low, high = self.c.clip_bounds(node)
            return self.emit("clip", self.register_of(operands[0]), immediates=(low, high))
        if op == "LeakyRelu":
            return self.emit("leaky_relu", self.register_of(operands[0]), immediates=(np.float32(attributes.get("alpha", 0.01)), 0))
        if op == "HardSigmoid":
            return self.emit("hard_sigmoid", self.register_of(operands[0]),
                             immediates=(np.float32(attributes.get("alpha", 0.2)), np.float32(attributes.get("beta", 0.5))))
        if op == "HardSwish":  # x * HardSigmoid(x) with ONNX's fixed alpha and beta (reference.hard_swish)
            return self.emit("hard_swish", self.register_of(operands[0]), immediates=(np.float32(1.0 / 6.0), 0.5))
        if op == "Gelu":
            return self.emit("gelu", self.register_of(operands[0]),
                             immediates=(1.0 if attributes.get("approximate", "none") == "tanh" else 0.0, 0))
        if op == "BatchNormalization":
            a, b = batch_norm_coefficients(operands, attributes)
            shape = (-1,) + (1,) * (len(_leaf_rank(operands[0])) - 2)
            scaled = self.emit("mul", self.register_of(operands[0]), self.constant(a.reshape(shape)))
            return self.emit("add", scaled, self.constant(b.reshape(shape)))
        if op in _DIRECT:
            registers = [self.register_of(o) for o in operands if o is not None]
            if len(registers) > 2:
                raise CompileError(node, f"{op} of {len(registers)} operands has no float expression form")
            return self.emit(_DIRECT[op], *registers)
        raise CompileError(node, f"op {op} has no float expression form in the runtime")


def _leaf_rank(operand: Any) -> tuple[int, ...]:
    """The ONNX shape of an expression operand's first leaf: how BatchNormalization broadcasts (channels axis 1)."""
    if isinstance(operand, FloatTensor):
        return operand.shape
    if isinstance(operand, Tensor):
        return operand.onnx()
    if isinstance(operand, Expression):
        for inner in operand.operands:
            shape = _leaf_rank(inner)
            if shape:
                return shape
    return ()


# ---------------------------------------------------------------------------------------------- float ops
@rule("LayerNormalization")
def layer_normalization(c: GraphCompiler, node: Any, operands: list[Any]) -> FloatTensor:
    x = to_float(c, node, operands[0])
    axis = int(_attributes(node).get("axis", -1)) % len(x.shape)
    if axis == 0:
        raise CompileError(node, "LayerNormalization over the batch axis mixes samples")
    inner = int(np.prod(x.shape[axis:]))
    scale = np.broadcast_to(np.asarray(c.constant(node, node.input[1]), np.float32).reshape(-1), (inner,))
    bias = c.optional_constant(node, 2)
    output = new_float(c, node.output[0], x.shape)
    op_id = c.new_id()
    output.producer = c.emit(FloatLayerNormOp(
        id=op_id, nodes=[node.name], input=x.index, output=output.index, outer=int(np.prod(x.shape)) // inner,
        inner=inner, epsilon=float(np.float32(_attributes(node).get("epsilon", 1e-5))),
        scale=c.array(op_id, "scale", scale.copy()),
        bias=c.array(op_id, "bias", np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (inner,)).copy())
        if bias is not None else None))
    return output


@rule("Softmax", "LogSoftmax")
def softmax(c: GraphCompiler, node: Any, operands: list[Any]) -> FloatTensor:
    x = to_float(c, node, operands[0])
    axis = int(_attributes(node).get("axis", -1)) % len(x.shape)
    if axis == 0:
        raise CompileError(node, "Softmax over the batch axis mixes samples")
    dims = x.shape
    output = new_float(c, node.output[0], x.shape)
    output.producer = c.emit(c.op(FloatSoftmaxOp, [node.name], input=x.index, output=output.index,
                                  outer=int(np.prod(dims[:axis])), axis=dims[axis], inner=int(np.prod(dims[axis + 1:])),
                                  log=node.op_type == "LogSoftmax"))
    return output


@rule("MatMul")
def matmul(c: GraphCompiler, node: Any, operands: list[Any]) -> FloatTensor:
    sides = []
    for name, operand in zip(node.input, operands):
        if c.is_constant(name) and not isinstance(operand, (Tensor, MoveView, Expression, FloatTensor)):
            sides.append(("constant", np.asarray(c.constant(node, name), np.float32)))
        else:
            sides.append(("tensor", to_float(c, node, operand)))
    shapes = [value.shape for _, value in sides]
    if any(len(shape) < 2 for shape in shapes):
        raise CompileError(node, "MatMul of vectors is not supported; reshape them to matrices")
    (m, k), (k2, n) = shapes[0][-2:], shapes[1][-2:]
    if k != k2:
        raise CompileError(node, f"MatMul of {shapes[0]} and {shapes[1]}: inner sizes differ")
    leading = np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2])
    batch = int(np.prod(leading))
    strides = []
    for shape in shapes:
        count = int(np.prod(shape[:-2]))
        if count not in (1, batch):
            raise CompileError(node, f"MatMul of {shapes[0]} and {shapes[1]}: only whole-operand broadcasting is supported")
        strides.append(shape[-2] * shape[-1] if count == batch and batch > 1 else 0)
    output = new_float(c, node.output[0], (*leading, m, n))
    op_id = c.new_id()
    fields = {}
    for letter, (kind, value) in zip("ab", sides):
        if kind == "constant":
            fields[f"{letter}_constant"] = c.array(op_id, letter, np.ascontiguousarray(value))
        else:
            fields[letter] = value.index
    output.producer = c.emit(FloatMatMulOp(id=op_id, nodes=[node.name], batch=batch, m=m, k=k, n=n,
                                           a_batch_stride=strides[0], b_batch_stride=strides[1], output=output.index,
                                           **fields))
    return output


@rule("ReduceSum", "ReduceMax", "ReduceMin")
def reduce(c: GraphCompiler, node: Any, operands: list[Any]) -> FloatTensor:
    return float_reduce(c, node, operands)


def float_reduce(c: GraphCompiler, node: Any, operands: list[Any], axes: tuple[int, ...] | None = None) -> FloatTensor:
    """A reduction of a float (or dequantized) tensor; never over the batch axis. ``axes`` (keeping them) is for ops
    that are a fixed reduction (GlobalAveragePool: a mean over H and W)."""
    x = to_float(c, node, operands[0])
    rank = len(x.shape)
    keep = True
    if axes is None:
        axes = _reduce_axes([None, c.optional_constant(node, 1)], _attributes(node), rank)
        axes = tuple(range(1, rank)) if axes is None else axes
        keep = bool(_attributes(node).get("keepdims", 1))
    if 0 in axes:
        raise CompileError(node, "a reduction over the batch axis mixes samples")
    shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape)) if keep else \
        tuple(d for a, d in enumerate(x.shape) if a not in axes)
    output = new_float(c, node.output[0], shape)
    operation = "mean" if node.op_type == "GlobalAveragePool" else node.op_type[len("Reduce"):].lower()
    output.producer = c.emit(c.op(FloatReduceOp, [node.name], input=x.index, output=output.index,
                                  operation=operation, shape=list(x.shape), axes=list(axes)))
    return output


# ---------------------------------------------------------------------------------------------- FP32 layers
def runs_in_float(c: GraphCompiler, node: Any, operands: list[Any]) -> bool:
    """Whether a Conv, Gemm or pool runs in float32: it reads a float-region value (a float tensor, or a float
    function not quantized since), or (Conv, Gemm) its weight is a plain float constant, not a quantized one."""
    if isinstance(operands[0], (FloatTensor, Expression)):
        return True
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 1:
        producer = c.producers.get(node.input[1])
        while producer is not None and producer.op_type == "Identity":
            producer = c.producers.get(producer.input[0])
        return producer is None or producer.op_type != "DequantizeLinear"
    return False


def _float_image(c: GraphCompiler, node: Any, operand: Any) -> FloatTensor:
    x = to_float(c, node, operand)
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise CompileError(node, f"{node.op_type} reads a float tensor of shape {x.shape}; it needs (batch, C, H, W)")
    return x


# The reduced precisions: their conv op and the weights' rounding.
_REDUCED = {"bf16": (Bf16ConvOp, bf16_round), "fp16": (Fp16ConvOp, fp16_round)}


def float_conv(c: GraphCompiler, node: Any, operands: list[Any]) -> FloatTensor:
    """A Conv in float32 (any groups, stride, padding, dilation; a float bias): one float_conv op, or a bf16_conv
    (fp16_conv) with its weights rounded to bfloat16 (half) when the compiler's precision is bf16 (fp16)."""
    from lightning_edge.runtime.compiler.conv import explicit_pads

    x = _float_image(c, node, operands[0])
    attributes = _attributes(node)
    weights = np.asarray(c.constant(node, node.input[1]), np.float32)
    if weights.ndim != 4:
        raise CompileError(node, "only 2-D convolutions are supported")
    out_c, group_in, kernel_h, kernel_w = weights.shape
    groups = int(attributes.get("group", 1))
    _, channels, in_h, in_w = x.shape
    if group_in * groups != channels or out_c % groups:
        raise CompileError(node, f"weight shape {weights.shape} with group={groups} does not fit {channels} input channels")
    strides = list(attributes.get("strides", [1, 1]))
    dilations = list(attributes.get("dilations", [1, 1]))
    extent = ((kernel_h - 1) * dilations[0] + 1, (kernel_w - 1) * dilations[1] + 1)
    pads = explicit_pads(node, (in_h, in_w), extent, strides, [1, 1])
    if min(pads) < 0 or max(pads[0], pads[2]) >= extent[0] or max(pads[1], pads[3]) >= extent[1]:
        raise CompileError(node, f"padding {pads} must be smaller than the (dilated) kernel {extent[0]}x{extent[1]}")
    out_h = (in_h + pads[0] + pads[2] - extent[0]) // strides[0] + 1
    out_w = (in_w + pads[1] + pads[3] - extent[1]) // strides[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise CompileError(node, f"the kernel does not fit the {in_h}x{in_w} input")
    bias = c.optional_constant(node, 2)
    output = new_float(c, node.output[0], (1, out_c, out_h, out_w))
    op_id = c.new_id()
    kind = FloatConvOp
    if c.precision in _REDUCED:
        kind, rounding = _REDUCED[c.precision]
        weights = rounding(weights)
    output.producer = c.emit(kind(
        id=op_id, nodes=[node.name], input=x.index, output=output.index, in_c=channels, in_h=in_h, in_w=in_w,
        out_c=out_c, out_h=out_h, out_w=out_w, groups=groups, kernel_h=kernel_h, kernel_w=kernel_w, stride_h=strides[0],
        stride_w=strides[1], dilation_h=dilations[0], dilation_w=dilations[1], pad_top=pads[0], pad_left=pads[1],
        weights=c.array(op_id, "weights", weights), macs=int(weights.size) * out_h * out_w,
        bias=c.array(op_id, "bias", np.asarray(bias, np.float32).reshape(out_c)) if bias is not None else None))
    return output


def float_gemm(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """A Gemm in float32: a float_matmul by the constant ``alpha * B'``, then ``+ beta * C`` as a float expression
    (which fuses with the activation after it)."""
    attributes = _attributes(node)
    x = to_float(c, node, operands[0])
    if attributes.get("transA", 0) or len(x.shape) != 2:
        raise CompileError(node, f"a float Gemm needs an untransposed (batch, features) input, not {x.shape}")
    weights = np.asarray(c.constant(node, node.input[1]), np.float32)
    weights = weights.T if attributes.get("transB", 0) else weights
    if weights.ndim != 2 or weights.shape[0] != x.shape[1]:
        raise CompileError(node, f"weight {weights.shape} does not fit {x.shape[1]} input features")
    alpha = np.float32(attributes.get("alpha", 1.0))
    reduced = _reduced_gemm_bias(c, node, weights.shape[1])
    if reduced is not None:
        return _reduced_gemm(c, node, x, weights, reduced)
    weights = weights if alpha == 1 else weights * alpha
    product = new_float(c, node.output[0] if len(node.input) < 3 else f"{node.output[0]}/matmul", (1, weights.shape[1]))
    op_id = c.new_id()
    product.producer = c.emit(FloatMatMulOp(
        id=op_id, nodes=[node.name], batch=1, m=1, k=weights.shape[0], n=weights.shape[1], a=x.index,
        b_constant=c.array(op_id, "b", np.ascontiguousarray(weights)), a_batch_stride=0, b_batch_stride=0,
        output=product.index))
    if len(node.input) < 3 or not node.input[2]:
        return product
    bias = np.asarray(c.constant(node, node.input[2]), np.float32) * np.float32(attributes.get("beta", 1.0))
    add = onnx_node("Add", node)
    add.output[:] = [node.output[0]]
    return Expression(add, [product, bias])


def _reduced_gemm_bias(c: GraphCompiler, node: Any, features: int) -> np.ndarray | bool | None:
    """Under precision bf16 or fp16, a Gemm with alpha 1 runs as that precision's conv (rules 20 and 21): its bias
    ``beta * C`` in float32 (C a constant of one row), True for none; None where it stays float32
    (``reference._gemm_by_conv`` decides the same way)."""
    attributes = _attributes(node)
    if c.precision not in _REDUCED or np.float32(attributes.get("alpha", 1.0)) != 1:
        return None
    if len(node.input) < 3 or not node.input[2]:
        return True
    bias = np.asarray(c.constant(node, node.input[2]), np.float32)
    if bias.ndim > 2 or bias.size not in (1, features) or (bias.ndim == 2 and bias.shape[0] != 1):
        return None
    return np.broadcast_to(bias.reshape(-1), (features,)) * np.float32(attributes.get("beta", 1.0))


def _reduced_gemm(c: GraphCompiler, node: Any, x: FloatTensor, weights: np.ndarray, bias: np.ndarray | bool) -> FloatTensor:
    """``x @ weights + bias`` as a bf16_conv or fp16_conv: a 1x1 conv of the (K, 1, 1) input (the same K floats
    per sample)."""
    features, out_c = weights.shape
    kind, rounding = _REDUCED[c.precision]
    output = new_float(c, node.output[0], (1, out_c))
    op_id = c.new_id()
    output.producer = c.emit(kind(
        id=op_id, nodes=[node.name], input=x.index, output=output.index, in_c=features, in_h=1, in_w=1, out_c=out_c,
        out_h=1, out_w=1, groups=1, kernel_h=1, kernel_w=1, stride_h=1, stride_w=1, dilation_h=1, dilation_w=1,
        pad_top=0, pad_left=0, weights=c.array(op_id, "weights", rounding(weights.T.reshape(out_c, features, 1, 1))),
        macs=int(weights.size),
        bias=c.array(op_id, "bias", np.ascontiguousarray(bias, np.float32)) if bias is not True else None))
    return output


def float_pool(c: GraphCompiler, node: Any, operands: list[Any]) -> FloatTensor:
    """MaxPool or AveragePool in float32 (ceil_mode, padding, dilation, count_include_pad): one float_pool op."""
    x = _float_image(c, node, operands[0])
    attributes = _attributes(node)
    if len(node.output) > 1 and node.output[1]:
        raise CompileError(node, "MaxPool's indices output is not supported")
    _, channels, height, width = x.shape
    kernel, strides, dilations, begin, end = _pool_geometry(attributes, (height, width))
    _, explicit_end = _padding(attributes, (height, width), kernel, strides, dilations)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if any(not 0 <= p < e for p, e in zip([*begin, *explicit_end], extent * 2)):
        raise CompileError(node, f"padding {begin + explicit_end} must be smaller than the window {extent}")
    out_h = (height + begin[0] + end[0] - extent[0]) // strides[0] + 1
    out_w = (width + begin[1] + end[1] - extent[1]) // strides[1] + 1
    output = new_float(c, node.output[0], (1, channels, out_h, out_w))
    output.producer = c.emit(c.op(
        FloatPoolOp, [node.name], operation="max" if node.op_type == "MaxPool" else "average", input=x.index,
        output=output.index, channels=channels, height=height, width=width, out_h=out_h, out_w=out_w, kernel_h=kernel[0],
        kernel_w=kernel[1], stride_h=strides[0], stride_w=strides[1], dilation_h=dilations[0], dilation_w=dilations[1],
        pad_top=begin[0], pad_left=begin[1], pad_bottom=explicit_end[0], pad_right=explicit_end[1],
        count_include_pad=bool(attributes.get("count_include_pad", 0))))
    return output


def move_float(c: GraphCompiler, node: Any, values: list[FloatTensor]) -> dict[str, FloatTensor]:
    """Data movement of float tensors (one, or a Concat's several): the same numbering trick as codes (input i's
    elements numbered ``i << 32 | element``), as a float32 gather (or no op at all)."""
    numbers = [(i << MoveView.SLOT_SHIFT) + np.arange(int(np.prod(v.shape)), dtype=np.int64).reshape(v.shape)
               for i, v in enumerate(values)]
    data = len(values) if node.op_type == "Concat" else 1
    inputs = numbers + [c.constant(node, name) if name else None for name in node.input[data:]]
    if node.op_type == "Pad" and _attributes(node).get("mode", "constant") == "constant":
        constant = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0.0
        if float(np.asarray(constant).reshape(-1)[0]) != 0.0:
            raise CompileError(node, "a float-region Pad with a constant other than 0 is not supported")
        inputs = [numbers[0], inputs[1], np.array(-1, np.int64), *inputs[3:]]  # padding: element -1, the value 0
    result = FLOAT_OPS[node.op_type](node, inputs, _attributes(node))
    return {name: float_gather(c, node, values, np.asarray(index), name)
            for name, index in zip(node.output, result if isinstance(result, tuple) else (result,))}


def float_gather(c: GraphCompiler, node: Any, value: FloatTensor | list[FloatTensor], index: np.ndarray,
                 name: str) -> FloatTensor:
    """Elements of ``value`` (one tensor or several) picked by ``index`` (``input << 32 | element`` numbers, -1 for
    padding, in the result's ONNX shape): the same tensor seen with another shape where nothing moves, else a
    float32 gather."""
    values = value if isinstance(value, list) else [value]
    first = values[0]
    if index.size == int(np.prod(first.shape)) and np.array_equal(index.reshape(-1), np.arange(index.size)):
        return FloatTensor(first.index, tuple(index.shape), first.producer)
    output = new_float(c, name, tuple(index.shape))
    op_id = c.new_id()
    flat = index.reshape(-1)
    slots = np.where(flat < 0, -1, flat >> MoveView.SLOT_SHIFT).astype(np.int32)
    elements = np.where(flat < 0, 0, flat & 0xFFFFFFFF).astype(np.int32)
    output.producer = c.emit(GatherOp(
        id=op_id, nodes=[node.name], inputs=[v.index for v in values], input_sizes=[int(np.prod(v.shape)) for v in values],
        tables=[None] * len(values), size=int(index.size), indices=c.array(op_id, "indices", elements),
        sources=c.array(op_id, "sources", slots) if len(values) > 1 or (slots < 0).any() else None,
        output=output.index, element_bytes=4))
    return output


@rule("Resize")
def resize(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """Nearest Resize moves codes (``movement.move``); bilinear Resize is INT8_SPEC rule 15's float32 sum of four
    neighbours: each neighbour a move of the input, the weighted sum one float expression."""
    from lightning_edge.runtime.compiler.movement import materialize, move

    if _attributes(node).get("mode", "nearest") == "nearest":
        return move(c, node, operands)
    x = operands[0]
    if isinstance(x, Expression):
        x = to_float(c, node, x)
    numbers = np.arange(int(np.prod(x.shape)), dtype=np.int64).reshape(x.shape) if isinstance(x, FloatTensor) else \
        (x if isinstance(x, MoveView) else MoveView.of(c.activation(node, x))).index
    inputs = [numbers] + [c.constant(node, name) if name else None for name in node.input[1:]]
    attributes = _attributes(node)
    if attributes.get("mode") != "linear" or len(numbers.shape) != 4:
        raise CompileError(node, f"Resize mode {attributes.get('mode')!r} of a rank-{len(numbers.shape)} tensor is not "
                                 "supported (nearest, and linear over H and W)")
    mode = attributes.get("coordinate_transformation_mode", "half_pixel")
    (height, out_h, scale_h), (width, out_w, scale_w) = _resize_plan(node, numbers, inputs, attributes)
    y0, y1, wy0, wy1 = _linear_taps(_source_coordinates(mode, out_h, height, scale_h), height)
    x0, x1, wx0, wx1 = _linear_taps(_source_coordinates(mode, out_w, width, scale_w), width)
    neighbours = []
    for rows in (y0, y1):
        for columns in (x0, x1):
            picked = numbers[:, :, rows][:, :, :, columns]
            if isinstance(x, FloatTensor):
                neighbours.append(float_gather(c, node, x, picked, f"{node.output[0]}/neighbour{len(neighbours)}"))
            else:
                view = x if isinstance(x, MoveView) else MoveView.of(c.activation(node, x))
                neighbours.append(materialize(c, MoveView(node, view.sources, picked), None,
                                              f"{node.output[0]}/neighbour{len(neighbours)}"))
    weights_x = [w.reshape(1, 1, 1, -1) for w in (wx0, wx1)]
    weights_y = [w.reshape(1, 1, -1, 1) for w in (wy0, wy1)]

    def operation(op_type: str, *operands: Any) -> Expression:
        return Expression(onnx_node(op_type, node), list(operands))

    top = operation("Add", operation("Mul", neighbours[0], weights_x[0]), operation("Mul", neighbours[1], weights_x[1]))
    bottom = operation("Add", operation("Mul", neighbours[2], weights_x[0]), operation("Mul", neighbours[3], weights_x[1]))
    result = operation("Add", operation("Mul", top, weights_y[0]), operation("Mul", bottom, weights_y[1]))
    result.node.output[:] = [node.output[0]]
    return result


def onnx_node(op_type: str, origin: Any) -> Any:
    """A node the compiler adds for ``origin`` (it reports under origin's name)."""
    import onnx

    return onnx.helper.make_node(op_type, [], [f"{origin.output[0]}/{op_type}"], name=origin.name)


def reads_float(operands: list[Any]) -> bool:
    return any(isinstance(o, FloatTensor) for o in operands)


__all__ = ["FloatTensor", "Pending", "float_conv", "float_expression", "float_gemm", "float_pool", "float_reduce",
           "move_float", "reads_float", "runs_in_float", "to_codes", "to_float"]
