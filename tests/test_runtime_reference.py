"""The numpy INT8 reference: INT8_SPEC arithmetic by hand, and whole QDQ files against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from conftest import calibrated_network
from lightning_edge.export import onnxruntime_session, to_onnx
from lightning_edge.models import create_model
from lightning_edge.runtime.benchmark import quantize_static_qdq
from lightning_edge.runtime.reference import ReferenceModel, quantize, requantize


def test_quantize_and_requantize_round_half_to_even():
    x = np.array([0.25, 0.75, 1.25, -0.25, 1000.0], dtype=np.float32)
    assert quantize(x, np.float32(0.5), 3, 0, 255).tolist() == [3, 5, 5, 3, 255]
    acc = np.array([[5, 15, 25, -5]], dtype=np.int64).reshape(1, 1, 4)  # acc * 0.1 = 0.5, 1.5, 2.5, -0.5 (in float32)
    multiplier = np.array([0.5], dtype=np.float32)
    assert requantize(acc, multiplier / np.float32(5.0), 10, 0, 255).ravel().tolist() == [10, 12, 12, 10]


def test_reference_follows_onnxruntime_layer_by_layer(tmp_path):
    """Against ONNX Runtime's plain float path (DequantizeLinear, float op, QuantizeLinear; no integer kernels,
    whose AVX2 u8 x s8 products may saturate): equal codes while the inputs are equal, then ties only."""
    import onnxruntime

    path = to_onnx(calibrated_network(), torch.zeros(1, 1, 28, 28), str(tmp_path / "model.onnx"))
    proto = onnx.load(path)
    names = [node.output[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"]
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    theirs = onnxruntime.InferenceSession(proto.SerializeToString(), options).run(None, {"input": x})
    reference = ReferenceModel(path)
    ours = reference.run(x)[0]
    assert (ours.argmax(1) == theirs[0].argmax(1)).all()
    exact_layers = 0
    for name, codes in zip(names, theirs[1:]):
        difference = np.abs(reference.tensors[name].codes.astype(int) - codes.astype(int))
        assert difference.max() <= 1 and (difference == 0).mean() >= 0.999, name  # a tie rounds apart, rarely
        if difference.any():
            break  # from here on the inputs differ too, and a random network amplifies that
        exact_layers += 1
    assert exact_layers >= 5


def test_reference_runs_onnxruntime_quantize_static_files(tmp_path):
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    float_path = to_onnx(model, torch.zeros(1, 1, 28, 28), str(tmp_path / "float.onnx"))
    rng = np.random.default_rng(0)
    quantized = quantize_static_qdq(float_path, str(tmp_path / "ort.onnx"),
                                    [rng.standard_normal((1, 1, 28, 28)).astype(np.float32) for _ in range(4)])
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    ours = ReferenceModel(quantized).run(x)[0]
    theirs = onnxruntime_session(quantized).run(None, {"input": x})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()


# ---------------------------------------------------------------------- single ops against ONNX Runtime
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
import pytest  # noqa: E402

from lightning_edge.runtime.reference import FLOAT_OPS, ReferenceError, hard_sigmoid_f32  # noqa: E402

GRID_IN = (np.float32(0.05), 128)


def qdq_model(nodes: list, inputs: dict, outputs: dict, initializers: dict | None = None, opset: int = 17,
              float_outputs: bool = False) -> onnx.ModelProto:
    """Graph inputs ``NAME_f`` (float) -> QuantizeLinear -> DequantizeLinear -> ``NAME`` for each of ``inputs``
    (name: (shape, scale, zero point)); ``nodes`` compute ``outputs`` (name: (scale, zero point)), each quantized
    to graph output ``NAME_q`` (uint8 codes), or left float when ``float_outputs``."""
    graph_nodes, graph_inputs, graph_outputs = [], [], []
    constants = {name: numpy_helper.from_array(np.asarray(value), name) for name, value in (initializers or {}).items()}

    def grid(name: str, scale: np.float32, zero: int) -> tuple[str, str]:
        constants[f"{name}_s"] = numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s")
        constants[f"{name}_z"] = numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_z")
        return f"{name}_s", f"{name}_z"

    for name, (shape, scale, zero) in inputs.items():
        graph_inputs.append(helper.make_tensor_value_info(f"{name}_f", TensorProto.FLOAT, shape))
        s, z = grid(name, scale, zero)
        graph_nodes += [helper.make_node("QuantizeLinear", [f"{name}_f", s, z], [f"{name}_c"]),
                        helper.make_node("DequantizeLinear", [f"{name}_c", s, z], [name])]
    graph_nodes += nodes
    for name, (scale, zero) in outputs.items():
        if float_outputs:
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            continue
        s, z = grid(f"{name}_out", scale, zero)
        graph_nodes.append(helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_q"]))
        graph_outputs.append(helper.make_tensor_value_info(f"{name}_q", TensorProto.UINT8, None))
    graph = helper.make_graph(graph_nodes, "op", graph_inputs, graph_outputs, list(constants.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def both(model: onnx.ModelProto, feeds: dict) -> tuple[list, list]:
    """(reference outputs, ONNX Runtime outputs with graph optimizations off: its plain float path)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return ReferenceModel(model).run(feeds), session.run(None, feeds)


