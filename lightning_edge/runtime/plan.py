"""The runtime's plan: what a .edge file asks the engine to run, one typed record per op kind.

The compiler builds a :class:`Plan`; a .edge file stores it as JSON (:meth:`Plan.to_dict`); the loader
rebuilds and checks it (:meth:`Plan.from_dict`) before the engine sees it; ``lightning-edge inspect`` and
the reports read its attributes. Each op kind is one dataclass registered in :data:`OP_KINDS` under the
``kind`` string the engine's registry knows it by, with its fields, their types and what they must satisfy.
Adding an op kind means adding its dataclass here (and its compiler rule, reference, kernel and test).

The checks here are the first line: a damaged or hostile plan stops as a :class:`PlanError` naming the op
and field. The engine checks again, in C++, everything it indexes with.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

PLAN_FORMAT = "lightning-edge int8 plan"
PLAN_VERSION = 1
MAX_DIMENSION = 1 << 24


class PlanError(ValueError):
    """A plan (from a file or a compiler) that is not well formed; names the op and field."""


@dataclass(frozen=True)
class Grid:
    """A uint8 tensor's quantization grid: ``real = scale * (code - zero)``, codes clamped to [low, high]."""

    scale: float
    zero: int
    low: int
    high: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PlanError(f"grid scale {self.scale!r} is not positive and finite")
        if not (0 <= self.low <= self.high <= 255 and 0 <= self.zero <= 255):
            raise PlanError(f"grid zero {self.zero}, low {self.low}, high {self.high} are outside uint8")


TENSOR_BYTES = {"u8": 1, "f32": 4, "bf16": 2}  # bytes per element of each tensor dtype


@dataclass
class TensorRecord:
    """One tensor of the plan: its ONNX name, elements per sample and shape (batch left out).

    ``u8`` tensors hold codes, (C, H, W) stored NHWC or (F,); ``f32`` tensors (float regions) hold float32 values
    of any shape, stored in ONNX (row-major, NCHW) order; ``bf16`` tensors the same values as bfloat16 bits, for
    a bf16_conv's result that only bf16_convs read as their input (they round it to bfloat16 anyway), in channel
    pairs: (C / 2, H, W) 32-bit words, channel 2i in the low half (the bf16 GEMM's operand form)."""

    name: str
    size: int
    shape: list[int]
    folded: bool = False  # a conv output never written: its add was folded into the conv's epilogue
    dtype: str = "u8"

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_BYTES:
            raise PlanError(f"tensor {self.name!r} has dtype {self.dtype!r}, not one of {', '.join(map(repr, TENSOR_BYTES))}")

    @property
    def bytes_per_sample(self) -> int:
        return self.size * TENSOR_BYTES[self.dtype]


OP_KINDS: dict[str, type[Op]] = {}


def op_kind(cls: type[Op]) -> type[Op]:
    """Register an op dataclass under its ``KIND``."""
    OP_KINDS[cls.KIND] = cls
    return cls


@dataclass(kw_only=True)
class Op:
    """Fields every op has: a unique id, the ONNX nodes it computes and what they are, in ONNX op types."""

    KIND: ClassVar[str] = ""
    INPUTS: ClassVar[tuple[str, ...]] = ("input",)   # fields holding the tensor indices the op reads
    OUTPUT: ClassVar[str | None] = "output"          # the field holding the tensor index it writes
    ARRAYS: ClassVar[tuple[str, ...]] = ()           # fields naming arrays of the file
    POSITIVE: ClassVar[tuple[str, ...]] = ()         # integer fields that must be positive dimensions

    id: str
    nodes: list[str] = field(default_factory=list)
    fuses: str = ""

    @property
    def kind(self) -> str:
        return self.KIND

    def reads(self) -> list[int]:
        indices = []
        for name in self.INPUTS:
            value = getattr(self, name)
            indices += value if isinstance(value, list) else [] if value is None else [value]
        return indices

    def writes(self) -> int | None:
        return getattr(self, self.OUTPUT) if self.OUTPUT else None

    def arrays(self) -> dict[str, str]:
        """The file arrays the op reads, by field (``field[i]`` for a list of them)."""
        named = {}
        for name in self.ARRAYS:
            value = getattr(self, name)
            if isinstance(value, list):
                named.update({f"{name}[{i}]": item for i, item in enumerate(value) if item is not None})
            elif value is not None:
                named[name] = value
        return named

    def to_dict(self) -> dict[str, Any]:
        """The op as the plan's JSON and the engine read it: its fields, ``kind``, and no unset optional ones."""
        data = {"kind": self.KIND}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                data[item.name] = asdict(value) if isinstance(value, Grid) else value
        return data

    def validate(self, tensor_count: int) -> None:
        """Tensor indices inside the plan and dimensions positive; kinds add their own rules."""
        for index in [*self.reads(), *([self.writes()] if self.writes() is not None else [])]:
            if not 0 <= index < tensor_count:
                raise PlanError(f"op {self.id}: tensor {index} is not one of the plan's {tensor_count} tensors")
        for name in self.POSITIVE:
            if not 0 < getattr(self, name) <= MAX_DIMENSION:
                raise PlanError(f"op {self.id}: {name}={getattr(self, name)} is not a positive dimension")


