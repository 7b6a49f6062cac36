"""Compiler rules of ops that only move codes, and of max pooling and Clip on codes.

Data movement (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice, Pad, Gather, Expand,
Tile, DepthToSpace, SpaceToDepth, nearest Resize, and any chain of them) is compiled by running the
reference's own ONNX functions on element numbers instead of values (:class:`~graph.MoveView`): the result
says, for every output element, which stored input element it copies. That map then becomes no op at all
where the output is the input's storage seen with another shape (a Flatten before a Gemm permutes the Gemm's
weight columns instead), a channel concat, or a general gather. So every composition ONNX Runtime accepts is
exact by construction, and channel shuffles or slices need no pattern of their own.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_edge.runtime.compiler.graph import (CompileError, Expression, GraphCompiler, MoveView, Pending, Tensor,
                                                   finisher, rule)
from lightning_edge.runtime.plan import ConcatOp, GatherOp, Grid, MaxPoolOp
from lightning_edge.runtime.reference import FLOAT_OPS, _attributes, _pool_geometry, quantize

MOVES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Pad", "Gather",
         "Expand", "Tile", "DepthToSpace", "SpaceToDepth")  # and nearest Resize (float_region.resize)
_PAD = -1


def is_move(node: Any) -> bool:
    """Whether the node only moves elements (so it acts on codes as they are)."""
    return node.op_type in MOVES or node.op_type == "Resize" and _attributes(node).get("mode", "nearest") == "nearest"


@rule(*MOVES)
def move(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """The node applied to element numbers; its data inputs are int8 tensors or views, the rest constants."""
    from lightning_edge.runtime.compiler.float_region import FloatTensor, move_float, to_float

    data = range(len(node.input)) if node.op_type == "Concat" else [0]
    if any(isinstance(operands[i], FloatTensor) for i in data) or \
            len(data) > 1 and any(isinstance(operands[i], Expression) for i in data):  # moves inside a float region
        return move_float(c, node, [to_float(c, node, operands[i]) for i in data])
    if len(data) == 1 and isinstance(operands[0], Expression):  # moves commute with the quantizer after them
        return Expression(node, [operands[0], *[c.constant(node, name) if name else None for name in node.input[1:]]])
    views, inputs = [], []
    for position, (name, operand) in enumerate(zip(node.input, operands)):
        if position in data:
            if isinstance(operand, (Tensor, MoveView)):
                view = operand if isinstance(operand, MoveView) else MoveView.of(operand)
            else:
                view = MoveView.of(c.activation(node, operand))
            views.append(view)
            inputs.append(None)
        else:
            inputs.append(c.constant(node, name) if name else None)
    sources, renumbered = _joined(views)
    pad_value = 0.0
    if node.op_type == "Pad":
        mode = _attributes(node).get("mode", b"constant")
        if mode in (b"constant", "constant"):
            pad_value = float(np.asarray(inputs[2]).reshape(-1)[0]) if len(inputs) > 2 and inputs[2] is not None else 0.0
            inputs = [inputs[0], inputs[1], np.array(_PAD, np.int64), *inputs[3:]]
    for position, index in zip(data, renumbered):
        inputs[position] = index
    result = FLOAT_OPS[node.op_type](node, inputs, _attributes(node))
    results = result if isinstance(result, tuple) else (result,)
    return {name: MoveView(node, sources, np.asarray(index, np.int64), pad_value)
            for name, index in zip(node.output, results)}


def _joined(views: list[MoveView]) -> tuple[list[Tensor], list[np.ndarray]]:
    """The views' sources as one list and their indices renumbered onto it."""
    sources: list[Tensor] = []
    renumbered = []
    for view in views:
        slots = []
        for tensor in view.sources:
            found = next((i for i, s in enumerate(sources) if s.index == tensor.index and s.shape == tensor.shape), None)
            if found is None:
                sources.append(tensor)
                found = len(sources) - 1
            slots.append(found)
        index = view.index.copy()
        inside = index >= 0
        slot = index[inside] >> MoveView.SLOT_SHIFT
        index[inside] = (np.asarray(slots, np.int64)[slot] << MoveView.SLOT_SHIFT) | (index[inside] & 0xFFFFFFFF)
        renumbered.append(index)
    return sources, renumbered


def quantize_view(c: GraphCompiler, quantizer: Any, view: MoveView, grid: tuple[float, int, int, int]) -> Tensor | MoveView:
    """A view meets its QuantizeLinear: on its sources' grid, a view whose shape is not an image or a vector (the
    5-D middle of a channel shuffle) stays a view until something reads it; otherwise it is materialized."""
    same = all(source.same_grid(grid) and (source.low, source.high) == grid[2:] for source in view.sources)
    if same and _storage(view.index.shape)[1] is not None:
        return view
    return materialize(c, view, grid, quantizer.output[0], [quantizer.name])