def codes_input(shape: tuple, scale: np.float32 = GRID_IN[0], zero: int = GRID_IN[1], seed: int = 0) -> np.ndarray:
    """Floats exactly on the grid: every code 0..255 first (ties, both saturation ends), then random codes."""
    size = int(np.prod(shape))
    codes = np.concatenate([np.arange(256), np.random.default_rng(seed).integers(0, 256, max(0, size - 256))])[:size]
    return ((codes.reshape(shape) - zero).astype(np.float32) * scale).astype(np.float32)


def assert_codes(ours: list, theirs: list, tolerance: int, exact_fraction: float = 0.98) -> None:
    """Codes at most ``tolerance`` apart, and (a tie rounding apart) most of them equal."""
    for mine, peer in zip(ours, theirs):
        assert mine.shape == peer.shape
        difference = np.abs(mine.astype(np.int64) - peer.astype(np.int64))
        assert difference.max() <= tolerance, f"{difference.max()} codes apart"
        if tolerance:
            assert (difference == 0).mean() >= exact_fraction


UNARY = [
    ("HardSwish", {}, {}), ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, {}), ("Sigmoid", {}, {}), ("Tanh", {}, {}),
    ("LeakyRelu", {"alpha": 0.1}, {}), ("Relu", {}, {}), ("Erf", {}, {}), ("Clip", {}, {"lo": np.float32(-1.0), "hi": np.float32(2.5)}),
    ("PRelu", {}, {"slope": np.array([0.1, -0.2, 0.3, 0.05], np.float32).reshape(4, 1, 1)}),
    ("BatchNormalization", {"epsilon": 1e-3}, {"gamma": np.array([1.5, -0.5, 0.2, 2.0], np.float32),
                                              "beta": np.array([0.1, 0.0, -1.0, 0.3], np.float32),
                                              "mean": np.array([0.5, -0.2, 0.0, 1.0], np.float32),
                                              "var": np.array([2.0, 0.5, 1.0, 0.1], np.float32)}),
]


@pytest.mark.parametrize("op,attributes,constants", UNARY, ids=[item[0] for item in UNARY])
def test_unary_activations_on_all_256_codes_follow_onnxruntime(op, attributes, constants):
    model = qdq_model([helper.make_node(op, ["x", *constants], ["y"], **attributes)],
                      {"x": ((1, 4, 8, 8), *GRID_IN)}, {"y": (np.float32(0.02), 100)}, constants)
    ours, theirs = both(model, {"x_f": codes_input((1, 4, 8, 8))})
    assert_codes(ours, theirs, 1)