@dataclass(kw_only=True)
class WindowFields:
    """A sliding window: kernel, stride and the top/left padding (bottom/right follow from the output size)."""

    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0

    def check_window(self, op_id: str) -> None:
        if min(self.kernel_h, self.kernel_w, self.stride_h, self.stride_w) <= 0:
            raise PlanError(f"op {op_id}: kernel and stride must be positive")
        if not (0 <= self.pad_top < self.kernel_h and 0 <= self.pad_left < self.kernel_w):
            raise PlanError(f"op {op_id}: padding ({self.pad_top}, {self.pad_left}) must be smaller than the kernel")


@dataclass(kw_only=True)
class ImageFields:
    """An image's size per sample: codes stored (H, W, C), float32 (C, H, W); a vector is (F, 1, 1)."""

    channels: int
    height: int
    width: int


@op_kind
@dataclass(kw_only=True)
class QuantizeOp(ImageFields, Op):
    """float32 NCHW input number ``index`` -> uint8 NHWC codes on ``grid``: ``clamp(round_half_even(x / s) + z)``."""

    KIND = "quantize"
    INPUTS = ()
    POSITIVE = ("channels", "height", "width")
    output: int
    grid: Grid
    index: int = 0                      # which of the plan's inputs (graph input order)


@op_kind
@dataclass(kw_only=True)
class DequantizeOp(ImageFields, Op):
    """uint8 NHWC codes on ``grid`` -> the float32 NCHW output number ``index``: ``float32(q - z) * s``."""

    KIND = "dequantize"
    OUTPUT = None
    POSITIVE = ("channels", "height", "width")
    input: int
    grid: Grid
    index: int = 0                      # which of the plan's outputs (graph output order)


@op_kind
@dataclass(kw_only=True)
class ConvOp(WindowFields, Op):
    """Convolution or linear layer (a 1x1 conv over a 1x1 image) with bias, requantization and the fused
    activation's bounds, optionally followed by a residual add folded into its epilogue (``skip``).

    ``primitive`` is the algorithm selection picked (``gemm_b16``, ``winograd_b8``, ...); ``candidates`` and
    their ``timings_us`` are what it chose among."""

    KIND = "conv"
    INPUTS = ("input", "skip")
    ARRAYS = ("weights", "bias", "multiplier")
    POSITIVE = ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "groups")
    input: int
    output: int
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    groups: int = 1
    input_grid: Grid
    output_grid: Grid
    weights: str                        # int8 (out_c, kernel_h * kernel_w * in_c / groups), NHWC window order
    bias: str                           # int32 (out_c,) on the accumulator's grid
    multiplier: str                     # float32 (out_c,): float32(s_x * s_w[c]) / s_y
    macs: int = 0
    primitive: str | None = None
    block: int | None = None            # output channels per packed block
    groups_run: int | None = None       # groups the GEMM runs: 1 where a grouped conv runs block-diagonally
    algorithm: str | None = None        # "winograd" for Winograd F(2x2, 3x3); "sparse": only nonzero steps
    candidates: list[dict[str, Any]] | None = None
    timings_us: dict[str, float] | None = None
    wide_bias: bool = False             # acc + bias may leave int32: the scalar kernels add the bias in int64
    skip: int | None = None             # the residual operand of a folded add
    skip_grid: Grid | None = None
    sum_grid: Grid | None = None        # the folded add's output grid

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        self.check_window(self.id)
        if self.in_c % self.groups or self.out_c % self.groups:
            raise PlanError(f"op {self.id}: {self.in_c} -> {self.out_c} channels do not divide into {self.groups} groups")
        if (self.skip is None) != (self.sum_grid is None) or (self.skip is None) != (self.skip_grid is None):
            raise PlanError(f"op {self.id}: a folded add needs skip, skip_grid and sum_grid together")
        if self.block is not None and self.block not in (8, 16, 32):
            raise PlanError(f"op {self.id}: block={self.block} is not 8, 16 or 32")


