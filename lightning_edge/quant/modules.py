"""Quantization-aware replacements for Conv2d (with its BatchNorm folded in), Linear and a lone BatchNorm2d.

Each keeps the original parameters under their original names (``weight``, ``bias``; a folded BatchNorm
as ``bn``), so optimizers, pruning masks and checkpoints keep addressing them.

Folding (Jacob et al., 2018; PyTorch's ``ConvBn2d``): the weight that gets quantized is the folded
``w * gamma / sqrt(running_var + eps)``. While BatchNorm statistics still train, the convolution with the
quantized folded weight is divided back by the folding factor and normalised with the batch's statistics,
so running statistics keep updating; once frozen (and in eval), the layer is exactly the deployed integer
layer: ``conv(x, fq(w_folded)) + fq_int32(b_folded)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_edge.quant.qparams import (
    bias_scale,
    fake_quantize_bias,
    fake_quantize_weight,
    quantize_bias,
    quantize_weight,
    weight_range,
    weight_scales,
)
from lightning_edge.quant.quantizers import ActivationQuantizer, SharedQuantizer

# |gamma / std| below this is lifted (sign kept) for the training-time division; see QuantConv2d.
_MIN_FOLD_FACTOR = 1e-5

InputQuantizer = ActivationQuantizer | SharedQuantizer
# Buffers the ONNX export sets on its copy of a layer: the deployed weight and bias, already on their grids,
# and the weight's per-channel scales.
EXPORT_WEIGHT, EXPORT_BIAS, EXPORT_SCALE = "export_weight", "export_bias", "export_weight_scale"


class _QuantWeightMixin:
    """What the quantized weighted layers share: weight bit width, the input's quantizer, on/off flags."""

    weight: nn.Parameter

    def _init_quant(self, weight_bits: int) -> None:
        self.weight_bits = int(weight_bits)
        self.weight_quant_min, self.weight_quant_max = weight_range(weight_bits)
        self.register_buffer("fake_quant_enabled", torch.ones((), dtype=torch.bool))
        self._input_quantizer: list[InputQuantizer] = []

    def attach_input_quantizer(self, quantizer: InputQuantizer) -> None:
        """The quantizer whose grid this layer's input lies on: its scale sets the int32 bias scale."""
        self._input_quantizer = [quantizer]

    @property
    def input_quantizer(self) -> InputQuantizer | None:
        return self._input_quantizer[0] if self._input_quantizer else None

    def _input_scale(self) -> torch.Tensor | None:
        quantizer = self.input_quantizer
        return quantizer.qparams()[0] if quantizer is not None and quantizer.active else None

    def deployed_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The float weight and bias of the deployed layer (BatchNorm folded), before quantization."""
        raise NotImplementedError

    @torch.no_grad()
    def integer_weight_and_bias(self) -> dict[str, torch.Tensor | None]:
        """What the export writes: int8 weight codes, per-channel scales, int32 bias codes and their scales."""
        weight, bias = self.deployed_weight_and_bias()
        input_scale = self._input_scale()
        scale = weight_scales(weight, self.weight_quant_max, bias, input_scale)
        codes = quantize_weight(weight, scale, self.weight_quant_min, self.weight_quant_max)
        result = {"weight": codes, "weight_scale": scale, "bias": None, "bias_scale": None, "float_bias": None}
        if bias is not None and input_scale is not None:
            result["bias_scale"] = bias_scale(input_scale, scale)
            result["bias"] = quantize_bias(bias, result["bias_scale"])
        elif bias is not None:
            result["float_bias"] = bias.detach().float()
        return result

    @torch.no_grad()
    def attach_export_tensors(self) -> dict[str, torch.Tensor | None]:
        """Fix the deployed weight and bias as buffers (on their grids) for the ONNX export; return the codes."""
        integers = self.integer_weight_and_bias()
        shape = (-1,) + (1,) * (integers["weight"].dim() - 1)
        self.register_buffer(EXPORT_WEIGHT, integers["weight"].float() * integers["weight_scale"].reshape(shape))
        self.register_buffer(EXPORT_SCALE, integers["weight_scale"])
        if integers["bias"] is not None:
            self.register_buffer(EXPORT_BIAS, integers["bias"].float() * integers["bias_scale"])
        elif integers["float_bias"] is not None:
            self.register_buffer(EXPORT_BIAS, integers["float_bias"])
        return integers

    def _exported_weight(self) -> torch.Tensor:
        """The fixed weight as a per-channel fake-quant op: the TorchScript exporter writes it as Q/DQ (axis 0).

        That exporter accepts only the range [-128, 127]; the codes stay in [-127, 127] as the scales are absmax/127.
        """
        scale = self._buffers[EXPORT_SCALE]
        zero_point = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(self._buffers[EXPORT_WEIGHT], scale, zero_point, 0, -128, 127)

    def quantized_weight_and_bias(
        self, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(fake-quantized weight, bias on its int32 grid, per-channel weight scales), as deployed."""
        input_scale = self._input_scale()
        scale = weight_scales(weight, self.weight_quant_max, bias, input_scale)
        quantized = fake_quantize_weight(weight, scale, self.weight_quant_min, self.weight_quant_max)
        if bias is not None and input_scale is not None:
            bias = fake_quantize_bias(bias.float(), bias_scale(input_scale, scale))
        return quantized, bias, scale