def test_gelu_op_and_erf_subgraph_agree_with_onnxruntime_and_with_each_other():
    rt2 = np.float32(np.sqrt(2.0))
    subgraph = [helper.make_node("Div", ["x", "rt2"], ["a"]), helper.make_node("Erf", ["a"], ["b"]),
                helper.make_node("Add", ["b", "one"], ["c"]), helper.make_node("Mul", ["x", "c"], ["d"]),
                helper.make_node("Mul", ["d", "half"], ["y"])]
    grids = ({"x": ((1, 1, 16, 16), *GRID_IN)}, {"y": (np.float32(0.03), 20)})
    x = {"x_f": codes_input((1, 1, 16, 16))}
    erf_ours, erf_theirs = both(qdq_model(subgraph, *grids, {"rt2": rt2, "one": np.float32(1), "half": np.float32(0.5)}), x)
    gelu_ours, gelu_theirs = both(qdq_model([helper.make_node("Gelu", ["x"], ["y"])], *grids, opset=20), x)
    assert_codes(erf_ours, erf_theirs, 1)
    assert_codes(gelu_ours, gelu_theirs, 1)
    assert np.abs(erf_ours[0].astype(int) - gelu_ours[0].astype(int)).max() <= 1


def test_silu_is_sigmoid_then_mul_of_two_int8_tensors():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("QuantizeLinear", ["s", "sg_s", "sg_z"], ["sq"]),
             helper.make_node("DequantizeLinear", ["sq", "sg_s", "sg_z"], ["sd"]), helper.make_node("Mul", ["x", "sd"], ["y"])]
    model = qdq_model(nodes, {"x": ((1, 1, 16, 16), *GRID_IN)}, {"y": (np.float32(0.04), 10)},
                      {"sg_s": np.float32(1 / 255), "sg_z": np.uint8(0)})
    ours, theirs = both(model, {"x_f": codes_input((1, 1, 16, 16))})
    assert_codes(ours, theirs, 1)


def test_float_functions_round_as_the_spec_says():
    """HardSigmoid: float32 product then float32 sum; Sigmoid: float64 then one rounding; ties of Q to even."""
    x = np.array([-3.0, 0.0, 3.0, 1.0], np.float32)
    assert hard_sigmoid_f32(x, np.float32(1 / 6), np.float32(0.5)).tolist() == [0.0, 0.5, 1.0, np.float32(np.float32(1 / 6) + np.float32(0.5))]
    node = helper.make_node("Sigmoid", ["x"], ["y"])
    y = FLOAT_OPS["Sigmoid"](node, [np.array([0.0, 20.0, -20.0], np.float32)], {})
    assert y.dtype == np.float32 and y.tolist() == [0.5, np.float32(1 / (1 + np.exp(-20.0))), np.float32(1 / (1 + np.exp(20.0)))]
    assert quantize(np.array([0.5, 1.5, 2.5, -0.5], np.float32), np.float32(1.0), 0, -128, 127).tolist() == [0, 2, 2, 0]


BINARY = [("Mul", (1, 4, 1, 1), (1, 4, 5, 5)), ("Mul", (1, 4, 5, 5), (1, 4, 5, 5)), ("Add", (1, 4, 5, 5), (1, 1, 5, 5)),
          ("Sub", (1, 4, 5, 5), (1, 4, 5, 5)), ("Div", (1, 4, 5, 5), (1, 4, 1, 1))]