def _storage(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """How codes of this ONNX shape (batch axis at its per-sample extent) are stored: an image (1, C, H, W) as
    (C, H, W) NHWC, a vector (1, F) as (F,); anything else flat in ONNX order, keeping its ONNX shape."""
    if shape[0] == 1 and len(shape) == 4:
        return tuple(shape[1:]), None
    if shape[0] == 1 and len(shape) == 2:
        return (shape[1],), None
    return (int(np.prod(shape)),), tuple(shape)


def materialize(c: GraphCompiler, view: MoveView, grid: tuple[float, int, int, int] | None, name: str,
                nodes: list[str] | None = None) -> Tensor:
    """The view as a plan tensor on ``grid`` (None: its single source's grid): an alias of the source's storage,
    a concat, or a gather."""
    cached = c.materialized.get(id(view))
    if cached is not None and grid is None:
        return cached[1]
    node = view.node
    shape, onnx_shape = _storage(view.index.shape)
    if grid is None:
        grids = {(np.float32(s.scale), s.zero, s.low, s.high) for s in view.sources}
        if len(grids) != 1 or (view.index < 0).any():
            raise CompileError(node, "moved codes from several grids (or padded) need a QuantizeLinear after them")
        source = view.sources[0]
        grid = (source.scale, source.zero, source.low, source.high)
    nodes = [n.name for n in _nodes_of(view)] + (nodes or [])
    storage = (view.index[0].transpose(1, 2, 0) if len(shape) == 3 else view.index).reshape(-1)
    tensor = _alias(view, storage, shape, onnx_shape, grid) or _concat(c, view, storage, shape, grid, name, nodes) \
        or _gather(c, view, storage, shape, grid, name, nodes)
    tensor.onnx_shape = onnx_shape
    c.materialized[id(view)] = (view, tensor)  # the view kept alive, so its id is never reused
    return tensor


def _nodes_of(view: MoveView) -> list[Any]:
    return [view.node] if view.node is not None else []


def _alias(view: MoveView, storage: np.ndarray, shape: tuple[int, ...], onnx_shape: tuple[int, ...] | None,
           grid: tuple) -> Tensor | None:
    """The source's own storage, seen with ``shape``: nothing to run."""
    if len(view.sources) != 1 or (storage < 0).any():
        return None
    source = view.sources[0]
    if not source.same_grid(grid) or (source.low, source.high) != tuple(grid[2:]):
        return None
    size = int(np.prod(source.shape))
    if storage.size != size:
        return None
    if np.array_equal(storage, np.arange(size)):
        return Tensor(source.index, *grid, shape=shape, producer=source.producer)
    if len(shape) == 1 and onnx_shape is None and np.array_equal(np.sort(storage), np.arange(size)):
        return Tensor(source.index, *grid, shape=shape, producer=source.producer, flat_order=storage.copy())
    return None


def _table(c: GraphCompiler, op_id: str, key: str, source: Tensor, grid: tuple) -> str | None:
    """None where ``source`` is on ``grid``; else the array of its codes requantized onto it (Q_out(DQ_in(q)))."""
    if source.same_grid(grid) and source.low >= grid[2] and source.high <= grid[3]:
        return None
    real = (np.arange(256) - source.zero).astype(np.float32) * np.float32(source.scale)
    return c.array(op_id, key, quantize(real, np.float32(grid[0]), *grid[1:]).astype(np.uint8))


def _concat(c: GraphCompiler, view: MoveView, storage: np.ndarray, shape: tuple[int, ...], grid: tuple, name: str,
            nodes: list[str]) -> Tensor | None:
    """Whole sources side by side along the channels of every pixel."""
    if len(shape) != 3 or (storage < 0).any() or len(view.sources) < 2:
        return None
    channels, height, width = shape
    pieces = [s.chw() for s in view.sources]
    if any(p[1:] != (height, width) for p in pieces) or sum(p[0] for p in pieces) != channels:
        return None
    expected = np.concatenate([(slot << MoveView.SLOT_SHIFT) + np.arange(height * width * p[0]).reshape(height * width, p[0])
                               for slot, p in enumerate(pieces)], axis=1).reshape(-1)
    if not np.array_equal(storage, expected):
        return None
    op_id = c.new_id()
    tensor = c.new_tensor(name, grid, shape)
    tensor.producer = c.emit(ConcatOp(
        id=op_id, nodes=nodes, inputs=[s.index for s in view.sources], input_channels=[p[0] for p in pieces],
        tables=[_table(c, op_id, f"table{i}", s, grid) for i, s in enumerate(view.sources)], pixels=height * width,
        channels=channels, output=tensor.index, output_grid=tensor.grid()))
    return tensor


def _gather(c: GraphCompiler, view: MoveView, storage: np.ndarray, shape: tuple[int, ...], grid: tuple, name: str,
            nodes: list[str]) -> Tensor:
    op_id = c.new_id()
    slots = np.where(storage < 0, -1, storage >> MoveView.SLOT_SHIFT).astype(np.int32)
    elements = np.where(storage < 0, 0, storage & 0xFFFFFFFF).astype(np.int32)
    pad = int(quantize(np.float32(view.pad_value), np.float32(grid[0]), *grid[1:]))
    tensor = c.new_tensor(name, grid, shape)
    tensor.producer = c.emit(GatherOp(
        id=op_id, nodes=nodes, inputs=[s.index for s in view.sources],
        input_sizes=[int(np.prod(s.shape)) for s in view.sources],
        tables=[_table(c, op_id, f"table{i}", s, grid) for i, s in enumerate(view.sources)], size=int(storage.size),
        indices=c.array(op_id, "indices", elements),
        sources=c.array(op_id, "sources", slots) if len(view.sources) > 1 or (slots < 0).any() else None,
        pad=pad, output=tensor.index, output_grid=tensor.grid()))
    return tensor


# ---------------------------------------------------------------------------------------------- max pooling
@rule("MaxPool")
def max_pool(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """Max pooling on codes, or on float values a float_pool op."""
    from lightning_edge.runtime.compiler.float_region import float_pool, runs_in_float

    if runs_in_float(c, node, operands):
        return float_pool(c, node, operands)
    x = c.image(node, operands[0])
    attributes = _attributes(node)
    if len(node.output) > 1 and node.output[1]:
        raise CompileError(node, "MaxPool's indices output is not supported")
    kernel, strides, dilations, begin, end = _pool_geometry(attributes, x.shape[1:])
    if any(d != 1 for d in dilations):
        raise CompileError(node, "dilated max pooling is not supported")
    if max(begin[0], end[0] if not attributes.get("ceil_mode", 0) else 0) >= kernel[0] or begin[1] >= kernel[1]:
        raise CompileError(node, f"padding {begin + end} must be smaller than the kernel")
    channels, height, width = x.shape
    out_h = (height + begin[0] + end[0] - kernel[0]) // strides[0] + 1
    out_w = (width + begin[1] + end[1] - kernel[1]) // strides[1] + 1
    return Pending(node, "max_pool", [x], {
        "out_shape": (channels, out_h, out_w), "channels": channels, "height": height, "width": width,
        "out_h": out_h, "out_w": out_w, "kernel_h": kernel[0], "kernel_w": kernel[1], "stride_h": strides[0],
        "stride_w": strides[1], "pad_top": begin[0], "pad_left": begin[1]})


@finisher("max_pool")
def max_pool_op(c: GraphCompiler, result: Pending, name: str, nodes: list[str], grid: tuple[float, int, int, int]) -> Tensor:
    source = result.inputs[0]
    if not source.same_grid(grid) or grid[2] > source.low or grid[3] < source.high:
        raise CompileError(result.node, "a max pool must keep its input's grid (same scale and zero point)")
    fields = {k: v for k, v in result.fields.items() if k != "out_shape"}
    return c.produce(MaxPoolOp, nodes, name, grid, result.fields["out_shape"], input=source.index, **fields)


# ---------------------------------------------------------------------------------------------- Clip on codes
def clip_codes(c: GraphCompiler, node: Any, source: Any) -> Tensor:
    """Clip on codes (7-bit activations): narrows the producing op's clamp bounds."""
    from dataclasses import replace

    source = c.activation(node, source)
    low, high = c.clip_bounds(node)
    shift = source.zero - int(_zero_of(c, node))
    new_low = source.low if low == -math.inf else max(source.low, math.ceil(low) + shift)
    new_high = source.high if high == math.inf else min(source.high, math.floor(high) + shift)
    if (new_low, new_high) == (source.low, source.high):
        return source  # the codes are inside these bounds already (a shape op after a clipped tensor)
    op = source.producer
    if op is None or c.tensors[source.index].name != node.input[0] or len(c.readers.get(node.input[0], [])) != 1:
        raise CompileError(node, "a Clip on int8 codes must be the only reader of the QuantizeLinear it clips")
    key = "sum_grid" if getattr(op, "sum_grid", None) else "output_grid" if hasattr(op, "output_grid") else "grid"
    setattr(op, key, replace(getattr(op, key), low=new_low, high=new_high))
    op.nodes = op.nodes + [node.name]
    c.code_clips.add(node.name)
    c.tensors[source.index].name = node.output[0]  # the unclipped codes never exist
    return Tensor(source.index, source.scale, source.zero, new_low, new_high, source.shape, source.producer,
                  source.flat_order, source.onnx_shape)


def _zero_of(c: GraphCompiler, node: Any) -> int:
    quantizer = c.producers[node.input[0]]
    return int(c.constants[quantizer.input[2]]) if len(quantizer.input) > 2 else 0