@op_kind
@dataclass(kw_only=True)
class DepthwiseOp(ConvOp):
    """A depthwise conv (one filter per channel, ``channels`` = in_c = out_c = groups) run by its own kernel."""

    KIND = "depthwise"
    POSITIVE = ConvOp.POSITIVE + ("channels",)
    channels: int

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if not self.channels == self.in_c == self.out_c == self.groups:
            raise PlanError(f"op {self.id}: a depthwise conv has channels = in_c = out_c = groups")
        if self.skip is not None:
            raise PlanError(f"op {self.id}: the depthwise kernel has no folded add (skip)")


@op_kind
@dataclass(kw_only=True)
class AddOp(Op):
    """Elementwise add of two tensors of one shape: both dequantized in float32, added, requantized."""

    KIND = "add"
    INPUTS = ("input", "skip")
    POSITIVE = ("size",)
    input: int
    skip: int
    output: int
    size: int
    input_grid: Grid
    skip_grid: Grid
    output_grid: Grid


@op_kind
@dataclass(kw_only=True)
class AveragePoolOp(ImageFields, Op):
    """Global average pooling: the exact sum of ``q - z`` over the plane times ``multiplier``, requantized."""

    KIND = "average_pool"
    POSITIVE = ("channels", "height", "width")
    input: int
    output: int
    multiplier: float                   # float32(s_x) / (float32(s_y) * float32(height * width))
    input_grid: Grid
    output_grid: Grid


@op_kind
@dataclass(kw_only=True)
class MaxPoolOp(WindowFields, ImageFields, Op):
    """Max pooling on codes (exact; the output keeps the input's grid)."""

    KIND = "max_pool"
    POSITIVE = ("channels", "height", "width", "out_h", "out_w")
    input: int
    output: int
    out_h: int
    out_w: int

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        self.check_window(self.id)


@op_kind
@dataclass(kw_only=True)
class TableOp(Op):
    """A unary function on codes as a lookup table: ``out[i] = tables[c][in[i]]`` (INT8_SPEC: dequantize, the float
    op, requantize, evaluated once per code at compile time); one table, or one per channel (``c`` the NHWC
    channel) where the function has per-channel constants (PRelu, BatchNormalization, ...)."""

    KIND = "table"
    ARRAYS = ("tables",)
    POSITIVE = ("channels", "size", "table_count")
    input: int
    output: int
    channels: int
    size: int                           # elements per sample
    table_count: int                    # 1 or channels
    tables: str                         # uint8 (table_count, 256)
    input_grid: Grid
    output_grid: Grid

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if self.table_count not in (1, self.channels) or self.size % self.channels:
            raise PlanError(f"op {self.id}: {self.table_count} tables for {self.channels} channels of {self.size} elements")


@op_kind
@dataclass(kw_only=True)
class BinaryOp(Op):
    """``out = Q(operation(a, b))`` with numpy broadcasting over NHWC (height, width, channels): each operand's
    codes become float32 through its table (``DQ`` or a unary float function of it, one table or one per
    channel), the operation runs in float32, the result is quantized onto ``output_grid``."""

    KIND = "binary"
    INPUTS = ("input", "other")
    ARRAYS = ("input_table", "other_table")
    POSITIVE = ("height", "width", "channels")
    OPERATIONS: ClassVar[tuple[str, ...]] = ("add", "sub", "mul", "div")
    operation: str
    input: int
    other: int
    output: int
    height: int
    width: int
    channels: int
    input_shape: list[int]              # (height, width, channels), each the output's or 1
    other_shape: list[int]
    input_table: str                    # float32 (input_table_count, 256)
    other_table: str
    input_table_count: int              # 1, or the operand's channels (a per-channel function of it)
    other_table_count: int
    output_grid: Grid

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if self.operation not in self.OPERATIONS:
            raise PlanError(f"op {self.id}: operation {self.operation!r} is not one of {self.OPERATIONS}")
        out = [self.height, self.width, self.channels]
        for name in ("input_shape", "other_shape"):
            shape = getattr(self, name)
            if len(shape) != 3 or any(d not in (1, o) for d, o in zip(shape, out)):
                raise PlanError(f"op {self.id}: {name} {shape} does not broadcast to {out}")


@op_kind
@dataclass(kw_only=True)
class ConcatOp(Op):
    """Channel concatenation of NHWC tensors with the same pixels; an input on another grid than the output's
    is requantized through its table (``tables[i]``), else its codes are copied."""

    KIND = "concat"
    INPUTS = ("inputs",)
    ARRAYS = ("tables",)
    POSITIVE = ("pixels", "channels")
    inputs: list[int]
    input_channels: list[int]
    tables: list[str | None]            # uint8 (256,) requantization tables, None where the grid is the output's
    pixels: int
    channels: int
    output: int
    output_grid: Grid

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if not (len(self.inputs) == len(self.input_channels) == len(self.tables) >= 1):
            raise PlanError(f"op {self.id}: inputs, input_channels and tables differ in length")
        if any(c <= 0 for c in self.input_channels) or sum(self.input_channels) != self.channels:
            raise PlanError(f"op {self.id}: input channels {self.input_channels} do not add up to {self.channels}")


