"""Plain FP32 ONNX files compile and run in float32 (float_input, float_conv, float_pool, float_matmul, float
expressions and moves, float_output), on every kernel path this CPU has: within float tolerance of ONNX Runtime
on the same file, the same classes, and the numpy reference (INT8_SPEC rule 17) to a few float32 ulps. An FP32 op
the runtime has no float form for stops with a CompileError naming its node and op; damaged float ops are refused."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lightning_edge.runtime import available_kernels, compile, load
from lightning_edge.runtime.compiler import CompileError
from lightning_edge.runtime.edge_format import EdgeFormatError, read_edge
from lightning_edge.runtime.reference import ReferenceModel
from lightning_edge.runtime.session import Session

KERNELS = available_kernels()


class ConvNet(nn.Module):
    """Every float layer kind: a strided conv, a grouped dilated conv with a residual add, a depthwise conv with an
    unfolded BatchNorm and ReLU6, max pooling (ceil mode, padding) and average pooling (ceil mode, padding not
    counted; a second one counting it), a concat of two float branches and a Gemm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.max_pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.average_pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.padded_pool = nn.AvgPool2d(2, 1, padding=1, count_include_pad=True)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.grouped(x) + x
        x = nn.functional.relu6(self.norm(self.depthwise(x)))
        x = self.average_pool(self.max_pool(x))
        x = torch.cat([x, self.padded_pool(x)[:, :, 1:, 1:]], dim=1)
        return self.fc(x.flatten(1))


def export(model: nn.Module, path, shape=(2, 3, 21, 21)) -> np.ndarray:
    """The FP32 ONNX file of ``model`` in eval mode (BatchNorm statistics made non-trivial); returns a batch."""
    torch.manual_seed(0)
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    x = torch.randn(*shape)
    torch.onnx.export(model, x, str(path), opset_version=17, dynamo=False)
    return x.numpy()


def check_runs(onnx_path, edge_path, x: np.ndarray) -> None:
    """The compiled file on every kernel path against ONNX Runtime and the reference on ``x``."""
    plan = compile(onnx_path, edge_path, select=False)
    assert plan.ops[0].kind == "float_input" and plan.ops[-1].kind == "float_output"
    onnx_runtime = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = onnx_runtime.run(None, {onnx_runtime.get_inputs()[0].name: x})[0]
    reference = ReferenceModel(str(onnx_path)).run(x)[0]
    for kernels in KERNELS:
        got = load(edge_path, kernels=kernels).run(x)
        assert got.shape == want.shape and got.dtype == np.float32
        scale = float(np.abs(want).max())
        assert np.abs(got - want).max() <= 1e-4 * scale, f"{kernels}: differs from ONNX Runtime"
        assert np.abs(got - reference).max() <= 1e-6 * scale, f"{kernels}: differs from the reference"
        assert (got.argmax(1) == want.argmax(1)).all()


@pytest.fixture(scope="module")
def conv_net_edge(tmp_path_factory):
    """ConvNet's FP32 file compiled: the .edge path."""
    folder = tmp_path_factory.mktemp("fp32")
    export(ConvNet(), folder / "net.onnx")
    compile(folder / "net.onnx", folder / "net.edge", select=False)
    return folder / "net.edge"


def test_fp32_conv_net_runs_in_float(tmp_path):
    x = export(ConvNet(), tmp_path / "net.onnx")
    check_runs(tmp_path / "net.onnx", tmp_path / "net.edge", x)
    plan, _ = read_edge(tmp_path / "net.edge")
    kinds = [op["kind"] for op in plan["ops"]]
    assert {"float_conv", "float_pool", "float_matmul", "gather"} <= set(kinds)
    assert sum(op["kind"] == "float_pool" for op in plan["ops"]) == 3
    assert not {"quantize", "dequantize", "conv", "to_codes"} & set(kinds)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100"])
def test_timm_fp32_file_runs_in_float(tmp_path, name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x = export(timm.create_model(name, pretrained=False, num_classes=10), tmp_path / f"{name}.onnx", (2, 3, 64, 64))
    check_runs(tmp_path / f"{name}.onnx", tmp_path / f"{name}.edge", x)


class Activations(nn.Module):
    """Elementwise functions of float tensors after a conv: each one a step of a float expression."""

    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, g = self.conv(x), self.gate(x)
        functions = [nn.functional.hardswish(y), nn.functional.hardsigmoid(g) * y, nn.functional.silu(y),
                     nn.functional.gelu(g), nn.functional.leaky_relu(y, 0.1), torch.tanh(g) - torch.sigmoid(y),
                     torch.clamp(y, -0.5, 0.25), nn.functional.mish(g)]
        return sum(functions)


def test_fp32_elementwise_functions_run_as_float_expressions(tmp_path):
    x = export(Activations(), tmp_path / "model.onnx", (2, 3, 7, 7))
    check_runs(tmp_path / "model.onnx", tmp_path / "model.edge", x)


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


class CumulativeSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)


@pytest.mark.parametrize("model, message", [
    (Upsample(), r"node '/up/ConvTranspose' \(ConvTranspose\): op ConvTranspose runs on int8 codes only"),
    (CumulativeSum(), r"node '/CumSum' \(CumSum\): op CumSum is not supported"),
])
def test_unsupported_fp32_op_names_node_and_op(tmp_path, model, message):
    export(model, tmp_path / "model.onnx", (1, 3, 8, 8))
    with pytest.raises(CompileError, match=message):
        compile(tmp_path / "model.onnx", tmp_path / "model.edge", select=False)
    assert not (tmp_path / "model.edge").exists()


@pytest.mark.parametrize("kind, field, value, message", [
    ("float_conv", "pad_top", 5, "padding 5 must be smaller than the dilated window"),
    ("float_conv", "groups", 3, "do not divide into 3 groups"),
    ("float_conv", "dilation_w", 0, "kernel, stride and dilation must be positive"),
    ("float_pool", "operation", "min", "operation 'min' is not one of"),
    ("float_pool", "pad_bottom", 3, "padding 3 must be smaller than the dilated window"),
])
def test_damaged_float_ops_are_refused_by_the_plan(conv_net_edge, kind, field, value, message):
    _assert_refused(conv_net_edge, kind, field, value, message)


@pytest.mark.parametrize("kind, field, value, message", [
    ("float_conv", "out_h", 12, "tensor 'output' has"),
    ("float_conv", "in_h", 22, "tensor 'input' has"),
    ("float_pool", "out_w", 9, "tensor 'output' has"),
    ("float_input", "channels", 4, "tensor 'output' has"),
    ("float_output", "channels", 11, "tensor 'input' has"),
])
def test_damaged_float_ops_are_refused_by_the_engine(conv_net_edge, kind, field, value, message):
    _assert_refused(conv_net_edge, kind, field, value, message)


def _assert_refused(edge, kind: str, field: str, value, message: str) -> None:
    """The first ``kind`` op of the plan with ``field`` set to ``value`` stops the loader with ``message``."""
    plan, tensors = read_edge(edge)
    next(op for op in plan["ops"] if op["kind"] == kind)[field] = value
    with pytest.raises(EdgeFormatError, match=message):
        Session(plan, tensors)


def test_float_conv_weights_of_the_wrong_length_are_refused(conv_net_edge):
    plan, tensors = read_edge(conv_net_edge)
    conv = next(op for op in plan["ops"] if op["kind"] == "float_conv")
    tensors[conv["weights"]] = tensors[conv["weights"]].reshape(-1)[1:].copy()
    with pytest.raises(EdgeFormatError, match="elements, the plan needs"):
        Session(plan, tensors)
