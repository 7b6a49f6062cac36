"""The engine's float-region ops (to_float, to_codes, float_expression, float_matmul, float_softmax,
float_layer_norm, float_reduce, float32 gathers) on hand-built plans, on every kernel path this CPU has:
every f32 tensor equals reference.py's FLOAT_OPS function on the same float32 data, bit for bit (signed zeros
and NaNs included), and a bad record is refused with a message naming what is wrong."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from lightning_edge.runtime import available_kernels
from lightning_edge.runtime.edge_format import EdgeFormatError
from lightning_edge.runtime.plan import (FLOAT_OPCODES, DequantizeOp, FloatExpressionOp, FloatLayerNormOp,
                                         FloatMatMulOp, FloatReduceOp, FloatSoftmaxOp, GatherOp, Grid, Plan,
                                         QuantizeOp, TensorRecord, ToCodesOp, ToFloatOp)
from lightning_edge.runtime.reference import FLOAT_OPS, quantize
from lightning_edge.runtime.session import Session

KERNELS = available_kernels()
GRID = Grid(0.05, 128, 0, 255)          # the plan input's codes: reals in [-6.4, 6.35]
OUT_GRID = Grid(0.1, 100, 0, 255)
EDGES = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0e38, -3.0e38, 1.0e-38, 88.0, -104.0, 1.0e6,
                  np.inf, -np.inf, np.nan, 7.0], dtype=np.float32)


def node(op_type: str, outputs: int = 1) -> SimpleNamespace:
    return SimpleNamespace(op_type=op_type, name=op_type, output=[f"y{i}" for i in range(outputs)])


def reference(op_type: str, inputs: list, outputs: int = 1, **attributes) -> np.ndarray:
    return np.asarray(FLOAT_OPS[op_type](node(op_type, outputs), inputs, attributes))


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal float32 bit patterns (every NaN counts as one)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32).reshape(got.shape)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{what}: {(~same).sum()} differ, e.g. got {got[~same][:4]}, want {want[~same][:4]}"


class PlanBuilder:
    """quantize -> to_float -> (the ops under test) -> to_codes -> dequantize, over an input of ``shape``."""

    def __init__(self, shape=(2, 3, 4)):
        self.shape, self.arrays, self.ops = tuple(shape), {}, []
        self.tensors = [TensorRecord("in", math.prod(shape), list(shape))]
        channels, height, width = shape
        self.ops.append(QuantizeOp(id="q", output=0, grid=GRID, channels=channels, height=height, width=width))
        self.x = self.tensor("x", shape)
        self.ops.append(ToFloatOp(id="f", input=0, output=self.x, grid=GRID, channels=channels, height=height, width=width))

    def tensor(self, name: str, shape, dtype: str = "f32") -> int:
        self.tensors.append(TensorRecord(name, math.prod(shape), list(shape), dtype=dtype))
        return len(self.tensors) - 1

    def array(self, name: str, value: np.ndarray) -> str:
        self.arrays[name] = np.ascontiguousarray(value)
        return name

    def expression(self, name: str, shape, inputs, program, registers=None, constants=(), tables=None) -> int:
        """A float_expression: ``inputs`` and ``constants`` are (tensor or array, strides) pairs; ``program``
        rows are (opcode name, destination, a, b, imm0, imm1)."""
        out = self.tensor(name, shape)
        words = np.array([[FLOAT_OPCODES.index(p[0]), p[1], p[2], p[3], 0] for p in program], np.int32)
        immediates = np.array([[p[4], p[5]] for p in program], np.float32)
        self.ops.append(FloatExpressionOp(
            id=name, inputs=[i for i, _ in inputs], tables=tables or [None] * len(inputs),
            strides=[self.array(f"{name}.s{k}", np.array(s, np.int32)) for k, (_, s) in enumerate(inputs)],
            constants=[self.array(f"{name}.c{k}", np.asarray(c, np.float32)) for k, (c, _) in enumerate(constants)],
            constant_strides=[self.array(f"{name}.cs{k}", np.array(s, np.int32)) for k, (_, s) in enumerate(constants)],
            shape=list(shape), program=self.array(f"{name}.program", words),
            immediates=self.array(f"{name}.immediates", immediates),
            registers=registers or max(p[1] for p in program) + 1, result=program[-1][1], output=out))
        return out

    def edged(self, name: str = "v") -> int:
        """x plus a constant of EDGES (tiled): every sample sees the edge values, shifted by its own x."""
        constant = np.resize(EDGES, self.shape)
        strides = row_major(self.shape)
        return self.expression(name, self.shape, [(self.x, strides)], [("input", 0, 0, 0, 0, 0),
                               ("constant", 1, 0, 0, 0, 0), ("add", 0, 0, 1, 0, 0)], constants=[(constant, strides)])

    def plan(self, last: int) -> Plan:
        size = self.tensors[last].size
        codes = self.tensor("codes", [size, 1, 1], dtype="u8")
        self.ops += [ToCodesOp(id="c", input=last, output=codes, grid=OUT_GRID, channels=size, height=1, width=1),
                     DequantizeOp(id="d", input=codes, grid=OUT_GRID, channels=size, height=1, width=1)]
        return Plan(source="test", input_shape=list(self.shape), output_shape=[size], tensors=self.tensors, ops=self.ops)

    def traces(self, last: int, batch: int = 3):
        """(input, {tensor name: f32 values}) on every kernel path; the f32 tensors of every path must agree."""
        plan = self.plan(last)
        x = np.random.default_rng(0).standard_normal((batch, *self.shape)).astype(np.float32) * 3
        for kernels in KERNELS:
            _, tensors = Session(plan, self.arrays, threads=2, kernels=kernels).trace(x)
            yield kernels, tensors


def row_major(shape) -> list[int]:
    return [int(math.prod(shape[d + 1:])) for d in range(len(shape))]


def dequantized(x: np.ndarray) -> np.ndarray:
    return ((quantize(x, np.float32(GRID.scale), GRID.zero, 0, 255) - GRID.zero).astype(np.float32)
            * np.float32(GRID.scale))


def edged_values(tensors) -> np.ndarray:
    return tensors["x"] + np.resize(EDGES, tensors["x"].shape[1:])


def test_to_float_and_to_codes_are_the_plan_ends_inside_it():
    """Codes of values whose x / scale is infinite are left out: numpy's int64 conversion of an infinity is
    undefined (0 here), the engine clamps +inf to the grid's top, as its quantize op does."""
    b = PlanBuilder((3, 2, 5))
    for kernels, tensors in b.traces(b.edged()):
        assert_same(tensors["x"], dequantized(np.asarray(tensors["x"])), kernels)
        values = tensors["v"].reshape(len(tensors["v"]), -1)
        want = quantize(values, np.float32(OUT_GRID.scale), OUT_GRID.zero, 0, 255)
        finite = np.isfinite(values / np.float32(OUT_GRID.scale)) | np.isnan(values)
        assert np.array_equal(tensors["codes"].reshape(want.shape)[finite], want[finite]), kernels