@op_kind
@dataclass(kw_only=True)
class GatherOp(Op):
    """Codes that only move (reshape, transpose, channel shuffle, slice, split, pad, nearest resize, any
    composition of them): output element j of each sample is element ``indices[j]`` of input ``sources[j]``
    (or the pad code ``pad`` where ``sources[j]`` is -1), requantized through ``tables[i]`` where input i is on
    another grid than the output. The compiler finds the map by running the ONNX ops on element indices."""

    KIND = "gather"
    INPUTS = ("inputs",)
    ARRAYS = ("indices", "sources", "tables")
    POSITIVE = ("size",)
    inputs: list[int]
    input_sizes: list[int]              # elements per sample of each input
    tables: list[str | None]            # uint8 (256,), None where the input's grid is the output's
    size: int                           # output elements per sample
    indices: str                        # int32 (size,): the element of its input each output element copies
    sources: str | None = None          # int32 (size,): which input (-1: the pad code); None: input 0 everywhere
    pad: int = 0
    output: int
    output_grid: Grid | None = None     # None for float32 elements
    element_bytes: int = 1              # 1: codes; 4: float32 values (a float region's moves)

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if self.element_bytes not in (1, 4) or self.element_bytes == 4 and any(self.tables):
            raise PlanError(f"op {self.id}: element_bytes {self.element_bytes} (4: float32, without tables)")
        if not (len(self.inputs) == len(self.input_sizes) == len(self.tables) >= 1) or min(self.input_sizes) <= 0:
            raise PlanError(f"op {self.id}: inputs, input_sizes and tables differ in length or are empty")
        if self.sources is None and len(self.inputs) != 1 or not 0 <= self.pad <= 255:
            raise PlanError(f"op {self.id}: several inputs need a sources array; the pad code must be uint8")


@op_kind
@dataclass(kw_only=True)
class WindowAveragePoolOp(WindowFields, ImageFields, Op):
    """Average pooling over windows: the exact sum of ``q - z`` over the window's elements inside the input,
    times ``float32(s_x) / (float32(s_y) * float32(count))``, requantized; ``count`` is the elements inside
    the input, or the whole window when ``count_include_pad`` (padding counts as real 0)."""

    KIND = "window_average_pool"
    POSITIVE = ("channels", "height", "width", "out_h", "out_w")
    input: int
    output: int
    out_h: int
    out_w: int
    pad_bottom: int = 0                 # explicit padding (a ceil_mode overhang is not padding)
    pad_right: int = 0
    count_include_pad: bool = False
    input_grid: Grid
    output_grid: Grid

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        self.check_window(self.id)


# ------------------------------------------------------------------------------------------- float regions
@op_kind
@dataclass(kw_only=True)
class ToFloatOp(ImageFields, Op):
    """Codes into a float region: u8 (C, H, W) NHWC (or (F,)) -> f32 in ONNX order, ``float32(q - z) * s``."""

    KIND = "to_float"
    POSITIVE = ("channels", "height", "width")
    input: int
    output: int
    grid: Grid


@op_kind
@dataclass(kw_only=True)
class ToCodesOp(ImageFields, Op):
    """Out of a float region: f32 (C, H, W) in ONNX order -> u8 NHWC codes, ``clamp(round_half_even(x / s) + z)``."""

    KIND = "to_codes"
    POSITIVE = ("channels", "height", "width")
    input: int
    output: int
    grid: Grid


@op_kind
@dataclass(kw_only=True)
class FloatInputOp(ImageFields, Op):
    """The float32 NCHW input number ``index`` as an f32 tensor (a plain FP32 file, or a float region reading the
    input): a copy."""

    KIND = "float_input"
    INPUTS = ()
    POSITIVE = ("channels", "height", "width")
    output: int
    index: int = 0                      # which of the plan's inputs (graph input order)


@op_kind
@dataclass(kw_only=True)
class FloatOutputOp(ImageFields, Op):
    """An f32 tensor as the float32 output number ``index`` (a float region at the graph's end): a copy; (F, 1, 1)
    for a vector."""

    KIND = "float_output"
    OUTPUT = None
    POSITIVE = ("channels", "height", "width")
    input: int
    index: int = 0                      # which of the plan's outputs (graph output order)


