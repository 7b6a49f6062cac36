"""Compiler rules of elementwise ops: the residual Add (folded into a conv's epilogue where it can be), and
every elementwise float function between DequantizeLinear and QuantizeLinear.

INT8_SPEC's general rule: dequantize, apply the float op node by node in float32, requantize. So a function
of one int8 tensor (HardSwish, Sigmoid, x * Sigmoid(x), BatchNormalization, PRelu, Mul by a constant, ...) is
exactly a 256-entry table per channel, computed here with the reference's own float functions
(``reference.float_op``) on every code; and a binary op on two int8 tensors (an SE gate's broadcast product,
a broadcast add) reads each operand through a float32 table (its dequantization, or a unary function of it)
and quantizes the float32 result.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_edge.runtime.compiler.graph import (CompileError, Expression, GraphCompiler, MoveView, Pending, Tensor,
                                                   finisher, rule)
from lightning_edge.runtime.plan import AddOp, BinaryOp, ConvOp, TableOp
from lightning_edge.runtime.reference import FLOAT_OPS, float_op, quantize

# The elementwise ops among the spec's float functions (an op joins by joining reference.FLOAT_OPS).
ELEMENTWISE = tuple(op for op in ("Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "PRelu", "HardSigmoid",
                                  "HardSwish", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Softplus", "Mish", "Gelu", "Neg",
                                  "Abs", "Sqrt", "Pow", "Reciprocal", "Floor", "Ceil", "BatchNormalization", "Max", "Min")
                    if op in FLOAT_OPS)
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
_CODES = np.arange(256)


@rule(*ELEMENTWISE)
def elementwise(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """An Add of two int8 tensors of one shape stays an integer add (it may fold into a conv); anything else is an
    :class:`Expression` (or, on constants alone, a constant)."""
    if node.op_type == "Add" and all(isinstance(o, Tensor) for o in operands) and operands[0].onnx() == operands[1].onnx() \
            and operands[0].flat_order is None and operands[1].flat_order is None:
        return Pending(node, "add", list(operands))
    from lightning_edge.runtime.compiler.float_region import FloatTensor

    resolved = []
    for name, operand in zip(node.input, operands):
        if isinstance(operand, (Pending, MoveView)):
            operand = c.activation(node, operand)  # moved codes materialize; an unquantized integer result raises
        resolved.append(operand if isinstance(operand, (Tensor, Expression, FloatTensor))
                        else None if not name else c.constant(node, name))
    if not any(isinstance(o, (Tensor, Expression, FloatTensor)) for o in resolved):
        return np.asarray(float_op(node, resolved))
    return Expression(node, resolved)


def evaluate(expression: Expression, values: dict[int, np.ndarray]) -> np.ndarray:
    """``expression`` in float32 with each source tensor's index mapped to its dequantized values."""
    from lightning_edge.runtime.compiler.movement import is_move

    if is_move(expression.node):
        raise CompileError(expression.node, "a float function after moving a float result needs a QuantizeLinear "
                                            "between them")
    inputs = [evaluate(o, values) if isinstance(o, Expression) else values[o.index] if isinstance(o, Tensor) else o
              for o in expression.operands]
    return np.asarray(float_op(expression.node, inputs), dtype=np.float32)


def finish_expression(c: GraphCompiler, quantizer: Any, expression: Expression, grid: tuple[float, int, int, int],
                      shift: int) -> Tensor:
    """An expression meets its QuantizeLinear: a table op (one source) or a binary op (two). Data movement after
    the float function (a Flatten of a HardSwish) moves the function's quantized codes instead."""
    from lightning_edge.runtime.compiler.movement import is_move, move, quantize_view

    if is_move(expression.node):
        inner = expression.operands[0]
        codes = finish_expression(c, _Renamed(quantizer, inner.node.output[0]), inner, grid, shift)
        moved = move(c, expression.node, [codes, *[None] * (len(expression.operands) - 1)])  # constants: by name
        return quantize_view(c, quantizer, moved[expression.node.output[0]], grid)
    from lightning_edge.runtime.compiler.float_region import float_expression, to_codes

    sources = expression.sources()
    nodes = list(dict.fromkeys(node.name for node in expression.nodes())) + [quantizer.name]
    try:
        if not _reads_floats(expression) and len(sources) == 1:
            return _table_op(c, quantizer, expression, sources[0], nodes, grid, shift)
        if not _reads_floats(expression) and len(sources) == 2:
            composed = _composed_source(c, expression, sources)
            if composed is not None:
                return composed_table_op(c, quantizer, expression, *composed, nodes, grid, shift)
            return _binary_op(c, quantizer, expression, nodes, grid, shift)
    except _NoIntegerForm:
        pass
    return to_codes(c, quantizer, float_expression(c, expression, expression.node.output[0]), grid)


