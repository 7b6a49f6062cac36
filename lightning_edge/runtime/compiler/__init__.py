"""Compile a standard ONNX QDQ file into the runtime's fused integer plan (a .edge file). numpy + onnx, no torch.

What it accepts: the graphs ``lightning_edge.export.to_onnx`` writes and those of other QDQ tools such as
ONNX Runtime's ``quantize_static`` (per-channel or per-tensor int8 weights, given as int8 initializers or as
float constants with their own QuantizeLinear, uint8 or int8 activations, int32 or float biases, shared
initializers through Identity): QuantizeLinear on the float input, then integer ops between
DequantizeLinear and QuantizeLinear pairs, and a DequantizeLinear output. Each ONNX op type has one rule,
registered in ``graph.RULES`` by the module of its family:

- ``conv``: Conv and Gemm (+ bias + requantize + fused Relu/Clip as one op; Gemm as a 1x1 conv; a Flatten
  of a spatial tensor permutes the Gemm's weight columns from NCHW to the runtime's NHWC order);
- ``elementwise``: Add (folded into the producing conv's epilogue where its operand is read once), and any
  elementwise float function between DequantizeLinear and QuantizeLinear (HardSwish, Sigmoid, Mul by a
  constant, BatchNormalization, PRelu, ...): on one int8 tensor it is a lookup table computed from the spec's
  float functions (``reference.FLOAT_OPS``), on two (SE gates, broadcast adds and products) a binary op;
- ``pooling``: GlobalAveragePool, ReduceMean over H and W, AveragePool, MaxPool (ceil mode included);
- ``movement``: codes that only move (Flatten, Reshape, Squeeze, Unsqueeze, Concat, Slice, Split, channel
  shuffle, Pad, nearest Resize), requantized through a table where the output grid differs.

Per INT8_SPEC.md, multipliers and clamp bounds are computed here once, exactly as ``reference.py`` computes
them; int8-activation files are shifted by +128 onto uint8 codes (every difference and order is unchanged);
weights are stored as int8 in the (kernel row, kernel column, channel) order of an NHWC window and packed for
the CPU's kernel path when a plan is loaded (``packing``); where a layer has several algorithms, primitive
selection (``selection``) times them on its real shape with this machine's kernels.

Plain FP32 files (and any region a QDQ file leaves unquantized) run in float32 in the same plan
(``float_region``): the input is a ``float_input`` where something other than a QuantizeLinear reads it, the output
a ``float_output`` where it is a float value; Conv is a ``float_conv``, MaxPool and AveragePool a ``float_pool``,
GlobalAveragePool a ``float_reduce``, Gemm a ``float_matmul`` plus its bias in the float expression after it,
elementwise ops float expressions and moves float gathers, all summing in float64 (INT8_SPEC rule 17).

A graph has any number of inputs and outputs: each input is an op at the plan's start (``quantize`` or
``float_input``) and each output one at its end (``dequantize`` or ``float_output``), with its index in graph
order; the plan keeps their names and shapes.

Anything else stops with :class:`CompileError` naming the node and op, before anything is written.
"""
from __future__ import annotations

import os

from lightning_edge.runtime.compiler.graph import CompileError, GraphCompiler
from lightning_edge.runtime.edge_format import write_edge
from lightning_edge.runtime.plan import Plan
from lightning_edge.runtime.selection import first_candidates, select_primitives

# The op families register their rules on import.
from lightning_edge.runtime.compiler import conv, elementwise, float_region, movement, pooling  # noqa: E402,F401  isort: skip

__all__ = ["CompileError", "compile"]


PRECISIONS = ("fp32", "bf16", "fp16")


def compile(onnx_path: str | os.PathLike, edge_path: str | os.PathLike, *, select: bool = True,
            tune_batch: int = 1, threads: int | None = None, input_shape: tuple[int, int, int] | None = None,
            precision: str = "fp32") -> Plan:
    """Compile ``onnx_path`` into ``edge_path`` (written atomically); returns the plan.

    ``precision`` is the arithmetic of the float convs (a whole FP32 file's, and a QDQ file's float regions):
    ``"fp32"`` (float32, rule 17), ``"bf16"`` (bfloat16 inputs and weights, float32 accumulation, rule 20;
    vdpbf16ps where the CPU has AVX512_BF16, the same bits in float32 elsewhere) or ``"fp16"`` (half-precision
    inputs, weights and accumulation, rule 21; NEON's half arithmetic on aarch64 CPUs that have it, the same bits
    emulated elsewhere). Integer ops are unchanged.

    ``select`` times each layer's candidate kernels on its real shape at batch ``tune_batch`` with
    ``threads`` (default: all cores) and keeps the fastest; without it the first candidate is used.
    ``input_shape`` (C, H, W) fixes the input of a file exported with dynamic sizes (the plan is for that shape).
    """
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    path = os.fspath(onnx_path)
    try:
        model = onnx.load(path)
    except Exception as error:  # protobuf raises several types for damaged files
        raise CompileError(None, f"{path} is not a readable ONNX file ({error})") from error
    plan, arrays = GraphCompiler(model, os.path.basename(path), input_shape, precision).build()
    if select:
        select_primitives(plan, arrays, batch=tune_batch, threads=threads)
    else:
        first_candidates(plan)
    write_edge(edge_path, plan.to_dict(), arrays)
    return plan