@dataclass(kw_only=True)
class FloatWindowFields(WindowFields):
    """A float op's sliding window over an f32 (C, H, W) tensor: ``WindowFields`` plus dilation, each padding
    smaller than the dilated kernel (the C++ op indexes nothing outside the image either way)."""

    dilation_h: int = 1
    dilation_w: int = 1

    def check_float_window(self, op_id: str, *pads: int) -> None:
        values = (self.kernel_h, self.kernel_w, self.stride_h, self.stride_w, self.dilation_h, self.dilation_w)
        if not all(0 < v <= MAX_DIMENSION for v in values):
            raise PlanError(f"op {op_id}: kernel, stride and dilation must be positive dimensions")
        extent_h, extent_w = (self.kernel_h - 1) * self.dilation_h + 1, (self.kernel_w - 1) * self.dilation_w + 1
        for pad, extent in zip((self.pad_top, self.pad_left, *pads), (extent_h, extent_w, extent_h, extent_w)):
            if not 0 <= pad < extent:
                raise PlanError(f"op {op_id}: padding {pad} must be smaller than the dilated window ({extent})")


@op_kind
@dataclass(kw_only=True)
class FloatConvOp(FloatWindowFields, Op):
    """A float32 convolution (groups, depthwise, stride, padding, dilation, bias) of an f32 (in_c, in_h, in_w)
    tensor: float32 products summed in float64 with the bias, rounded once (INT8_SPEC rule 17)."""

    KIND = "float_conv"
    ARRAYS = ("weights", "bias")
    POSITIVE = ("in_c", "in_h", "in_w", "out_c", "out_h", "out_w", "groups")
    input: int
    output: int
    in_c: int
    in_h: int
    in_w: int
    out_c: int
    out_h: int
    out_w: int
    groups: int = 1
    weights: str                        # float32 (out_c, in_c / groups, kernel_h, kernel_w), ONNX's layout
    bias: str | None = None             # float32 (out_c,)
    macs: int = 0

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        self.check_float_window(self.id)
        if self.in_c % self.groups or self.out_c % self.groups:
            raise PlanError(f"op {self.id}: {self.in_c} -> {self.out_c} channels do not divide into {self.groups} groups")


@dataclass(kw_only=True)
class ReducedPrecisionConvOp(FloatConvOp):
    """``FloatConvOp``'s convolution in a reduced precision (``compile(..., precision="bf16" or "fp16")``): the
    weights stored as float32 values the precision holds exactly. An Add of another float tensor and a Relu or
    Clip that alone read the conv's result are fused into it (``skip``, then ``low``, ``high``; NaN passes
    through): the same float32 steps, in the same order."""

    INPUTS = ("input", "skip")
    skip: int | None = None             # a residual Add after the conv, fused: y + skip (same shape), before the clamp
    low: float | None = None            # a Relu or Clip after the conv, fused: max(y, low) then min(y, high)
    high: float | None = None

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if self.low is not None and self.high is not None and not self.low <= self.high:
            raise PlanError(f"op {self.id}: the clamp's low bound {self.low} is above its high bound {self.high}")


@op_kind
@dataclass(kw_only=True)
class Bf16ConvOp(ReducedPrecisionConvOp):
    """Inputs and weights rounded to bfloat16, products added pairwise to a float32 accumulator in vdpbf16ps's
    order, then the bias (INT8_SPEC rule 20); the loader packs the weights into pairs."""

    KIND = "bf16_conv"


@op_kind
@dataclass(kw_only=True)
class Fp16ConvOp(ReducedPrecisionConvOp):
    """Inputs and weights rounded to IEEE half precision, accumulated in half precision one fused multiply-add at
    a time (NEON's vfma of halves), then the bias in float32 (INT8_SPEC rule 21)."""

    KIND = "fp16_conv"


@op_kind
@dataclass(kw_only=True)
class FloatPoolOp(FloatWindowFields, ImageFields, Op):
    """MaxPool or AveragePool of an f32 (C, H, W) tensor: the window maximum (padding never wins), or the float64
    sum over the window's elements inside the input divided by the count, rounded once; ``count`` is the elements
    inside the input, or with ``count_include_pad`` inside the input and its explicit padding (``pad_bottom``,
    ``pad_right``; a ceil_mode overhang is not padding)."""

    KIND = "float_pool"
    OPERATIONS: ClassVar[tuple[str, ...]] = ("max", "average")
    POSITIVE = ("channels", "height", "width", "out_h", "out_w")
    operation: str
    input: int
    output: int
    out_h: int
    out_w: int
    pad_bottom: int = 0
    pad_right: int = 0
    count_include_pad: bool = False

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        self.check_float_window(self.id, self.pad_bottom, self.pad_right)
        if self.operation not in self.OPERATIONS:
            raise PlanError(f"op {self.id}: operation {self.operation!r} is not one of {self.OPERATIONS}")