class _NoIntegerForm(CompileError):
    """The function has no table or binary form; it runs as a float expression instead."""


def _reads_floats(expression: Expression) -> bool:
    from lightning_edge.runtime.compiler.float_region import FloatTensor

    return any(isinstance(o, FloatTensor) or isinstance(o, Expression) and _reads_floats(o) for o in expression.operands)


class _Renamed:
    """A QuantizeLinear seen as writing ``output``: the codes of a float function before the moves after it."""

    def __init__(self, quantizer: Any, output: str):
        self.name, self.output = quantizer.name, [output]


def _code_values(c: GraphCompiler, node: Any, expression: Expression | Tensor, source: Tensor,
                 derived: Tensor | None = None) -> np.ndarray:
    """``expression`` on every code of ``source``: float32 (256, table count), one column per channel where the
    function has per-channel constants, else one column. ``derived``, a table op's result on ``source`` that the
    expression reads too, takes for each code the dequantized code that op's table gives it."""
    channels = source.chw()[0]
    if source.onnx_shape is not None and _has_array_constants(expression):
        raise _NoIntegerForm(node, "per-element constants on a tensor stored flat run as a float expression")
    _check_constants(node, expression, channels)
    shape = (256, -1, 1, 1) if len(source.shape) == 3 else (256, -1)
    dequantized = _dequantized(_CODES, source).reshape(shape)
    inputs = {source.index: dequantized}
    if derived is not None:
        inputs[derived.index] = _dequantized(c.arrays[derived.producer.tables].T, derived).reshape(shape)
    values = evaluate(expression, inputs) if isinstance(expression, Expression) else dequantized
    values = values.reshape(256, -1)
    if values.shape[1] not in (1, channels):
        raise CompileError(node, f"its result has {values.shape[1]} channels for {channels} input channels")
    return values