@pytest.mark.parametrize("op,shape_a,shape_b", BINARY, ids=[f"{b[0]}{b[1]}x{b[2]}" for b in BINARY])
def test_binary_ops_of_two_int8_tensors_broadcast(op, shape_a, shape_b):
    grid_b = (np.float32(0.01), 0) if op == "Div" else (np.float32(0.03), 60)
    model = qdq_model([helper.make_node(op, ["a", "b"], ["y"])], {"a": (shape_a, *GRID_IN), "b": (shape_b, *grid_b)},
                      {"y": (np.float32(0.07), 128)})
    b = np.abs(codes_input(shape_b, *grid_b, seed=1)) + np.float32(0.5) if op == "Div" else codes_input(shape_b, *grid_b, seed=1)
    ours, theirs = both(model, {"a_f": codes_input(shape_a, seed=2), "b_f": b})
    assert_codes(ours, theirs, 1)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arithmetic_by_constants(op):
    model = qdq_model([helper.make_node(op, ["x", "k"], ["y"])], {"x": ((1, 4, 4, 4), *GRID_IN)}, {"y": (np.float32(0.05), 128)},
                      {"k": np.array([0.5, 3.0, -1.25, 2.0], np.float32).reshape(1, 4, 1, 1)})
    assert_codes(*both(model, {"x_f": codes_input((1, 4, 4, 4))}), 1)


def _shape_constants(**values) -> dict:
    return {name: np.asarray(value, np.int64) for name, value in values.items()}


MOVES = [
    ("concat_two_grids", [helper.make_node("Concat", ["x", "w"], ["y"], axis=1)], {"w": ((1, 3, 4, 4), np.float32(0.11), 7)}, {}),
    ("split", [helper.make_node("Split", ["x", "parts"], ["y", "y2"], axis=1)], {}, _shape_constants(parts=[1, 3])),
    ("slice", [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], {},
     _shape_constants(st=[3, 0], en=[-9999, 3], ax=[1, 3], sp=[-2, 2])),
    ("channel_shuffle", [helper.make_node("Reshape", ["x", "s1"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
                         helper.make_node("Reshape", ["t", "s2"], ["y"])], {}, _shape_constants(s1=[1, 2, 2, 4, 4], s2=[1, 4, 4, 4])),
    ("pad_zero", [helper.make_node("Pad", ["x", "pads"], ["y"])], {}, _shape_constants(pads=[0, 0, 1, 2, 0, 0, 2, 1])),
    ("pad_value", [helper.make_node("Pad", ["x", "pads", "v"], ["y"])], {}, {**_shape_constants(pads=[0, 0, 1, 0, 0, 0, 0, 1]), "v": np.float32(1.3)}),
    ("pad_reflect", [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], {}, _shape_constants(pads=[0, 0, 1, 1, 0, 0, 1, 1])),
    ("maxpool_ceil", [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], {}, {}),
    ("maxpool_pad_dilated", [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], dilations=[2, 2])], {}, {}),
    ("resize_nearest_asymmetric_floor", [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest",
                                                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
     {}, {"sc": np.array([1, 1, 2, 2], np.float32)}),
    ("resize_nearest_half_pixel", [helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest")], {}, _shape_constants(sz=[1, 4, 7, 6])),
]


@pytest.mark.parametrize("name,nodes,extra,constants", MOVES, ids=[item[0] for item in MOVES])
@pytest.mark.parametrize("same_grid", [True, False])
def test_data_movement_is_exact(name, nodes, extra, constants, same_grid):
    outputs = [out for node in nodes for out in node.output if out.startswith("y")]
    grid = GRID_IN if same_grid else (np.float32(0.09), 100)
    model = qdq_model(nodes, {"x": ((1, 4, 4, 4), *GRID_IN), **extra}, {out: grid for out in outputs}, constants)
    feeds = {"x_f": codes_input((1, 4, 4, 4))} | {f"{n}_f": codes_input(shape, s, z, seed=3) for n, (shape, s, z) in extra.items()}
    assert_codes(*both(model, feeds), 0)


POOLS = [
    ("avg_exclude_pad", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("avg_include_pad", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("avg_ceil", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("avg_ceil_include_pad", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                              ceil_mode=1, count_include_pad=1)),
    ("global", helper.make_node("GlobalAveragePool", ["x"], ["y"])),
    ("reduce_mean_keep", helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)),
    ("reduce_mean_drop", helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1, -2], keepdims=0)),
]


@pytest.mark.parametrize("name,node", POOLS, ids=[item[0] for item in POOLS])
def test_average_pools(name, node):
    model = qdq_model([node], {"x": ((2, 3, 7, 7), *GRID_IN)}, {"y": (np.float32(0.03), 120)})
    assert_codes(*both(model, {"x_f": codes_input((2, 3, 7, 7))}), 1, exact_fraction=0.95)


def test_average_pool_requantizes_as_rule_13():
    """A 2x2 mean of codes centered to 1, 2, 2, 2 (acc 7, count 4) with s_x = s_y: 7/4 = 1.75 -> 2; a count-3 edge window."""
    model = qdq_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                      {"x": ((1, 1, 3, 3), np.float32(0.5), 10)}, {"y": (np.float32(0.5), 10)})
    x = ((np.array([[1, 2, 3], [2, 2, 1], [4, 4, 0]]) ).astype(np.float32) * np.float32(0.5)).reshape(1, 1, 3, 3)
    codes = ReferenceModel(model).run({"x_f": x})[0]
    assert codes.ravel().tolist() == [10 + 2, 10 + 2, 10 + 4, 10 + 0]  # 7/4=1.75, 4/2=2, 8/2=4, 0/1=0


RESIZES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]