# Instructions of a float expression: (opcode, destination, a, b, c) registers, immediates (imm0, imm1).
FLOAT_OPCODES = ("input", "constant", "add", "sub", "mul", "div", "max", "min", "neg", "abs", "relu", "clip",
                 "leaky_relu", "prelu", "hard_sigmoid", "hard_swish", "sigmoid", "tanh", "exp", "log", "sqrt", "erf",
                 "pow", "softplus", "mish", "gelu", "reciprocal", "floor", "ceil")


@op_kind
@dataclass(kw_only=True)
class FloatExpressionOp(Op):
    """An elementwise float function of several tensors and constants with numpy broadcasting, evaluated per
    output element by a small register program (INT8_SPEC rule 10: one float32 operation per arithmetic step,
    transcendentals in float64 rounded once).

    Input i is read at ``sum(index[d] * strides_i[d])`` of its sample (0 along broadcast axes); a u8 input goes
    through its float32 dequantization table ``tables[i]``. Constants are read the same way, without a sample."""

    KIND = "float_expression"
    INPUTS = ("inputs",)
    ARRAYS = ("tables", "strides", "constants", "constant_strides", "program", "immediates")
    inputs: list[int]
    tables: list[str | None]            # float32 (256,) for a u8 input, None for an f32 one
    strides: list[str]                  # int32 (rank,) per input
    constants: list[str] = field(default_factory=list)        # float32 arrays
    constant_strides: list[str] = field(default_factory=list) # int32 (rank,) per constant
    shape: list[int]                    # the output's shape (batch left out), rank 1 to 6
    program: str                        # int32 (instructions, 5): FLOAT_OPCODES index, destination, a, b, c
    immediates: str                     # float32 (instructions, 2)
    registers: int
    result: int                         # the register holding the output
    output: int

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if not 1 <= len(self.shape) <= 6 or any(d <= 0 for d in self.shape):
            raise PlanError(f"op {self.id}: shape {self.shape} must have rank 1 to 6 and positive dimensions")
        if len(self.tables) != len(self.inputs) or len(self.strides) != len(self.inputs) \
                or len(self.constant_strides) != len(self.constants) or not 0 <= self.result < self.registers <= 256:
            raise PlanError(f"op {self.id}: inputs, tables, strides, constants or registers do not match")


@op_kind
@dataclass(kw_only=True)
class FloatMatMulOp(Op):
    """``out[b] = a[b] @ b[b]`` on float32 operands, products and sums in float64, rounded once; an operand is a
    tensor (per sample) or a constant array; ``*_batch_stride`` is 0 where it broadcasts over the ``batch``
    leading matrices."""

    KIND = "float_matmul"
    INPUTS = ("a", "b")
    ARRAYS = ("a_constant", "b_constant")
    POSITIVE = ("batch", "m", "k", "n")
    a: int | None = None
    b: int | None = None
    a_constant: str | None = None
    b_constant: str | None = None
    batch: int
    m: int
    k: int
    n: int
    a_batch_stride: int
    b_batch_stride: int
    output: int

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if (self.a is None) == (self.a_constant is None) or (self.b is None) == (self.b_constant is None):
            raise PlanError(f"op {self.id}: each operand is a tensor or a constant")


@op_kind
@dataclass(kw_only=True)
class FloatSoftmaxOp(Op):
    """Softmax (or LogSoftmax) over the middle axis of (outer, axis, inner), in float64, rounded once."""

    KIND = "float_softmax"
    POSITIVE = ("outer", "axis", "inner")
    input: int
    output: int
    outer: int
    axis: int
    inner: int
    log: bool = False


@op_kind
@dataclass(kw_only=True)
class FloatLayerNormOp(Op):
    """LayerNormalization over the last ``inner`` elements of each of ``outer`` rows, in float64, rounded once."""

    KIND = "float_layer_norm"
    ARRAYS = ("scale", "bias")
    POSITIVE = ("outer", "inner")
    input: int
    output: int
    outer: int
    inner: int
    epsilon: float
    scale: str                          # float32 (inner,)
    bias: str | None = None


@op_kind
@dataclass(kw_only=True)
class FloatReduceOp(Op):
    """ReduceMean/Sum/Max/Min over ``axes`` of a tensor of ``shape``; sums in float64, rounded once."""

    KIND = "float_reduce"
    OPERATIONS: ClassVar[tuple[str, ...]] = ("mean", "sum", "max", "min")
    input: int
    output: int
    operation: str
    shape: list[int]
    axes: list[int]

    def validate(self, tensor_count: int) -> None:
        super().validate(tensor_count)
        if self.operation not in self.OPERATIONS or not 1 <= len(self.shape) <= 6 \
                or not all(0 <= a < len(self.shape) for a in self.axes):
            raise PlanError(f"op {self.id}: a {self.operation!r} reduction over {self.axes} of {self.shape}")