UNARY = {  # opcode: (its reference, immediates)
    "neg": (lambda v: reference("Neg", [v]), (0, 0)), "abs": (lambda v: reference("Abs", [v]), (0, 0)),
    "relu": (lambda v: reference("Relu", [v]), (0, 0)), "floor": (lambda v: reference("Floor", [v]), (0, 0)),
    "ceil": (lambda v: reference("Ceil", [v]), (0, 0)), "reciprocal": (lambda v: reference("Reciprocal", [v]), (0, 0)),
    "clip": (lambda v: reference("Clip", [v, np.float32(-1.5), np.float32(2.0)]), (-1.5, 2.0)),
    "leaky_relu": (lambda v: reference("LeakyRelu", [v], alpha=0.1), (np.float32(0.1), 0)),
    "hard_sigmoid": (lambda v: reference("HardSigmoid", [v], alpha=0.3, beta=0.4), (np.float32(0.3), np.float32(0.4))),
    "hard_swish": (lambda v: reference("HardSwish", [v]), (np.float32(1 / 6), 0.5)),
    "gelu": (lambda v: reference("Gelu", [v]), (0, 0)),
    **{name: (lambda v, op=op: reference(op, [v]), (0, 0)) for name, op in
       [("sigmoid", "Sigmoid"), ("tanh", "Tanh"), ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"), ("erf", "Erf"),
        ("softplus", "Softplus"), ("mish", "Mish")]},
}


