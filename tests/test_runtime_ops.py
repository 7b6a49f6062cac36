"""Every op the compiler accepts beyond conv/add/pool, through the whole path: a small network written the way
people write them (functional calls included), exported to FP32 ONNX, quantized by ONNX Runtime's
``quantize_static``, compiled, and run on every kernel path this CPU has, bit-exact to the numpy reference."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_edge.runtime import CompileError, available_kernels, compile, load
from lightning_edge.runtime.benchmark import quantize_static_qdq
from lightning_edge.runtime.reference import ReferenceModel

KERNELS = available_kernels()
SHAPE = (3, 16, 16)


def ort_qdq_file(network: nn.Module, tmp_path, shape=SHAPE, per_channel: bool = True, activations: str = "QUInt8") -> str:
    """``network`` as ONNX Runtime's own per-channel QDQ file, calibrated on random inputs."""
    torch.manual_seed(0)
    float_path = str(tmp_path / "float.onnx")
    torch.onnx.export(network.eval(), torch.randn(1, *shape), float_path, input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, *shape)).astype(np.float32) * 2 for _ in range(4)]
    return quantize_static_qdq(float_path, str(tmp_path / "qdq.onnx"), batches, per_channel=per_channel,
                               activations=activations)


def assert_bit_exact(qdq_path: str, tmp_path, shape=SHAPE, kinds: set[str] = frozenset(), **options) -> set[str]:
    """Compiles the file (``options`` for compile); every stored tensor the reference also has, and the output,
    equal on every kernel path. Returns the plan's op kinds."""
    plan = compile(qdq_path, str(tmp_path / "model.edge"), select=False, **options)
    compiled = {op.kind for op in plan.ops}
    assert kinds <= compiled, compiled
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32) * 2
    reference = ReferenceModel(qdq_path)
    expected = reference.run(x)[0]
    shift = 128 if any(t.codes.dtype == np.int8 for t in reference.tensors.values()) else 0
    for kernels in KERNELS:
        output, tensors = load(tmp_path / "model.edge", kernels=kernels).trace(x)
        compared = [name for name in tensors if name in reference.tensors]
        assert compared, "no stored tensor has a reference twin"
        for name in compared:
            want = reference.tensors[name].codes.astype(np.int64)
            got = tensors[name].reshape(want.shape).astype(np.int64) - shift
            assert np.array_equal(got, want), f"{kernels}: {name!r} differs in {(got != want).sum()} codes"
        assert np.array_equal(output.reshape(expected.shape), expected), kernels
    return compiled