INPUT_KINDS = ("quantize", "float_input")      # the ops that read the plan's inputs, first in the plan
OUTPUT_KINDS = ("dequantize", "float_output")  # the ops that write the plan's outputs, last in the plan


@dataclass
class Plan:
    """A compiled network: its tensors and ops in execution order, the input and output shapes, and how
    primitive selection timed the kernels (``selection``).

    ``inputs`` and ``outputs`` name every input and output and its shape per sample, in graph order (each read or
    written by the input or output op of that ``index``); ``input_shape`` and ``output_shape`` are the first ones'."""

    source: str
    input_shape: list[int]
    output_shape: list[int]
    tensors: list[TensorRecord]
    ops: list[Op]
    selection: dict[str, Any] | None = None
    format: str = PLAN_FORMAT
    version: int = PLAN_VERSION
    outputs: list[dict[str, Any]] = field(default_factory=list)  # [{"name": str, "shape": [int, ...]}, ...]
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.outputs:
            self.outputs = [{"name": "output", "shape": list(self.output_shape)}]
        if not self.inputs:
            self.inputs = [{"name": "input", "shape": list(self.input_shape)}]

    @property
    def input_names(self) -> list[str]:
        return [entry["name"] for entry in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [entry["name"] for entry in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        data = {"format": self.format, "version": self.version, "source": self.source,
                "input": {"shape": list(self.input_shape)}, "output": {"shape": list(self.output_shape)},
                "inputs": [{"name": entry["name"], "shape": list(entry["shape"])} for entry in self.inputs],
                "outputs": [{"name": entry["name"], "shape": list(entry["shape"])} for entry in self.outputs],
                "tensors": [{k: v for k, v in asdict(t).items() if k != "folded" or v} for t in self.tensors],
                "ops": [op.to_dict() for op in self.ops]}
        if self.selection is not None:
            data["selection"] = self.selection
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """The plan of a file's JSON, every field's type and every op's own rules checked (:class:`PlanError`)."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError("it does not hold a lightning-edge plan")
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {data.get('version')} is not {PLAN_VERSION}, the one this runtime reads; "
                            "compile the ONNX file again with `lightning-edge compile`")
        tensors = [_build(TensorRecord, record, f"tensor {index}") for index, record in enumerate(_list(data, "tensors"))]
        ops = []
        for index, record in enumerate(_list(data, "ops")):
            kind = record.get("kind") if isinstance(record, dict) else record
            if not isinstance(kind, str) or kind not in OP_KINDS:
                raise PlanError(f"op {index} has unknown kind {kind!r} (this runtime runs {', '.join(OP_KINDS)})")
            op = _build(OP_KINDS[record["kind"]], {k: v for k, v in record.items() if k != "kind"}, f"op {index}")
            op.validate(len(tensors))
            ops.append(op)
        shapes = {}
        for key in ("input", "output"):
            entry = data.get(key)
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if not isinstance(shape, list) or not all(_is_int(d) and 0 < d <= MAX_DIMENSION for d in shape):
                raise PlanError(f"the plan's {key} shape {shape!r} is not a list of positive dimensions")
            shapes[key] = shape
        inputs, outputs = _boundary(data, "inputs", shapes["input"]), _boundary(data, "outputs", shapes["output"])
        _check_bf16_tensors(tensors, ops)
        indices = sorted(op.index for op in ops if op.KIND in INPUT_KINDS)
        if indices != list(range(len(inputs))):
            raise PlanError(f"the plan's input ops read inputs {indices}, not each of its {len(inputs)} inputs once")
        indices = sorted(op.index for op in ops if op.KIND in OUTPUT_KINDS)
        if indices != list(range(len(outputs))):
            raise PlanError(f"the plan's output ops write outputs {indices}, not each of its {len(outputs)} outputs once")
        selection = data.get("selection")
        if selection is not None and not isinstance(selection, dict):
            raise PlanError("the plan's selection record is not an object")
        source = data.get("source", "?")
        return cls(source=source if isinstance(source, str) else "?", input_shape=shapes["input"],
                   output_shape=shapes["output"], tensors=tensors, ops=ops, selection=selection, outputs=outputs,
                   inputs=inputs)

    def op_ids(self) -> list[str]:
        return [op.id for op in self.ops]


# ------------------------------------------------------------------------------------------- field checks
def _list(data: dict, key: str) -> list:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise PlanError(f"the plan's {key!r} is not a non-empty list")
    return value


def _boundary(data: dict, key: str, first_shape: list[int]) -> list[dict[str, Any]]:
    """The plan's ``inputs`` or ``outputs`` list (names and shapes), checked; a plan without one has its single
    ``input`` or ``output``."""
    entries = data.get(key, [{"name": key[:-1], "shape": first_shape}])
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"the plan's {key!r} is not a non-empty list")
    outputs = []
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(shape, list) \
                or not all(_is_int(d) and 0 < d <= MAX_DIMENSION for d in shape):
            raise PlanError(f"the plan's {key[:-1]} {index} is not a name and a list of positive dimensions")
        outputs.append({"name": name, "shape": shape})
    return outputs


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _build(cls: type, record: Any, where: str) -> Any:
    """``cls(**record)`` with every field present and of its annotated type."""
    if not isinstance(record, dict):
        raise PlanError(f"{where} is not an object")
    hints = _hints(cls)
    known = {item.name: item for item in fields(cls)}
    unknown = set(record) - set(known)
    if unknown:
        raise PlanError(f"{where} has unknown fields {sorted(unknown)}")
    values = {}
    for name, item in known.items():
        if name not in record:
            if item.default is MISSING and item.default_factory is MISSING:
                raise PlanError(f"{where} is missing {name!r}")
            continue
        values[name] = _typed(record[name], hints[name], f"{where}: {name}")
    try:
        return cls(**values)
    except PlanError as error:
        raise PlanError(f"{where}: {error}") from None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (int, float, str, bool, Grid, list/dict of them, Optional)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        (inner,) = [a for a in arguments if a is not type(None)]
        return _typed(value, inner, where)
    if hint is int:
        if not _is_int(value) or abs(value) > 1 << 62:
            raise PlanError(f"{where}={value!r} is not an integer")
        return value
    if hint is float:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise PlanError(f"{where}={value!r} is not a finite number")
        return float(value)
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise PlanError(f"{where}={value!r} is not a {hint.__name__}")
        return value
    if hint is Grid:
        return _build(Grid, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise PlanError(f"{where} is not a list")
        return [_typed(item, arguments[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise PlanError(f"{where} is not an object")
        return {key: _typed(item, arguments[1], f"{where}.{key}") for key, item in value.items()}
    if hint is Any:
        return value
    raise TypeError(f"plan field {where} has an annotation the checker does not know: {hint!r}")


def bf16_pairs_fit(writer: Op, readers: list[Op]) -> bool:
    """Whether bf16_conv ``writer``'s result can be stored in the channel-pairs layout for its ``readers``
    (bf16_convs): an even channel count, and no pair split between two groups of a grouped conv. A depthwise conv
    reads and writes one channel at a time, so any count of its channels per group will do."""
    def whole_pairs(op: Op, per_group: int) -> bool:
        return op.groups == 1 or per_group % 2 == 0 or op.in_c == op.groups

    return writer.out_c % 2 == 0 and whole_pairs(writer, writer.out_c // writer.groups) and all(
        whole_pairs(reader, reader.in_c // reader.groups) for reader in readers)


def _check_bf16_tensors(tensors: list[TensorRecord], ops: list[Op]) -> None:
    """A ``bf16`` tensor is written by a bf16_conv and read only as a bf16_conv's ``input``: no other op reads
    bfloat16 bits; its channels fit the channel-pairs layout (``bf16_pairs_fit``)."""
    writers = {op.writes(): op for op in ops}
    for index, tensor in enumerate(tensors):
        if tensor.dtype == "bf16" and isinstance(writers.get(index), Bf16ConvOp):
            readers = [op for op in ops if isinstance(op, Bf16ConvOp) and op.input == index]
            if not bf16_pairs_fit(writers[index], readers):
                raise PlanError(f"tensor {tensor.name!r} is stored as bfloat16 channel pairs, but its channels or a "
                                "reader's groups split a pair; compile the ONNX file again")
    for op in ops:
        for index in op.reads():
            if 0 <= index < len(tensors) and tensors[index].dtype == "bf16" and (
                    op.KIND != Bf16ConvOp.KIND or index != op.input or index == op.skip):
                raise PlanError(f"op {op.id} ({op.KIND}) reads tensor {tensors[index].name!r}, stored as bfloat16: only a "
                                "bf16_conv's input may be; compile the ONNX file again")
        written = op.writes()
        if written is not None and 0 <= written < len(tensors) and tensors[written].dtype == "bf16" and op.KIND != Bf16ConvOp.KIND:
            raise PlanError(f"op {op.id} ({op.KIND}) writes tensor {tensors[written].name!r}, stored as bfloat16: only a "
                            "bf16_conv may; compile the ONNX file again")