@pytest.mark.parametrize("opcode", sorted(UNARY))
def test_unary_steps_match_the_reference(opcode):
    function, (imm0, imm1) = UNARY[opcode]
    b = PlanBuilder((4, 2, 6))
    v = b.edged()
    out = b.expression("y", b.shape, [(v, row_major(b.shape))], [("input", 0, 0, 0, 0, 0), (opcode, 0, 0, 0, imm0, imm1)])
    for kernels, tensors in b.traces(out):
        assert_same(tensors["y"], function(edged_values(tensors)), f"{kernels} {opcode}")


def test_gelu_tanh_approximation_clip_without_bounds():
    b = PlanBuilder((4, 2, 6))
    v = b.edged()
    strides = row_major(b.shape)
    gelu = b.expression("g", b.shape, [(v, strides)], [("input", 0, 0, 0, 0, 0), ("gelu", 0, 0, 0, 1, 0)])
    clip = b.expression("k", b.shape, [(gelu, strides)], [("input", 0, 0, 0, 0, 0), ("clip", 1, 0, 0, -np.inf, np.inf)])
    for kernels, tensors in b.traces(clip):
        values = edged_values(tensors)
        assert_same(tensors["g"], reference("Gelu", [values], approximate="tanh"), kernels)
        assert_same(tensors["k"], tensors["g"], kernels)


BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
          "prelu": "PRelu"}


@pytest.mark.parametrize("opcode", sorted(BINARY))
def test_binary_steps_broadcast_a_u8_input_and_a_constant(opcode):
    """x (2,3,4) with edges op (u8 input codes through their table, (C,H,W) NHWC) and op a (1,3,1) constant."""
    b = PlanBuilder((2, 3, 4))
    v = b.edged()
    table = b.array("dq", ((np.arange(256) - GRID.zero) * np.float32(GRID.scale)).astype(np.float32))
    constant = np.array([-0.0, 2.0, np.nan], np.float32).reshape(1, 3, 1)
    out = b.expression("y", (2, 3, 4), [(v, [12, 4, 1]), (0, [1, 8, 2])],
                       [("input", 0, 0, 0, 0, 0), ("input", 1, 1, 0, 0, 0), (opcode, 2, 0, 1, 0, 0),
                        ("constant", 3, 0, 0, 0, 0), (opcode, 2, 2, 3, 0, 0)],
                       constants=[(constant, [0, 1, 0])], tables=[None, table])
    for kernels, tensors in b.traces(out):
        first = reference(BINARY[opcode], [edged_values(tensors), tensors["x"]])
        assert_same(tensors["y"], reference(BINARY[opcode], [first, constant]), f"{kernels} {opcode}")


def test_an_expression_broadcasts_into_a_larger_output():
    """A (2,1,4) slice of x times a (3,1) constant into a (2,3,4) output of rank 3, plus a rank-1 output."""
    b = PlanBuilder((2, 3, 4))
    column = np.array([[1.5], [-2.0], [0.25]], np.float32)
    out = b.expression("y", (2, 3, 4), [(b.x, [12, 0, 1])], [("input", 0, 0, 0, 0, 0), ("constant", 1, 0, 0, 0, 0),
                       ("mul", 2, 0, 1, 0, 0), ("exp", 2, 2, 0, 0, 0)], constants=[(column, [0, 1, 0])])
    flat = b.expression("z", (24,), [(out, [1])], [("input", 0, 0, 0, 0, 0), ("sqrt", 0, 0, 0, 0, 0)])
    for kernels, tensors in b.traces(flat):
        want = reference("Exp", [tensors["x"][:, :, :1, :] * column[None]])
        assert_same(tensors["y"], want, kernels)
        assert_same(tensors["z"], reference("Sqrt", [want.reshape(len(want), -1)]), kernels)