class Activations(nn.Module):
    """Each activation the runtime computes as a table, standing alone after a conv."""

    def __init__(self, activation):
        super().__init__()
        self.conv, self.activation = nn.Conv2d(3, 8, 3, padding=1), activation
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.activation(self.conv(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


ACTIVATIONS = {
    "hardswish": nn.Hardswish(), "hardsigmoid": nn.Hardsigmoid(), "sigmoid": nn.Sigmoid(), "silu": nn.SiLU(),
    "tanh": nn.Tanh(), "leaky_relu": nn.LeakyReLU(0.1), "prelu": nn.PReLU(8), "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"), "mish": nn.Mish(), "softplus": nn.Softplus(),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_run_as_exact_tables(name, tmp_path):
    assert_bit_exact(ort_qdq_file(Activations(ACTIVATIONS[name]), tmp_path), tmp_path, kinds={"table"})


class SqueezeExcitation(nn.Module):
    """MobileNetV3 / EfficientNet blocks as timm writes them: x.mean((2, 3)), a gate, x * gate (a broadcast product)."""

    def __init__(self, gate=torch.sigmoid, channels: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.reduce, self.expand = nn.Conv2d(channels, 4, 1), nn.Conv2d(4, channels, 1)
        self.gate = gate
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        x = F.hardswish(self.conv(x))
        scale = self.gate(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x * scale, 1), 1))


@pytest.mark.parametrize("gate", [torch.sigmoid, F.hardsigmoid], ids=["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("activations", ["QUInt8", "QInt8"])
def test_squeeze_excitation_gates_broadcast_their_product(gate, activations, tmp_path):
    path = ort_qdq_file(SqueezeExcitation(gate), tmp_path, activations=activations)
    assert_bit_exact(path, tmp_path, kinds={"binary", "table", "average_pool"})


def test_squeeze_excitation_of_odd_width_on_a_large_map(tmp_path):
    """19 channels (a vector kernel's tail) on a 20x20 map (more pixels than a code has values)."""
    shape = (3, 20, 20)
    path = ort_qdq_file(SqueezeExcitation(channels=19), tmp_path, shape=shape)
    assert_bit_exact(path, tmp_path, shape=shape, kinds={"binary", "table"})


class SiLU(nn.Module):
    """SiLU as ONNX Runtime quantizes it, x * Q(sigmoid(x)): one function of x's codes, so one table; with
    ``reuse`` the sigmoid is read again (x * sigmoid(x) + sigmoid(x)) and keeps its own table."""

    def __init__(self, reuse: bool):
        super().__init__()
        self.conv, self.reuse = nn.Conv2d(3, 8, 3, padding=1), reuse
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        gate = torch.sigmoid(x)
        x = x * gate + gate if self.reuse else x * gate
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("reuse", [False, True], ids=["silu", "sigmoid_reused"])
def test_silu_composes_its_sigmoid_into_one_table(reuse, tmp_path):
    path = ort_qdq_file(SiLU(reuse), tmp_path)
    assert {"Sigmoid", "Mul"} <= {n.op_type for n in onnx.load(path).graph.node}
    assert_bit_exact(path, tmp_path, kinds={"table"})
    plan = compile(path, str(tmp_path / "silu.edge"), select=False)
    kinds = [op.kind for op in plan.ops]
    assert "binary" not in kinds and kinds.count("table") == (2 if reuse else 1), kinds


def gated_model(operation: str, full: str, gate_first: bool, channels: int, size: int) -> onnx.ModelProto:
    """Q(f(x) op g) for x (1, C, S, S) and a gate g (1, C, 1, 1), both int8 tensors: f is x itself (a
    dequantization), x times a per-channel constant (a table per channel) or sigmoid(x) (one table that is not a
    dequantization)."""
    from onnx import helper

    from test_runtime_reference import qdq_model

    nodes, constants = [], {}
    if full == "per_channel":
        constants["k"] = np.linspace(-1.5, 2.0, channels, dtype=np.float32).reshape(1, channels, 1, 1)
        nodes.append(helper.make_node("Mul", ["x", "k"], ["f"]))
    elif full == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["x"], ["f"]))
    operands = ["g", "f" if nodes else "x"]
    nodes.append(helper.make_node(operation, operands if gate_first else operands[::-1], ["y"]))
    gate_grid = (np.float32(0.02), 3) if operation == "Div" else (np.float32(0.03), 100)
    model = qdq_model(nodes, {"x": ((1, channels, size, size), np.float32(0.05), 128), "g": ((1, channels, 1, 1), *gate_grid)},
                      {"y": (np.float32(0.06), 120)}, constants)
    graph = model.graph  # the runtime's outputs are dequantized codes
    graph.node.append(helper.make_node("DequantizeLinear", ["y_q", "y_out_s", "y_out_z"], ["y_dq"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y_dq", onnx.TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("operation", ["Mul", "Add", "Sub", "Div"])
@pytest.mark.parametrize("full", ["dequantized", "per_channel", "sigmoid"])
@pytest.mark.parametrize("gate_first", [False, True], ids=["x_op_gate", "gate_op_x"])
def test_gated_products_are_exact_on_every_path(operation, full, gate_first, tmp_path):
    """The squeeze-excitation shape of the binary op, each operand's table kind and each operation, 21 channels on
    17x17 and 5x5 maps (more and fewer pixels than a code has values)."""
    for size in (17, 5):
        path = tmp_path / f"gated{size}.onnx"
        onnx.save(gated_model(operation, full, gate_first, 21, size), path)
        compile(str(path), str(tmp_path / "gated.edge"), select=False)
        rng = np.random.default_rng(size)
        feeds = {"x_f": rng.standard_normal((2, 21, size, size)).astype(np.float32) * 3,
                 "g_f": rng.uniform(0.05, 2.5, (2, 21, 1, 1)).astype(np.float32)}
        want = ReferenceModel(str(path)).run(feeds)[0]
        for kernels in KERNELS:
            got = load(tmp_path / "gated.edge", kernels=kernels).run([feeds["x_f"], feeds["g_f"]])
            assert np.array_equal(got, want), f"{kernels} {size}: {(got != want).sum()} differ"


class ConcatAndShuffle(nn.Module):
    """torch.cat of branches on different grids, a channel shuffle, a channel split (chunk) and a slice."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x):
        x = torch.cat([F.relu(self.a(x)), self.b(x) * 3.0], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, F.relu(self.c(right))], dim=1)[:, 4:]
        return self.head(F.max_pool2d(x, 2).flatten(1))


def test_concat_channel_shuffle_split_and_slice_move_codes(tmp_path):
    kinds = assert_bit_exact(ort_qdq_file(ConcatAndShuffle(), tmp_path), tmp_path)
    assert {"concat", "gather"} <= kinds


class Pools(nn.Module):
    """Windowed average pools (padding counted or not), max pooling in ceil mode, zero padding, nearest upsampling
    and a strided slice; the head takes the mean over the plane and (``plane_max``) the max over it, which has no
    integer form (a float region) but a ReduceMax."""

    def __init__(self, plane_max: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.average = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        self.average_padded = nn.AvgPool2d(2, stride=2, padding=1, count_include_pad=True)
        self.maximum = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.head = nn.Linear(8 * 2, 10)
        self.plane_max = plane_max

    def forward(self, x):
        x = F.relu(self.conv(x))                       # 14x14
        a = self.average(x)                            # 8x8 (ceil)
        b = self.maximum(F.pad(x, (1, 1, 1, 1)))       # 16x16 -> 8x8 (ceil)
        x = self.average_padded(a + F.interpolate(b, scale_factor=2.0, mode="nearest")[:, :, ::2, ::2])  # 5x5
        return self.head(torch.cat([x.mean((2, 3)), x.amax((2, 3)) if self.plane_max else x.mean((2, 3)) * 0.5], dim=1))


def test_a_max_over_the_plane_runs_in_a_float_region(tmp_path):
    assert_bit_exact(ort_qdq_file(Pools(plane_max=True), tmp_path), tmp_path, kinds={"float_reduce", "to_float", "to_codes"})


def test_windowed_average_and_ceil_mode_max_pools(tmp_path):
    kinds = assert_bit_exact(ort_qdq_file(Pools(plane_max=False), tmp_path), tmp_path)
    assert {"window_average_pool", "max_pool"} <= kinds


class UnfoldedBatchNorm(nn.Module):
    """A BatchNorm with no conv before it (DenseNet's pre-activation), a dilated conv, and a 'same'-padded one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.same = nn.Conv2d(8, 16, 3, padding="same", groups=8)  # a channel multiplier of 2
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1), self.norm.running_var.uniform_(0.5, 2), self.norm.weight.uniform_(0.5, 2)

    def forward(self, x):
        x = F.relu(self.norm(self.stem(x) + 1.0))
        return self.head(F.adaptive_avg_pool2d(F.relu(self.same(self.dilated(x))), 1).flatten(1))


def test_unfolded_batch_norm_dilation_and_same_padding(tmp_path):
    assert_bit_exact(ort_qdq_file(UnfoldedBatchNorm(), tmp_path), tmp_path, kinds={"table", "conv"})


def test_weights_two_layers_share_fold_at_compile_time(tmp_path):
    """Identical weights are one initializer behind an Identity in the exported file; ONNX Runtime then quantizes
    the second layer's copy again as if it were an activation (DequantizeLinear -> Identity -> QuantizeLinear,
    uint8 with a zero point: timm's resnet18 has this). The compiler folds it and centres the codes onto int8."""

    class Twins(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 10)
            with torch.no_grad():
                self.b.weight.copy_(self.a.weight), self.b.bias.copy_(self.a.bias)

        def forward(self, x):
            x = F.relu(self.stem(x))
            x = F.relu(self.a(x)) + x
            return self.head(F.relu(self.b(x)).mean((2, 3)))

    path = ort_qdq_file(Twins(), tmp_path)
    graph = onnx.load(path).graph
    identities = {node.output[0] for node in graph.node if node.op_type == "Identity"}
    requantized = [node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] in identities]
    assert requantized, "the file no longer has the pattern this test is about"
    assert_bit_exact(path, tmp_path)


def test_a_file_with_dynamic_height_and_width_compiles_for_the_shape_given(tmp_path):
    torch.manual_seed(0)
    float_path = str(tmp_path / "float.onnx")
    torch.onnx.export(SqueezeExcitation().eval(), torch.randn(1, *SHAPE), float_path, input_names=["input"],
                      output_names=["output"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}})
    rng = np.random.default_rng(0)
    path = quantize_static_qdq(float_path, str(tmp_path / "qdq.onnx"),
                               [rng.standard_normal((2, 3, 24, 20)).astype(np.float32) for _ in range(2)])
    with pytest.raises(CompileError, match="input_shape"):
        compile(path, str(tmp_path / "model.edge"), select=False)
    assert_bit_exact(path, tmp_path, shape=(3, 24, 20), input_shape=(3, 24, 20))
    assert load(tmp_path / "model.edge").input_shape == (3, 24, 20)


class Attention(nn.Module):
    """A transformer block as timm writes it: LayerNorm over channels-last tokens, q/k/v MatMuls, Softmax, GELU."""

    def __init__(self, channels: int = 8, heads: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(channels)
        self.qkv, self.proj = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))
        self.heads = heads
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                               # (n, h*w, c)
        q, k, v = self.qkv(self.norm(tokens)).reshape(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
        tokens = tokens + self.proj((attention @ v).transpose(1, 2).reshape(n, h * w, c))
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens.mean(1))


def test_attention_runs_in_float_regions(tmp_path):
    kinds = assert_bit_exact(ort_qdq_file(Attention(), tmp_path), tmp_path)
    assert {"float_layer_norm", "float_matmul", "float_softmax"} <= kinds


def test_an_op_without_any_form_in_the_runtime_is_named(tmp_path):
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.cumsum(self.conv(x).flatten(1), dim=1)

    with pytest.raises(CompileError, match="CumSum"):
        compile(ort_qdq_file(Cumulative(), tmp_path), str(tmp_path / "model.edge"), select=False)


class Segmentation(nn.Module):
    """An LR-ASPP-style head: a dilated depthwise conv, a gate, and bilinear upsampling back to the input size."""

    def __init__(self, align_corners: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8)
        self.gate = nn.Conv2d(8, 8, 1)
        self.classifier = nn.Conv2d(8, 4, 1)
        self.align_corners = align_corners

    def forward(self, x):
        y = F.relu(self.stem(x))
        y = F.hardswish(self.dilated(y)) * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        y = self.classifier(F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=self.align_corners))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_resize_and_a_9x9_dilated_window(align_corners, tmp_path):
    kinds = assert_bit_exact(ort_qdq_file(Segmentation(align_corners), tmp_path), tmp_path)
    assert {"float_expression", "gather", "depthwise"} <= kinds