def _dequantized(codes: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Stored codes of ``tensor`` as float32 values: ``float32(q - z) * s``."""
    return (codes.astype(np.int64) - tensor.zero).astype(np.float32) * np.float32(tensor.scale)


def _has_array_constants(expression: Any) -> bool:
    return isinstance(expression, Expression) and any(
        isinstance(o, np.ndarray) and o.size > 1 or _has_array_constants(o) for o in expression.operands)


def _check_constants(node: Any, expression: Expression | Tensor, channels: int) -> None:
    """Constants may vary by channel only: then the function of a code is one table per channel."""
    if not isinstance(expression, Expression):
        return
    for operand in expression.operands:
        if isinstance(operand, Expression):
            _check_constants(node, operand, channels)
        elif isinstance(operand, np.ndarray) and operand.size > 1 and expression.node.op_type != "BatchNormalization":
            shape = (1,) * (4 - operand.ndim) + operand.shape if operand.ndim <= 4 else operand.shape
            if operand.ndim > 4 or shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, channels):
                raise _NoIntegerForm(expression.node, f"a constant of shape {operand.shape} varies along more than the "
                                                    "channels; only per-channel constants have a table form")


def _composed_source(c: GraphCompiler, expression: Expression, sources: list[Tensor]) -> tuple[Tensor, Tensor] | None:
    """``(source, derived)`` where one of the two tensors an expression reads is a table op's result on the other,
    of its shape (SiLU as ONNX Runtime quantizes it: ``x * Q(Sigmoid(x))``): the whole expression is then a
    function of the source's codes alone, one table (the derived tensor's table composed in). None otherwise."""
    for source, derived in (sources, sources[::-1]):
        op = derived.producer
        if isinstance(op, TableOp) and op.input == source.index and derived.shape == source.shape and \
                derived.flat_order is None and source.flat_order is None and derived.onnx_shape == source.onnx_shape:
            return source, derived
    return None


def composed_table_op(c: GraphCompiler, quantizer: Any, expression: Expression, source: Tensor, derived: Tensor,
                      nodes: list[str], grid: tuple[float, int, int, int], shift: int) -> Tensor:
    """An expression of ``source`` and ``derived = table(source)`` as one table on ``source``: per code, the
    expression of its dequantized value and of the dequantized code the derived tensor's table gives it, the
    float32 arithmetic of INT8_SPEC's node-by-node rule. The derived tensor's op goes where nothing else reads it."""
    op = derived.producer
    values = _code_values(c, expression.node, expression, source, derived)
    if _read_only_by(c, derived, expression.node):
        c.ops.remove(op)
        nodes = list(dict.fromkeys([*op.nodes, *nodes]))
    return _table_op(c, quantizer, expression, source, nodes, grid, shift, values)


def _read_only_by(c: GraphCompiler, tensor: Tensor, node: Any) -> bool:
    """Whether ``node`` is the only reader of the tensor's codes (through DequantizeLinear nodes)."""
    name = c.tensors[tensor.index].name
    if name in c.outputs:
        return False
    readers = c.readers.get(name, [])
    return bool(readers) and all(reader.op_type == "DequantizeLinear" and reader.output[0] not in c.outputs and
                                 [r is node for r in c.readers.get(reader.output[0], [])] == [True] for reader in readers)


def _table_op(c: GraphCompiler, quantizer: Any, expression: Expression, source: Tensor, nodes: list[str],
              grid: tuple[float, int, int, int], shift: int, values: np.ndarray | None = None) -> Tensor:
    """The expression of one int8 tensor as a table op; ``values``, the expression on every code (256, table
    count), where the caller computed them."""
    values = _code_values(c, expression.node, expression, source) if values is None else values
    scale, zero, low, high = grid
    tables = (quantize(values.T, np.float32(scale), zero - shift, low - shift, high - shift) + shift).astype(np.uint8)
    channels = source.chw()[0]
    if source.flat_order is not None and len(tables) > 1:  # a permuted flat tensor: tables follow its storage
        stored = np.empty_like(tables)
        stored[source.flat_order] = tables
        tables = stored
    tensor = c.new_tensor(quantizer.output[0], grid, source.shape)
    tensor.flat_order, tensor.onnx_shape = source.flat_order, source.onnx_shape
    op_id = c.new_id()
    tensor.producer = c.emit(TableOp(
        id=op_id, nodes=nodes, input=source.index, output=tensor.index, channels=channels, size=int(np.prod(source.shape)),
        table_count=tables.shape[0], tables=c.array(op_id, "tables", tables), input_grid=source.grid(),
        output_grid=tensor.grid()))
    return tensor