@pytest.mark.parametrize("mode", RESIZES)
def test_bilinear_resize(mode):
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", coordinate_transformation_mode=mode)
    model = qdq_model([node], {"x": ((1, 2, 5, 4), *GRID_IN)}, {"y": (np.float32(0.05), 128)}, {"sc": np.array([1, 1, 2, 1.5], np.float32)})
    assert_codes(*both(model, {"x_f": codes_input((1, 2, 5, 4))}), 1, exact_fraction=0.85)  # grid-aligned inputs: many ties


def _weights(shape: tuple, axis: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes in [-127, 127] and per-channel scales along ``axis``."""
    rng = np.random.default_rng(seed)
    return rng.integers(-127, 128, shape).astype(np.int8), (rng.uniform(0.5, 2.0, shape[axis]) / 127 / 4).astype(np.float32)


CONVS = [
    ("dilated", (6, 4, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ("same_upper_stride2", (6, 4, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower_even_kernel", (6, 4, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ("valid", (6, 4, 3, 3), {"auto_pad": "VALID"}),
    ("depthwise_multiplier_2", (8, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    ("grouped", (6, 2, 3, 3), {"group": 2, "pads": [0, 1, 0, 1]}),
]


def _conv_model(op: str, weight_shape: tuple, attributes: dict, quantized_constant: bool = False) -> onnx.ModelProto:
    axis = 1 if op == "ConvTranspose" else 0
    codes, scales = _weights(weight_shape, axis)
    constants = {"w_s": scales, "w_z": np.zeros_like(scales, np.int8)}
    if quantized_constant:  # ONNX Runtime's constant -> QuantizeLinear -> DequantizeLinear
        constants["w_f"] = (codes.astype(np.float32) * scales.reshape([-1 if i == axis else 1 for i in range(4)])).astype(np.float32)
        nodes = [helper.make_node("QuantizeLinear", ["w_f", "w_s", "w_z"], ["w_c"], axis=axis)]
    else:
        constants["w_c"] = codes
        nodes = []
    nodes += [helper.make_node("DequantizeLinear", ["w_c", "w_s", "w_z"], ["w"], axis=axis),
              helper.make_node(op, ["x", "w"], ["y"], **attributes)]
    return qdq_model(nodes, {"x": ((1, 4, 7, 7), *GRID_IN)}, {"y": (np.float32(0.02), 128)}, constants)


@pytest.mark.parametrize("name,shape,attributes", CONVS, ids=[item[0] for item in CONVS])
def test_convolutions(name, shape, attributes):
    assert_codes(*both(_conv_model("Conv", shape, attributes), {"x_f": codes_input((1, 4, 7, 7))}), 1)


@pytest.mark.parametrize("attributes", [{"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
                                        {"strides": [2, 2], "group": 2}, {"dilations": [2, 2]}], ids=["padded", "grouped", "dilated"])
def test_conv_transpose(attributes):
    shape = (4, 3, 3, 3) if attributes.get("group") else (4, 6, 3, 3)
    assert_codes(*both(_conv_model("ConvTranspose", shape, attributes), {"x_f": codes_input((1, 4, 7, 7))}), 1)


def test_quantized_float_constant_weights_fold_to_the_same_codes():
    x = {"x_f": codes_input((1, 4, 7, 7))}
    folded = ReferenceModel(_conv_model("Conv", (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}, quantized_constant=True))
    stored = ReferenceModel(_conv_model("Conv", (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}))
    assert np.array_equal(folded.run(x)[0], stored.run(x)[0])
    assert_codes(*both(_conv_model("Conv", (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}, quantized_constant=True), x), 1)


def test_float_region_between_dequantize_and_quantize():
    """LayerNormalization, MatMul, Softmax and Transpose in float32 between DQ and Q."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "m"], ["mm"]), helper.make_node("Softmax", ["mm"], ["y"], axis=-1)]
    constants = {"s": np.array([1, 4, 16], np.int64), "g": rng.standard_normal(4).astype(np.float32),
                 "b": rng.standard_normal(4).astype(np.float32), "m": rng.standard_normal((4, 5)).astype(np.float32)}
    model = qdq_model(nodes, {"x": ((1, 4, 4, 4), *GRID_IN)}, {"y": (np.float32(1 / 255), 0)}, constants)
    assert_codes(*both(model, {"x_f": codes_input((1, 4, 4, 4))}), 1)


def test_plain_fp32_graph():
    rng = np.random.default_rng(6)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "c"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["bn"]),
         helper.make_node("HardSwish", ["bn"], ["h"]), helper.make_node("GlobalAveragePool", ["h"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)],
        "fp32", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 8, 8))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in {
            "w": rng.standard_normal((5, 3, 3, 3)), "c": rng.standard_normal(5), "g": rng.uniform(0.5, 2, 5), "b": rng.standard_normal(5),
            "m": rng.standard_normal(5), "v": rng.uniform(0.5, 2, 5), "fc": rng.standard_normal((7, 5)), "fb": rng.standard_normal(7)}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ours, theirs = both(model, {"x": x})
    assert ours[0].dtype == np.float32 and np.allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    assert np.allclose(ReferenceModel(model).run(x)[0], ours[0])  # one array for the single input, as before