def test_a_bias_that_takes_the_accumulator_past_int32_is_added_in_int64(tmp_path):
    """ONNX Runtime keeps a large bias in int32 by raising the weight scale (googlenet's classifier with random
    weights): acc + bias may then leave int32 while acc alone cannot. Such a layer runs the scalar kernels, which
    add the bias in int64, and stays bit-exact on every path."""

    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)
            with torch.no_grad():
                self.fc.bias.fill_(1.0)  # on a grid of s_x * s_w ~ 1e-8 it does not fit int32 unless s_w grows

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)) * 1e-4)

    path = ort_qdq_file(Biased(), tmp_path)
    plan = compile(path, str(tmp_path / "timed.edge"))  # selection keeps to the candidates such a layer can run
    assert any(getattr(op, "wide_bias", False) for op in plan.ops)
    assert_bit_exact(path, tmp_path)


def test_an_add_folded_into_a_per_channel_conv_keeps_it_off_the_depthwise_kernel(tmp_path):
    """RepVGG's identity branch is a lone BatchNorm (a depthwise 1x1 conv in our export's terms); the block's add
    folds into its epilogue, which the depthwise kernel does not have: selection must not pick it."""

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.wide, self.narrow, self.identity = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1, groups=8)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = F.relu(self.stem(x))
            x = F.relu(self.wide(x) + self.narrow(x) + self.identity(x))
            return self.head(x.mean((2, 3)))

    path = ort_qdq_file(Branches(), tmp_path)
    plan = compile(path, str(tmp_path / "timed.edge"))
    assert all(op.skip is None for op in plan.ops if op.kind == "depthwise")
    assert any(op.kind == "conv" and op.groups == 8 and op.skip is not None for op in plan.ops)
    assert_bit_exact(path, tmp_path)