def _binary_op(c: GraphCompiler, quantizer: Any, expression: Expression, nodes: list[str],
               grid: tuple[float, int, int, int], shift: int) -> Tensor:
    low_real, high_real = -math.inf, math.inf
    root = expression
    while root.node.op_type in ("Relu", "Clip") and isinstance(root.operands[0], Expression):  # bounds on the result
        low, high = (0.0, math.inf) if root.node.op_type == "Relu" else c.clip_bounds(root.node)
        low_real, high_real = max(low_real, low), min(high_real, high)
        root = root.operands[0]
    if root.node.op_type not in _BINARY or len(root.operands) != 2:
        raise _NoIntegerForm(root.node, "a function of two int8 tensors must be an Add, Sub, Mul or Div of functions of "
                                      "each (optionally followed by Relu/Clip) to have an integer form")
    sides = []
    for operand in root.operands:
        found = operand.sources() if isinstance(operand, Expression) else [operand] if isinstance(operand, Tensor) else []
        if len(found) != 1:
            raise _NoIntegerForm(root.node, "each operand of a binary op must depend on exactly one int8 tensor")
        sides.append((operand, found[0]))
    shapes = [source.chw() for _, source in sides]
    if any(source.onnx_shape is not None for _, source in sides):
        raise _NoIntegerForm(root.node, "operands stored flat broadcast as a float expression")
    if any(source.flat_order is not None for _, source in sides):
        raise CompileError(root.node, "a binary op on flattened spatial tensors is not supported")
    out = tuple(max(a, b) for a, b in zip(*shapes))
    if any(d not in (1, o) for shape in shapes for d, o in zip(shape, out)):
        raise _NoIntegerForm(root.node, f"operands of shapes {shapes[0]} and {shapes[1]} do not broadcast")
    scale, zero, low, high = grid
    original = (zero - shift, low - shift, high - shift)
    if low_real > -math.inf:
        low = max(low, int(quantize(np.float32(low_real), np.float32(scale), *original)) + shift)
    if high_real < math.inf:
        high = min(high, int(quantize(np.float32(high_real), np.float32(scale), *original)) + shift)
    output_shape = out if len(sides[0][1].shape) == 3 or len(sides[1][1].shape) == 3 else (out[0],)
    tensor = c.new_tensor(quantizer.output[0], (scale, zero, low, high), output_shape)
    op_id = c.new_id()
    values = [_code_values(c, root.node, operand, source).T.astype(np.float32) for operand, source in sides]
    tables = [c.array(op_id, f"table{i}", table) for i, table in enumerate(values)]
    hwc = [[shape[1], shape[2], shape[0]] for shape in shapes]
    tensor.producer = c.emit(BinaryOp(
        id=op_id, nodes=nodes, operation=_BINARY[root.node.op_type], input=sides[0][1].index, other=sides[1][1].index,
        output=tensor.index, height=out[1], width=out[2], channels=out[0], input_shape=hwc[0], other_shape=hwc[1],
        input_table=tables[0], other_table=tables[1], input_table_count=len(values[0]),
        other_table_count=len(values[1]), output_grid=tensor.grid()))
    return tensor


# ---------------------------------------------------------------------------------------------- the integer add
@finisher("add")
def add_op(c: GraphCompiler, result: Pending, name: str, nodes: list[str], grid: tuple[float, int, int, int]) -> Tensor:
    a, b = result.inputs
    for conv, skip in ((a, b), (b, a)):
        op = conv.producer
        if isinstance(op, ConvOp) and op.skip is None and _read_once(c, op.output, result.node):
            return _fold_add(c, op, conv, skip, name, nodes, grid)
    tensor = c.produce(AddOp, nodes, name, grid, a.shape, input=a.index, skip=b.index, size=int(np.prod(a.shape)),
                       input_grid=a.grid(), skip_grid=b.grid(), output_grid=c.grid_record(grid))
    tensor.onnx_shape = a.onnx_shape
    return tensor


def _read_once(c: GraphCompiler, tensor_index: int, add_node: Any) -> bool:
    """Whether the conv output's only reader is this Add (through one DequantizeLinear)."""
    name = c.tensors[tensor_index].name
    if name in c.outputs:
        return False
    readers = c.readers.get(name, [])
    if len(readers) != 1 or readers[0].op_type != "DequantizeLinear":
        return False
    return [reader is add_node for reader in c.readers.get(readers[0].output[0], [])] == [True]


def _fold_add(c: GraphCompiler, op: ConvOp, conv: Tensor, skip: Tensor, name: str, nodes: list[str],
              grid: tuple[float, int, int, int]) -> Tensor:
    """The conv's epilogue does the add: move the conv to this position with the skip operand."""
    c.ops.remove(op)
    tensor = c.new_tensor(name, grid, conv.shape)
    tensor.onnx_shape = conv.onnx_shape
    op.skip, op.skip_grid, op.sum_grid, op.output = skip.index, skip.grid(), tensor.grid(), tensor.index
    op.nodes = op.nodes + nodes
    op.candidates = [c_ for c_ in op.candidates or [] if c_["primitive"] != "depthwise"]  # its kernel has no add
    c.tensors[conv.index].folded = True
    tensor.producer = c.emit(op)
    return tensor