@pytest.mark.parametrize("a_is_tensor", [True, False])
def test_matmul_with_a_constant_operand(a_is_tensor):
    b = PlanBuilder((2, 3, 4))
    v = b.edged()
    rng = np.random.default_rng(2)
    if a_is_tensor:  # (2, 3, 4) @ (4, 5) broadcast over both matrices
        weights = rng.standard_normal((4, 5)).astype(np.float32)
        out = b.tensor("y", (2, 3, 5))
        b.ops.append(FloatMatMulOp(id="mm", a=b.x, b_constant=b.array("w", weights), batch=2, m=3, k=4, n=5,
                                   a_batch_stride=12, b_batch_stride=0, output=out))
    else:  # (5, 3) @ (2, 3, 4) with edges
        weights = rng.standard_normal((5, 3)).astype(np.float32)
        out = b.tensor("y", (2, 5, 4))
        b.ops.append(FloatMatMulOp(id="mm", a_constant=b.array("w", weights), b=v, batch=2, m=5, k=3, n=4,
                                   a_batch_stride=0, b_batch_stride=12, output=out))
    for kernels, tensors in b.traces(out):
        inputs = [tensors["x"], weights] if a_is_tensor else [weights, tensors["v"]]
        assert_same(tensors["y"], reference("MatMul", inputs), kernels)


@pytest.mark.parametrize("axis, log", [(1, False), (2, False), (0, True), (2, True)])
def test_softmax_along_any_axis(axis, log):
    b = PlanBuilder((3, 4, 5))
    x = b.x if axis == 0 else b.edged()  # NaN and infinities in some rows (whole rows then NaN)
    out = b.tensor("y", b.shape)
    outer, inner = math.prod(b.shape[:axis]), math.prod(b.shape[axis + 1:])
    b.ops.append(FloatSoftmaxOp(id="s", input=x, output=out, outer=outer, axis=b.shape[axis], inner=inner, log=log))
    for kernels, tensors in b.traces(out):
        values = tensors["x"] if axis == 0 else tensors["v"]
        want = reference("LogSoftmax" if log else "Softmax", [values], axis=axis + 1)
        assert_same(tensors["y"], want, kernels)


@pytest.mark.parametrize("axis, bias", [(2, True), (1, False)])
def test_layer_norm_over_the_trailing_axes(axis, bias):
    b = PlanBuilder((2, 3, 8))
    out = b.tensor("y", b.shape)
    inner = math.prod(b.shape[axis:])
    rng = np.random.default_rng(3)
    scale = rng.standard_normal(inner).astype(np.float32)
    shift = rng.standard_normal(inner).astype(np.float32) if bias else None
    b.ops.append(FloatLayerNormOp(id="ln", input=b.x, output=out, outer=math.prod(b.shape[:axis]), inner=inner,
                                  epsilon=1e-5, scale=b.array("scale", scale),
                                  bias=b.array("bias", shift) if bias else None))
    for kernels, tensors in b.traces(out):
        parameters = [p.reshape(b.shape[axis:]) for p in ([scale, shift] if bias else [scale])]
        want = reference("LayerNormalization", [tensors["x"], *parameters], axis=axis + 1, epsilon=1e-5)
        assert_same(tensors["y"], want, kernels)