def test_two_inputs_and_two_outputs():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Mul", ["a", "b"], ["z"])]
    model = qdq_model(nodes, {"a": ((1, 2, 3, 3), *GRID_IN), "b": ((1, 2, 3, 3), np.float32(0.02), 30)},
                      {"y": (np.float32(0.08), 128), "z": (np.float32(0.1), 128)})
    feeds = {"a_f": codes_input((1, 2, 3, 3), seed=7), "b_f": codes_input((1, 2, 3, 3), np.float32(0.02), 30, seed=8)}
    ours, theirs = both(model, feeds)
    assert len(ours) == 2
    assert_codes(ours, theirs, 1)
    as_list = ReferenceModel(model).run([feeds["a_f"], feeds["b_f"]])
    assert all(np.array_equal(p, q) for p, q in zip(as_list, ours))
    with pytest.raises(ReferenceError, match="inputs"):
        ReferenceModel(model).run(feeds["a_f"])


def test_unknown_op_names_node_and_op():
    model = qdq_model([helper.make_node("Hardmax", ["x"], ["y"], name="odd")], {"x": ((1, 4), *GRID_IN)}, {"y": GRID_IN})
    with pytest.raises(ReferenceError, match="'odd'.*Hardmax"):
        ReferenceModel(model).run(codes_input((1, 4)))
