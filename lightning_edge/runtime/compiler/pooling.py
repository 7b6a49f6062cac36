"""Compiler rules of average pooling: GlobalAveragePool, ReduceMean over H and W (the same op), AveragePool.

INT8_SPEC rule 9: ``acc = sum(q - z_x)`` over the window (exact), then ``round_half_even(float32(acc) * M)``
with ``M = float32(s_x) / (float32(s_y) * float32(count))``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lightning_edge.runtime.compiler.graph import CompileError, GraphCompiler, Pending, Tensor, finisher, rule
from lightning_edge.runtime.plan import AveragePoolOp, WindowAveragePoolOp
from lightning_edge.runtime.reference import _attributes, _padding, _pool_geometry, _reduce_axes


@rule("GlobalAveragePool")
def global_average_pool(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """The integer global average pool, or on float values a float mean over H and W."""
    from lightning_edge.runtime.compiler.float_region import float_reduce, runs_in_float

    if runs_in_float(c, node, operands):
        return float_reduce(c, node, operands, axes=(2, 3))
    x = c.image(node, operands[0])
    return Pending(node, "average_pool", [x], {"keepdims": True})


@rule("ReduceMean")
def reduce_mean(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    """Over H and W of int8 codes it is the integer global average pool; any other mean runs in float."""
    from lightning_edge.runtime.compiler.float_region import float_reduce

    axes = c.optional_constant(node, 1)
    if isinstance(operands[0], Tensor) and len(operands[0].shape) == 3 and operands[0].onnx_shape is None \
            and _reduce_axes([None, axes], _attributes(node), 4) == (2, 3):
        return Pending(node, "average_pool", [operands[0]], {"keepdims": bool(_attributes(node).get("keepdims", 1))})
    return float_reduce(c, node, operands)


@finisher("average_pool")
def average_pool_op(c: GraphCompiler, result: Pending, name: str, nodes: list[str], grid: tuple[float, int, int, int]) -> Tensor:
    source = result.inputs[0]
    channels, height, width = source.shape
    multiplier = np.float32(source.scale) / (np.float32(grid[0]) * np.float32(height * width))
    shape = (channels, 1, 1) if result.fields.get("keepdims", True) else (channels,)
    return c.produce(AveragePoolOp, nodes, name, grid, shape, input=source.index, channels=channels, height=height,
                     width=width, multiplier=float(multiplier), input_grid=source.grid(),
                     output_grid=c.grid_record(grid))


@rule("AveragePool")
def average_pool(c: GraphCompiler, node: Any, operands: list[Any]) -> Any:
    from lightning_edge.runtime.compiler.float_region import float_pool, runs_in_float

    if runs_in_float(c, node, operands):
        return float_pool(c, node, operands)
    x = c.image(node, operands[0])
    attributes = _attributes(node)
    channels, height, width = x.shape
    kernel, strides, dilations, begin, end = _pool_geometry(attributes, (height, width))
    explicit_begin, explicit_end = _padding(attributes, (height, width), kernel, strides, dilations)
    if any(d != 1 for d in dilations) or begin[0] >= kernel[0] or begin[1] >= kernel[1]:
        raise CompileError(node, "only AveragePool without dilation, with padding smaller than the kernel, is supported")
    out_h = (height + begin[0] + end[0] - kernel[0]) // strides[0] + 1
    out_w = (width + begin[1] + end[1] - kernel[1]) // strides[1] + 1
    fields = {"channels": channels, "height": height, "width": width, "out_h": out_h, "out_w": out_w,
              "kernel_h": kernel[0], "kernel_w": kernel[1], "stride_h": strides[0], "stride_w": strides[1],
              "pad_top": begin[0], "pad_left": begin[1], "pad_bottom": explicit_end[0], "pad_right": explicit_end[1],
              "count_include_pad": bool(attributes.get("count_include_pad", 0))}
    return Pending(node, "window_average_pool", [x], fields)


@finisher("window_average_pool")
def window_average_pool_op(c: GraphCompiler, result: Pending, name: str, nodes: list[str],
                           grid: tuple[float, int, int, int]) -> Tensor:
    source, f = result.inputs[0], result.fields
    return c.produce(WindowAveragePoolOp, nodes, name, grid, (f["channels"], f["out_h"], f["out_w"]),
                     input=source.index, input_grid=source.grid(), output_grid=c.grid_record(grid), **f)