@pytest.mark.parametrize("operation", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("axes", [[1], [0, 2], [2], [0, 1, 2]])
def test_reduce_over_any_axes(operation, axes):
    b = PlanBuilder((2, 3, 4))
    v = b.edged() if operation in ("max", "min") else b.x
    kept = [d for i, d in enumerate(b.shape) if i not in axes] or [1]
    out = b.tensor("y", kept)
    b.ops.append(FloatReduceOp(id="r", input=v, output=out, operation=operation, shape=list(b.shape), axes=axes))
    for kernels, tensors in b.traces(out):
        values = tensors["v"] if v != b.x else tensors["x"]
        want = reference("Reduce" + operation.capitalize(), [values], axes=[a + 1 for a in axes], keepdims=0)
        assert_same(tensors["y"], want, kernels)


def test_gather_moves_float32_values_and_pads():
    """A transpose of x (2,3,4) -> (4,3,2) from one input, then a concat of it and a slice with pad elements."""
    b = PlanBuilder((2, 3, 4))
    v = b.edged()
    order = np.arange(24).reshape(2, 3, 4).transpose(2, 1, 0).reshape(-1).astype(np.int32)
    moved = b.tensor("t", (4, 3, 2))
    b.ops.append(GatherOp(id="t", inputs=[v], input_sizes=[24], tables=[None], size=24,
                          indices=b.array("order", order), output=moved, element_bytes=4))
    sources = np.array([0] * 24 + [1] * 4 + [-1] * 2, np.int32)
    indices = np.concatenate([np.arange(24), np.arange(4) + 8, [0, 0]]).astype(np.int32)
    joined = b.tensor("j", (30,))
    b.ops.append(GatherOp(id="j", inputs=[moved, b.x], input_sizes=[24, 24], tables=[None, None], size=30,
                          indices=b.array("indices", indices), sources=b.array("sources", sources), output=joined,
                          element_bytes=4))
    for kernels, tensors in b.traces(joined):
        assert_same(tensors["t"], tensors["v"].transpose(0, 3, 2, 1), kernels)
        want = np.concatenate([tensors["t"].reshape(3, -1), tensors["x"].reshape(3, -1)[:, 8:12],
                               np.zeros((3, 2), np.float32)], axis=1)
        assert_same(tensors["j"], want, kernels)


def expression_record(b: PlanBuilder, **changes) -> Plan:
    """A one-step expression of x with some of its fields changed (arrays by their values)."""
    out = b.expression("y", b.shape, [(b.x, row_major(b.shape))], [("input", 0, 0, 0, 0, 0), ("exp", 1, 0, 0, 0, 0)])
    op = b.ops[-1]
    for key, value in changes.items():
        setattr(op, key, b.array(f"bad.{key}", value) if isinstance(value, np.ndarray) else value)
    return b.plan(out)


@pytest.mark.parametrize("changes, message", [
    ({"strides": None}, "reads past"),
    ({"program": np.array([[0, 0, 0, 0, 0], [40, 1, 0, 0, 0]], np.int32)}, "unknown opcode"),
    ({"program": np.array([[0, 0, 0, 0, 0], [17, 1, 5, 0, 0]], np.int32)}, "reads register 5"),
    ({"program": np.array([[0, 0, 3, 0, 0], [17, 1, 0, 0, 0]], np.int32)}, "loads input 3"),
    ({"program": np.array([[0, 0, 0, 0, 0], [17, 1, 0, 0, 0], [1, 1, 0, 0, 0]], np.int32)}, "elements, the plan needs"),
    ({"result": 0, "registers": 300}, "'registers' must be 1 to 256"),
])
def test_a_bad_expression_is_refused_naming_what_is_wrong(changes, message):
    b = PlanBuilder((2, 3, 4))
    if changes.get("strides", 0) is None:
        changes = {"strides": [b.array("wide", np.array([12, 4, 2], np.int32))]}
    plan = expression_record(b, **changes)
    with pytest.raises(EdgeFormatError, match=message):
        Session(plan, b.arrays, kernels=KERNELS[0])


def test_a_matmul_operand_too_small_for_its_matrices_is_refused():
    b = PlanBuilder((2, 3, 4))
    out = b.tensor("y", (2, 3, 5))
    b.ops.append(FloatMatMulOp(id="mm", a=b.x, b_constant=b.array("w", np.zeros((4, 5), np.float32)), batch=2, m=3,
                               k=4, n=5, a_batch_stride=13, b_batch_stride=0, output=out))
    with pytest.raises(EdgeFormatError, match="operand 'a' holds 24 elements"):
        Session(b.plan(out), b.arrays, kernels=KERNELS[0])