class QuantConv2d(_QuantWeightMixin, nn.Conv2d):
    """A Conv2d whose weights are fake-quantized per output channel, with an optional BatchNorm folded in.

    Built by ``prepare_qat`` from an existing convolution (and the BatchNorm that follows it).
    """

    def __init__(self, *args, weight_bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits)
        self.bn: nn.BatchNorm2d | None = None
        self.register_buffer("bn_frozen", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, weight_bits: int = 8) -> "QuantConv2d":
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} has no INT8 equivalent; use zero padding")
        quantized = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, weight_bits=weight_bits,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        quantized.weight = conv.weight
        if conv.bias is not None:
            quantized.bias = conv.bias
        if bn is not None:
            quantized.bn = _plain_batch_norm(bn)
        quantized.train(conv.training)
        return quantized

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}" + (", bn folded" if self.bn is not None else "")

    def deployed_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.folded_weight_and_bias()

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias with the BatchNorm's running statistics folded in (the deployed float layer)."""
        if self.bn is None:
            return self.weight, self.bias
        factor = self._fold_factor()
        weight = self.weight * factor.reshape(-1, 1, 1, 1)
        bias = self.bias if self.bias is not None else torch.zeros_like(self.bn.running_mean)
        return weight, self.bn.bias + (bias - self.bn.running_mean) * factor

    def _fold_factor(self) -> torch.Tensor:
        return self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if EXPORT_WEIGHT in self._buffers:
            return self._conv_forward(x, self._exported_weight(), self._buffers.get(EXPORT_BIAS))
        if not bool(self.fake_quant_enabled):
            out = self._conv_forward(x, self.weight, self.bias)
            return self.bn(out) if self.bn is not None else out
        if self.bn is not None and self.training and not bool(self.bn_frozen):
            return self._forward_training_statistics(x)
        weight, bias = self.folded_weight_and_bias()
        weight, bias, _ = self.quantized_weight_and_bias(weight, bias)
        return self._conv_forward(x, weight, bias)

    def _forward_training_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the weight folded with running statistics, then normalise with the batch's statistics.

        ``conv(x, fq(w * f)) / f`` is computed as ``conv(x, fq(w * f) / f)``: the same numbers, but the division
        touches the small weight instead of the whole output (a QAT step then costs little more than FP32).
        """
        factor = self._fold_factor()
        # A zero gamma (zero-initialised residual branches) would make the division below 0/0; the quantized
        # pattern of w * factor does not depend on factor's size, so a tiny stand-in keeps gamma trainable.
        safe = (torch.where(factor >= 0, 1.0, -1.0) * factor.abs().clamp(min=_MIN_FOLD_FACTOR)).reshape(-1, 1, 1, 1)
        folded = self.weight * safe
        scale = weight_scales(folded, self.weight_quant_max)
        weight = fake_quantize_weight(folded, scale, self.weight_quant_min, self.weight_quant_max) / safe
        return self.bn(self._conv_forward(x, weight, self.bias))


class QuantLinear(_QuantWeightMixin, nn.Linear):
    """A Linear layer whose weights are fake-quantized per output feature, bias on its int32 grid."""

    def __init__(self, *args, weight_bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_bits: int = 8) -> "QuantLinear":
        quantized = cls(
            linear.in_features, linear.out_features, linear.bias is not None, weight_bits=weight_bits,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        quantized.weight = linear.weight
        if linear.bias is not None:
            quantized.bias = linear.bias
        quantized.train(linear.training)
        return quantized

    def deployed_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if EXPORT_WEIGHT in self._buffers:
            return F.linear(x, self._exported_weight(), self._buffers.get(EXPORT_BIAS))
        if not bool(self.fake_quant_enabled):
            return F.linear(x, self.weight, self.bias)
        weight, bias, _ = self.quantized_weight_and_bias(self.weight, self.bias)
        return F.linear(x, weight, bias)


class QuantBatchNorm2d(_QuantWeightMixin, nn.BatchNorm2d):
    """A BatchNorm2d with nothing to fold into (pre-activation networks): deployed as a depthwise 1x1 conv.

    Its per-channel weight ``gamma / std`` quantizes exactly (one value per channel is its own absmax), so
    only the int32 bias rounds. Statistics can be frozen with ``bn_frozen``, which survives ``.train()``.
    """

    def __init__(self, num_features: int, weight_bits: int = 8, **kwargs):
        super().__init__(num_features, **kwargs)
        self._init_quant(weight_bits)
        self.register_buffer("bn_frozen", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_float(cls, bn: nn.BatchNorm2d, weight_bits: int = 8) -> "QuantBatchNorm2d":
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("a BatchNorm2d without affine parameters or running statistics cannot become an int8 layer")
        quantized = cls(bn.num_features, weight_bits=weight_bits, eps=bn.eps, momentum=bn.momentum,
                        device=bn.weight.device, dtype=bn.weight.dtype)
        return _share_batchnorm_state(bn, quantized)

    def deployed_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.depthwise_weight_and_bias()

    def depthwise_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent depthwise 1x1 convolution: weight (C, 1, 1, 1) and bias (C,)."""
        factor = self.weight / torch.sqrt(self.running_var + self.eps)
        return factor.reshape(-1, 1, 1, 1), self.bias - self.running_mean * factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if EXPORT_WEIGHT in self._buffers:
            return F.conv2d(x, self._exported_weight(), self._buffers.get(EXPORT_BIAS), groups=self.num_features)
        if not bool(self.fake_quant_enabled) or (self.training and not bool(self.bn_frozen)):
            return super().forward(x)
        weight, bias = self.depthwise_weight_and_bias()
        weight, bias, _ = self.quantized_weight_and_bias(weight, bias)
        return F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), groups=self.num_features)


def _plain_batch_norm(bn: nn.Module) -> nn.BatchNorm2d:
    """The BatchNorm2d part of ``bn`` (timm's BatchNormAct2d carries its activation separately)."""
    if type(bn) is nn.BatchNorm2d:
        return bn
    plain = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                           track_running_stats=bn.track_running_stats, device=bn.weight.device, dtype=bn.weight.dtype)
    return _share_batchnorm_state(bn, plain)


def _share_batchnorm_state(source: nn.Module, target: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """``target`` takes over ``source``'s parameters, running statistics and train/eval mode (the same tensors)."""
    target.weight, target.bias = source.weight, source.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(target, name, getattr(source, name))
    target.train(source.training)
    return target
