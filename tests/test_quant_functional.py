"""prepare_qat and to_onnx on networks written with functional calls, and on the mainstream edge CNNs.

Each network prepares with no change to its code, trains a step, calibrates, exports as QDQ, and ONNX
Runtime runs the file as the fake-quantized torch model predicts.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from lightning_edge.export import onnxruntime_session, to_onnx
from lightning_edge.quant import (
    SharedQuantizer,
    UnsupportedModelError,
    activation_quantizers,
    calibrate,
    prepare_qat,
    set_fake_quant,
)


class FunctionalNet(nn.Module):
    """A user network in the style of the issue: functional activations, concat, SE gate, mean, pooled head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.left = nn.Conv2d(16, 16, 3, padding=1)
        self.right = nn.Conv2d(16, 16, 1)
        self.squeeze, self.gate = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.project = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, num_classes)
        self.aux = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], dim=1)
        x = x * torch.sigmoid(self.gate(F.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = F.hardswish(self.project(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)) + self.aux(x.mean((2, 3)))


def fake_quant_agreement(
    model: nn.Module, path: str, x: torch.Tensor, optimized: bool = True
) -> tuple[float, np.ndarray]:
    """(argmax agreement, |ONNX Runtime - torch| in units of the output's quantization step).

    ``optimized=False`` runs the file op by op (each DequantizeLinear, float op and QuantizeLinear as written),
    which is the arithmetic the fake-quant model simulates; ONNX Runtime's default session fuses QDQ patterns
    into its own integer kernels (QLinearAdd, QLinearMul, ...), which round a tie now and then the other way
    (and which saturate on a CPU without VNNI, where the unfused session stands in: onnxruntime_session).
    """
    session = onnxruntime_session(path, optimized=None if optimized else False)  # None: fused where exact
    # One image at a time: torch and ONNX Runtime may pick other convolution kernels for other batch sizes, whose
    # float sums differ in the last bit, and such a difference can move a code across a rounding boundary.
    logits = np.concatenate([session.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    with torch.no_grad():
        expected = np.concatenate([_first(model(x[i:i + 1])).numpy() for i in range(len(x))])
    scale = _output_scale(path)
    return float((logits.argmax(1) == expected.argmax(1)).mean()), np.abs(logits - expected) / scale


def _first(output):
    return output["out"] if isinstance(output, dict) else output


def _output_scale(path: str) -> float:
    """The scale of the last QuantizeLinear before the first graph output (the output's grid)."""
    graph = onnx.load(path).graph
    producers = {name: node for node in graph.node for name in node.output}
    initializers = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    node = producers[graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producers[node.input[0]]
    return float(initializers[node.input[1]])


def ops_between_qdq(path: str) -> set[str]:
    """The ONNX op types besides the Q/DQ pairs (the float ops a runtime runs on dequantized inputs)."""
    return {node.op_type for node in onnx.load(path).graph.node} - {"QuantizeLinear", "DequantizeLinear"}


def test_functional_network_trains_calibrates_exports_and_onnxruntime_agrees(tmp_path):
    torch.manual_seed(0)
    network = FunctionalNet()
    model = prepare_qat(network)
    assert type(model) is FunctionalNet and type(model).forward is FunctionalNet.forward
    assert {name for name, _ in network.named_modules()} <= {name for name, _ in model.named_modules()}
    points = {point.name: point for point in model.quant_plan.points}
    calls = {point.call for point in points.values() if point.where == "call"}
    assert {"relu", "cat", "sigmoid", "hardswish", "adaptive_avg_pool2d"} <= calls
    assert any(point.description.startswith("arithmetic (call_function 'mul'") for point in points.values())
    # both concat inputs (conv + ReLU, read by the concat alone) are written on the concat's grid
    concat = next(point for point in points.values() if point.call == "cat")
    assert sum(point.source == concat.name for point in points.values()) == 2
    assert isinstance(model.activation_quantizers[next(p.name for p in points.values() if p.source == concat.name)],
                      SharedQuantizer)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    model.train()
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(quantizer.active for quantizer in activation_quantizers(model))  # every point saw batches
    calibrated = calibrate(model, [torch.randn(16, 1, 28, 28) for _ in range(2)], num_batches=2)
    with torch.no_grad():
        quantized = calibrated(x)
        set_fake_quant(calibrated, False)
        assert not torch.equal(calibrated(x), quantized)  # the call points do quantize
        set_fake_quant(calibrated, True)
    path = to_onnx(calibrated, x[:1], str(tmp_path / "functional.onnx"))
    assert {"Concat", "Mul", "Sigmoid", "HardSwish", "ReduceMean", "GlobalAveragePool"} <= ops_between_qdq(path)
    assert sum(node.op_type == "QuantizeLinear" for node in onnx.load(path).graph.node) >= len(points) - 1
    agreement, steps = fake_quant_agreement(calibrated, path, x)
    assert agreement >= 0.97 and (steps <= 1.01).mean() >= 0.95 and steps.max() <= 3.01
    # and it compiles for our runtime, which runs it bit-exact to the reference on every kernel path
    from lightning_edge.runtime import available_kernels, compile, load
    from lightning_edge.runtime.reference import ReferenceModel

    compile(path, str(tmp_path / "functional.edge"))
    expected = ReferenceModel(path).run(x.numpy())[0]
    for kernels in available_kernels():
        assert np.array_equal(load(tmp_path / "functional.edge", kernels=kernels).run(x.numpy()), expected), kernels


def test_call_points_quantize_under_no_grad_in_eval_and_in_a_copy():
    torch.manual_seed(1)
    model = calibrate(FunctionalNet(), [torch.randn(8, 1, 28, 28)], num_batches=1)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(copy.deepcopy(model)(x), expected)
        assert torch.equal(model(x), expected)  # the counts start afresh for every forward
    assert torch.equal(model(x).detach(), expected)


class _TwoBranchConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1).mean((2, 3)))


def test_concat_inputs_on_the_concat_grid_widen_its_range():
    """Its inputs are clamped to the concat's range before the concat sees them; their own ranges count."""
    torch.manual_seed(0)
    model, x = prepare_qat(_TwoBranchConcat()), torch.rand(4, 1, 8, 8)

    def largest_branch_value() -> float:
        with torch.no_grad():
            return float(torch.cat([F.relu(model.a(x)), F.relu(model.b(x))], 1).max())

    first = largest_branch_value()
    calibrated = calibrate(model, [x], num_batches=1)
    assert calibrated is model
    plan = {point.name: point for point in calibrated.quant_plan.points}
    concat = next(name for name, point in plan.items() if point.call == "cat")
    members = [name for name, point in plan.items() if point.source == concat]
    assert len(members) == 2 and all(plan[name].widens_source for name in members)
    with torch.no_grad():
        model.b.weight.mul_(4)
        model.b.bias.mul_(4)
    second = largest_branch_value()
    assert second > 2 * first
    calibrate(calibrated, [x], num_batches=1)  # a second calibration batch, averaged with the first
    assert calibrated.activation_quantizers[concat].max_value.item() == pytest.approx((first + second) / 2, rel=0.02)


class _ModeDependent(nn.Module):
    """A forward that makes another number of calls in training than its (eval-mode) trace made."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        x = torch.sigmoid(self.conv(x))
        if self.training:
            x = torch.sigmoid(x)
        return x * x


def test_a_forward_that_leaves_its_trace_fails_naming_the_call():
    model = prepare_qat(_ModeDependent().eval())
    model(torch.randn(2, 1, 8, 8))
    with pytest.raises(RuntimeError, match="made 2 'sigmoid' calls where its torch.fx trace made 1"):
        model.train()(torch.randn(2, 1, 8, 8))


def test_untraceable_network_still_fails_at_prepare_naming_the_op():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return torch.cumsum(F.relu(self.conv(x)), dim=1)

    with pytest.raises(UnsupportedModelError, match="call_function 'cumsum' in the model's forward"):
        prepare_qat(Cumulative())


def _timm(name: str):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False, num_classes=10)


def _torchvision(name: str):
    models = pytest.importorskip("torchvision.models")
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    builders = {
        "shufflenet_v2_x0_5": lambda: models.shufflenet_v2_x0_5(num_classes=10),
        "squeezenet1_1": lambda: models.squeezenet1_1(num_classes=10),
        "googlenet": lambda: models.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=10),
        "lraspp_mobilenet_v3_large": lambda: lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4),
    }
    return builders[name]


def with_statistics(model: nn.Module, size: int) -> nn.Module:
    """Give every BatchNorm running statistics of its own (a fresh network's are 0 and 1)."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # a cumulative average: two batches are enough
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    for norm in norms:
        norm.momentum = 0.1
    return model


def _agreement_and_relative_error(model: nn.Module, path: str, x: torch.Tensor, optimized: bool) -> tuple[float, float]:
    """(argmax agreement, RMS of ONNX Runtime - torch over the RMS spread of torch's outputs)."""
    agreement, steps = fake_quant_agreement(model, path, x, optimized=optimized)
    with torch.no_grad():
        expected = _first(model(x)).numpy() / _output_scale(path)
    spread = float(np.sqrt(np.mean((expected - expected.mean(0)) ** 2)))
    return agreement, float(np.sqrt(np.mean(steps ** 2))) / max(spread, 1e-12)


def check_network(build, size: int, tmp_path, config: dict | None = None) -> set[str]:
    """Prepare, train a step, calibrate, export, and compare ONNX Runtime with torch; return the float ops.

    Random networks are chaotic: a code that moves by one step (a float sum that differs in its last bit
    between two convolution kernels, a tie that a fused integer kernel rounds the other way) grows layer by
    layer, so deep ones are held to argmax agreement and to an error well below the spread of the outputs
    (op by op, ResNets, RegNets, RepVGG, SqueezeNet and ConvNeXt agree exactly here).
    """
    torch.manual_seed(0)
    model = prepare_qat(with_statistics(build(), size), config)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    _first(model(torch.randn(2, 3, size, size))).square().mean().backward()
    optimizer.step()
    calibrate(model, [torch.randn(4, 3, size, size) for _ in range(2)], num_batches=2)
    path = to_onnx(model, torch.randn(1, 3, size, size), str(tmp_path / "model.onnx"))
    x = torch.randn(8, 3, size, size)
    # A random network's logits lie close together (efficientnet_b0's argmax flips on half of 8 images for an
    # error a fifth of the outputs' spread), so the error is the measure here; FunctionalNet checks the argmax.
    agreement, error = _agreement_and_relative_error(model, path, x, optimized=False)
    assert error <= 0.4, (agreement, error)  # repvgg_a0: 0.35 on an AVX2-only EPYC, whose float convs round otherwise
    agreement, error = _agreement_and_relative_error(model, path, x, optimized=True)
    assert error <= 0.5, (agreement, error)
    return ops_between_qdq(path)


FAST = [
    ("mobilenetv3_small_100", _timm, 64, {"HardSwish", "HardSigmoid", "Mul", "ReduceMean"}),
    ("ghostnet_100", _timm, 64, {"Concat", "Slice", "HardSigmoid"}),
    ("regnety_002", _timm, 64, {"Sigmoid", "Mul"}),
    ("shufflenet_v2_x0_5", _torchvision, 64, {"Concat", "Slice", "Transpose", "Reshape"}),
    ("squeezenet1_1", _torchvision, 64, {"Concat", "MaxPool"}),
]
SLOW = [
    *(name for name, *_ in FAST),
    "resnet18", "resnet50", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_lite0",
    "mnasnet_100", "regnetx_002", "densenet121", "repvgg_a0", "lcnet_050", "convnext_atto",
    "googlenet", "lraspp_mobilenet_v3_large", "mobilevit_xxs",
]
SIZED = ("mobilevit_xxs",)  # forwards that branch on their input's size: traced at the size they run at


@pytest.mark.parametrize("name,source,size,ops", FAST, ids=[item[0] for item in FAST])
def test_edge_cnn_prepares_trains_exports_and_onnxruntime_agrees(name, source, size, ops, tmp_path):
    assert ops <= check_network(source(name), size, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_every_target_network_prepares_trains_exports_and_onnxruntime_agrees(name, tmp_path):
    torchvision_names = ("shufflenet_v2_x0_5", "squeezenet1_1", "googlenet", "lraspp_mobilenet_v3_large")
    source = _torchvision if name in torchvision_names else _timm
    check_network(source(name), 96, tmp_path, {"input_shape": (3, 96, 96)} if name in SIZED else None)


def test_mobilevit_needs_its_input_shape_and_traces_with_it():
    """timm's MobileViT resizes its feature map only when its size asks for it: Python control flow on sizes.
    Without a size the trace stops and says which option gives one; with it, the attention blocks are quantized."""
    with pytest.raises(UnsupportedModelError, match=r"cannot trace ByobNet with torch.fx.*control flow.*input_shape"):
        prepare_qat(_timm("mobilevit_xxs")())
    from lightning_edge.quant import build_plan

    names = [point.name for point in build_plan(_timm("mobilevit_xxs")(), input_shape=(3, 64, 64)).points]
    assert any("transformer" in name and "attn" in name for name in names), names
    model = prepare_qat(_timm("mobilevit_xxs")(), {"input_shape": (3, 64, 64)})
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_a_shaped_trace_finds_the_same_int8_points_as_a_plain_one():
    """Sizes only decide Python branches: on a network without them both traces give one plan."""
    from lightning_edge.quant import build_plan

    plain, shaped = build_plan(FunctionalNet()), build_plan(FunctionalNet(), input_shape=(1, 28, 28))
    assert plain.points and plain.points == shaped.points and plain.folds == shaped.folds


def test_input_shape_round_trips_and_a_bad_one_is_refused():
    """A checkpoint or a Hydra config stores the shape as a list; it comes back as the same config."""
    from lightning_edge.quant import QuantConfig

    config = QuantConfig(input_shape=[1, 28, 28])
    assert config.input_shape == (1, 28, 28) and config.as_dict()["input_shape"] == [1, 28, 28]
    assert QuantConfig.create(config.as_dict()) == config
    with pytest.raises(ValueError, match="input_shape must be positive sizes"):
        prepare_qat(FunctionalNet(), {"input_shape": (1, 0, 28)})


def _ddp_rank(rank: int, world_size: int, port: int, out: str) -> None:
    """One DDP rank: two QAT steps of FunctionalNet on its own shard, then the ranks' ranges reduced."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lightning_edge.quant import synchronize_observers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = prepare_qat(FunctionalNet()).train()
        wrapped = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05)
        torch.manual_seed(1 + rank)
        for _ in range(2):
            optimizer.zero_grad()
            F.cross_entropy(wrapped(torch.randn(8, 1, 28, 28) * (1 + rank)), torch.randint(0, 10, (8,))).backward()
            optimizer.step()
            synchronize_observers(model)
        scales = {name: float(quantizer.scale) for name, quantizer in model.activation_quantizers.items()
                  if not isinstance(quantizer, SharedQuantizer)}
        torch.save(scales, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_functional_network_trains_under_ddp_with_identical_ranges(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "scales")
    mp.spawn(_ddp_rank, args=(2, port, out), nprocs=2, join=True)
    first, second = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert first == second and any("cat" in name for name in first)