@pytest.mark.parametrize("stride,padding,output_padding,groups", [(2, 1, 1, 1), (2, 0, 0, 2), (1, 1, 0, 4), (3, 2, 1, 1)])
def test_transposed_convs_run_as_spread_inputs_and_flipped_kernels(stride, padding, output_padding, groups, tmp_path):
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(8, 8, 3, stride=stride, padding=padding, output_padding=output_padding,
                                         groups=groups)

        def forward(self, x):
            return self.up(F.relu(self.stem(x)))

    # ONNX Runtime's quantizer cannot give a grouped ConvTranspose per-channel scales: per tensor there
    assert_bit_exact(ort_qdq_file(Decoder(), tmp_path, per_channel=groups == 1), tmp_path, kinds={"gather", "conv"})


def test_rgb_input_quantize_is_exact_at_ties_and_extremes(tmp_path):
    """The input quantize on a 3x20x23 image (16-pixel runs and a tail): values at rounding ties, both
    saturation ends, infinities and signed zeros give the reference's codes on every path."""
    shape = (3, 20, 23)
    path = ort_qdq_file(Activations(nn.ReLU()), tmp_path, shape=shape)
    compile(path, str(tmp_path / "rgb.edge"), select=False)
    reference = ReferenceModel(path)
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32) * 2
    reference.run(x)
    name, codes = next(iter(reference.tensors.items()))  # the input's QuantizeLinear codes come first
    step = np.float32(codes.scale)
    edges = np.array([0.5, 1.5, -0.5, -2.5, 1e30, -1e30, np.inf, -np.inf, -0.0, 0.0], np.float32)
    x.reshape(-1)[:edges.size * 7:7] = np.where(np.abs(edges) < 10, edges * step, edges)
    expected = reference.run(x)[0]
    want = reference.tensors[name].codes
    for kernels in KERNELS:
        output, tensors = load(tmp_path / "rgb.edge", kernels=kernels).trace(x)
        assert np.array_equal(output, expected), kernels
        assert np.array_equal(tensors[name].reshape(want.shape), want), kernels
