"""lightning_edge.quant: INT8_SPEC arithmetic, BatchNorm folding, prepare_qat on each family, calibration."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_edge.models import create_model
from lightning_edge.quant import (
    ActivationQuantizer,
    QuantBatchNorm2d,
    QuantConv2d,
    QuantLinear,
    UnsupportedModelError,
    activation_quantizers,
    calibrate,
    freeze_batchnorm,
    prepare_qat,
    quantized_layers,
    set_fake_quant,
)
from lightning_edge.quant.qparams import (
    activation_qparams,
    fake_quantize,
    quantize_bias,
    quantize_weight,
    weight_scales,
)


def trained_statistics(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics of its own (a fresh model's are 0 and 1)."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model.eval()


# ---------------------------------------------------------------------------- the arithmetic of INT8_SPEC.md
def test_fake_quantize_rounds_half_to_even_and_clamps_like_hand_computation():
    scale, zero_point = torch.tensor(0.5), torch.tensor(3, dtype=torch.int32)
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -1.75, 0.6, 1000.0, -10.0], requires_grad=True)
    # x / 0.5 = 0.5, 1.5, 2.5, -0.5, -3.5, 1.2 -> half to even: 0, 2, 2, -0, -4, 1; + 3; clamp to [0, 255]
    codes = torch.tensor([3, 5, 5, 3, -1, 4, 255, 0])
    expected = (codes.clamp(0, 255) - 3).float() * 0.5
    out = fake_quantize(x, scale, zero_point, 0, 255)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1, 0, 1, 0, 0]  # no gradient where the code was clamped


def test_activation_qparams_hold_zero_exactly():
    scale, zero_point = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0), 0, 255)
    assert scale.item() == pytest.approx(4 / 255)
    assert zero_point.item() == 64  # round(1 / (4/255)) = round(63.75)
    assert (0 - zero_point.item()) * scale.item() + zero_point.item() * scale.item() == 0.0
    relu_scale, relu_zero = activation_qparams(torch.tensor(0.5), torch.tensor(2.54), 0, 127)
    assert relu_zero.item() == 0 and relu_scale.item() == pytest.approx(2.54 / 127)  # range widened to hold 0
    flat_scale, flat_zero = activation_qparams(torch.tensor(0.0), torch.tensor(0.0), 0, 255)
    assert flat_scale.item() > 0 and flat_zero.item() == 0


def test_weights_are_symmetric_per_channel_within_127():
    weight = torch.tensor([[1.0, -0.5, 0.25], [-2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    scale = weight_scales(weight)
    assert scale[:2].tolist() == pytest.approx([1 / 127, 2 / 127])
    codes = quantize_weight(weight, scale, -127, 127)
    assert codes.tolist()[:2] == [[127, -64, 32], [-127, 64, 0]]  # -63.5 and 31.75 round half to even / nearest
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127


def test_bias_scale_grows_for_a_channel_whose_weights_are_zero():
    weight, bias, input_scale = torch.zeros(2, 4), torch.tensor([3.0, 0.0]), torch.tensor(0.02)
    scale = weight_scales(weight, 127, bias, input_scale)
    codes = quantize_bias(bias, input_scale * scale)
    assert abs(int(codes[0])) <= 2**30
    assert float(codes[0]) * float(input_scale * scale[0]) == pytest.approx(3.0, rel=1e-6)


# ---------------------------------------------------------------------------- folding
def test_folded_conv_equals_conv_then_batchnorm_in_eval():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8)
    nn.init.uniform_(bn.weight, 0.5, 2.0)
    nn.init.uniform_(bn.bias, -1.0, 1.0)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2.0)
    conv.eval(), bn.eval()
    x = torch.randn(4, 3, 10, 10)
    quantized = QuantConv2d.from_float(conv, bn).eval()
    weight, bias = quantized.folded_weight_and_bias()
    assert torch.allclose(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), atol=1e-5)
    set_fake_quant(quantized, False)
    assert torch.allclose(quantized(x), bn(conv(x)), atol=1e-6)  # switched off: the float layers exactly


def test_training_folding_keeps_batch_statistics_and_a_zero_gamma_trainable():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
    nn.init.zeros_(bn.weight)  # zero-initialised last BN of a residual branch (timm's default)
    quantized = QuantConv2d.from_float(conv, bn).train()
    out = quantized(torch.randn(8, 3, 6, 6))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(out).all()
    assert quantized.bn.weight.grad.abs().sum() > 0
    assert quantized.bn.num_batches_tracked.item() == 1  # running statistics keep updating
    freeze_batchnorm(quantized)
    before = quantized.bn.running_mean.clone()
    quantized(torch.randn(8, 3, 6, 6))
    assert torch.equal(quantized.bn.running_mean, before)


# ---------------------------------------------------------------------------- prepare_qat on each family
FAMILIES = [
    ("cifar_resnet20", {}, 28, dict(convs=21, folded_bn=21, lone_bn=0)),
    ("cifar_resnet20", {"shortcut": "A"}, 28, dict(convs=19, folded_bn=19, lone_bn=0)),
    ("cifar_wrn_16_2", {}, 28, dict(convs=16, folded_bn=7, lone_bn=6)),  # pre-activation: most BNs precede a conv
    ("cifar_resnet20", {"derive": {"block": "G4"}}, 28, dict(convs=39, folded_bn=39, lone_bn=0)),
    ("cifar_resnet20", {"derive": {"block": "DW"}}, 28, dict(convs=39, folded_bn=39, lone_bn=0)),
    ("resnet18", {}, 64, dict(convs=20, folded_bn=20, lone_bn=0)),
    ("mobilenetv2_100", {}, 64, dict(convs=52, folded_bn=52, lone_bn=0)),
]


@pytest.mark.parametrize("name,kwargs,size,expected", FAMILIES, ids=lambda value: str(value))
def test_prepare_qat_quantizes_every_layer_of_each_family(name, kwargs, size, expected):
    model = trained_statistics(create_model(name, num_classes=10, in_chans=1, image_size=size, **kwargs), (1, size, size))
    prepared = prepare_qat(model)
    assert not any(type(module) in (nn.Conv2d, nn.Linear) for module in prepared.modules())
    convs = [module for module in quantized_layers(prepared) if isinstance(module, QuantConv2d)]
    folded = [conv.bn for conv in convs if conv.bn is not None]
    assert all(any(module is bn for bn in folded) for module in prepared.modules() if type(module) is nn.BatchNorm2d)
    assert len(convs) == expected["convs"]
    assert sum(conv.bn is not None for conv in convs) == expected["folded_bn"]
    assert sum(isinstance(module, QuantBatchNorm2d) for module in prepared.modules()) == expected["lone_bn"]
    assert sum(isinstance(module, QuantLinear) for module in prepared.modules()) == 1
    assert all(layer.input_quantizer is not None for layer in quantized_layers(prepared))
    assert prepared.quant_plan.points[0].description == "network input"
    # the original is untouched, and the prepared model keeps its module paths
    assert type(model.get_submodule(prepared.quant_plan.folds[0].path)) is nn.Conv2d
    # calibrated, it predicts what the float network predicts on these inputs
    x = torch.randn(16, 1, size, size) * 2 + 0.5
    calibrate(prepared, [x], num_batches=1)
    with torch.no_grad():
        float_logits, int8_logits = model(x), prepared(x)
    assert all(quantizer.active for quantizer in activation_quantizers(prepared))
    assert not torch.equal(float_logits, int8_logits)
    assert (float_logits.argmax(1) == int8_logits.argmax(1)).float().mean() >= 0.75
    if "mobilenet" in name:
        assert any(isinstance(module, nn.ReLU6) for module in prepared.modules())  # ReLU6 kept, fused into its point


def test_prepared_model_trains_and_updates_ranges():
    model = prepare_qat(create_model("cifar_resnet20", num_classes=10, in_chans=1)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    first = model.activation_quantizers["model_input"]
    batch_min, batch_max = float(x.min()), float(x.max())
    assert first.min_value.item() == pytest.approx(batch_min)  # same batch twice: the average stays put
    assert first.max_value.item() == pytest.approx(batch_max)
    scale, zero_point = activation_qparams(first.min_value, first.max_value, 0, 255)
    assert first.scale.item() == scale.item() and first.zero_point.item() == zero_point.item()
    third = x * 2
    model(third)
    assert first.max_value.item() == pytest.approx(0.99 * batch_max + 0.01 * float(third.max()))


def test_moving_average_uses_the_range_before_each_batch():
    quantizer = ActivationQuantizer().train()
    quantizer(torch.tensor([0.0, 1.0]))
    scale_before = quantizer.scale.clone()
    out = quantizer(torch.tensor([0.0, 3.0]))
    assert out[1].item() == pytest.approx(255 * scale_before.item())  # quantized with the earlier range (clamped)
    assert quantizer.max_value.item() == pytest.approx(0.99 * 1.0 + 0.01 * 3.0)
    quantizer.eval()
    quantizer(torch.tensor([0.0, 100.0]))
    assert quantizer.max_value.item() == pytest.approx(1.02)  # eval never observes


def test_lsq_learns_its_step_size():
    model = prepare_qat(create_model("cifar_resnet20", num_classes=10, in_chans=1), {"observer": "lsq"}).train()
    quantizer = model.activation_quantizers["layer1_0_relu1"]
    assert isinstance(quantizer.scale, nn.Parameter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()  # the first batch seeds the step sizes
    seeded = quantizer.scale.detach().clone()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert quantizer.scale.grad is not None and quantizer.scale.grad.abs().item() > 0
    optimizer.step()
    assert quantizer.scale.item() != seeded.item()


def test_state_dict_restores_quantization_exactly():
    torch.manual_seed(0)
    source = prepare_qat(create_model("cifar_resnet20", num_classes=10, in_chans=1)).train()
    source(torch.randn(8, 1, 28, 28))
    target = prepare_qat(create_model("cifar_resnet20", num_classes=10, in_chans=1))
    target.load_state_dict(source.state_dict())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))
    assert "activation_quantizers.model_input.scale" in source.state_dict()
    assert "layer1.0.conv1.bn.running_var" in source.state_dict()


def test_calibrate_averages_batch_ranges_and_accepts_labelled_batches():
    model = trained_statistics(create_model("cifar_resnet20", num_classes=10, in_chans=1), (1, 28, 28))
    batches = [(torch.rand(4, 1, 28, 28) * scale, torch.zeros(4, dtype=torch.long)) for scale in (1.0, 3.0, 5.0)]
    calibrated = calibrate(model, batches, num_batches=2)
    first = calibrated.activation_quantizers["model_input"]
    expected = (float(batches[0][0].max()) + float(batches[1][0].max())) / 2
    assert first.max_value.item() == pytest.approx(expected)
    assert not bool(first.observer_enabled) and not calibrated.training
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(calibrated)


class _WithLocalResponseNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(1, 4, 3), nn.LocalResponseNorm(2), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


class _WithCumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.cumsum(self.a(x), dim=1)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else x


class _SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


@pytest.mark.parametrize(
    "model,message",
    [
        (_WithLocalResponseNorm(), "module 'norm' (LocalResponseNorm)"),
        (_WithCumsum(), "call_function 'cumsum' in the model's forward"),
        (_DataDependent(), "cannot trace _DataDependent with torch.fx"),
        (_SharedConv(), "module 'conv' (Conv2d) is called 2 times"),
        (nn.Sequential(nn.Conv2d(1, 4, 3)), "bare Sequential"),
    ],
    ids=["local-response-norm", "cumsum", "data-dependent", "shared", "sequential"],
)
def test_unsupported_models_fail_at_prepare_naming_the_op(model, message):
    with pytest.raises(UnsupportedModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_qat(model)
