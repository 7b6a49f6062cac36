"""The quantization parameters of INT8_SPEC.md, computed in one place for QAT, PTQ, export and tests.

Activations are per-tensor asymmetric uint8 (``real = scale * (q - zero_point)``, q in [0, 2^bits - 1]);
weights are per-output-channel symmetric int8 in [-127, 127] (zero point 0); biases are int32 with
scale ``s_x * s_w[c]``. Rounding is half to even everywhere, as ``torch.round`` and ONNX do.
"""
from __future__ import annotations

import torch

# The smallest scale we hand out: a constant tensor (all zeros) still gets a valid, finite mapping.
MIN_SCALE = float(torch.finfo(torch.float32).eps)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# A bias may use at most this share of the int32 range, so the accumulator keeps headroom for the products.
_BIAS_LIMIT = 2**30


def activation_range(bits: int = 8) -> tuple[int, int]:
    """The uint8 code range of an activation: [0, 255] at 8 bits, [0, 127] at 7 (exact u8s8 products)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"activation bits must be between 2 and 8, got {bits}")
    return 0, 2 ** int(bits) - 1


def weight_range(bits: int = 8) -> tuple[int, int]:
    """The symmetric int8 code range of a weight: [-127, 127] at 8 bits (never -128)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"weight bits must be between 2 and 8, got {bits}")
    limit = 2 ** (int(bits) - 1) - 1
    return -limit, limit


def activation_qparams(
    min_value: torch.Tensor, max_value: torch.Tensor, quant_min: int, quant_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map [min, max] (widened to hold 0 exactly) onto [quant_min, quant_max].

    Zero must be representable exactly: ReLU outputs, zero padding and pooling borders rely on it.
    """
    low = torch.clamp(min_value.float(), max=0.0)
    high = torch.clamp(max_value.float(), min=0.0)
    scale = torch.clamp((high - low) / float(quant_max - quant_min), min=MIN_SCALE)
    zero_point = torch.clamp(quant_min - torch.round(low / scale), quant_min, quant_max).to(torch.int32)
    return scale, zero_point


def weight_scales(
    weight: torch.Tensor,
    quant_max: int = 127,
    bias: torch.Tensor | None = None,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-output-channel scales ``max|w[c]| / quant_max`` for a weight whose first dimension is the channel.

    With ``bias`` and ``input_scale`` a channel's scale is raised where needed so that its int32 bias
    ``round(b / (s_x * s_w))`` stays within 2^30 (a channel whose weights are all zero, as a zero-initialised
    BatchNorm gamma folds to, would otherwise get a bias scale near zero).
    """
    absmax = weight.detach().abs().flatten(1).amax(dim=1).float()
    scale = torch.clamp(absmax / float(quant_max), min=MIN_SCALE)
    if bias is not None and input_scale is not None:
        needed = bias.detach().abs().float() / (input_scale.detach().float() * _BIAS_LIMIT)
        scale = torch.maximum(scale, needed)
    return scale


def bias_scale(input_scale: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """``s_x * s_w[c]`` in float32: the scale of the int32 bias and of the accumulator (INT8_SPEC rule 4)."""
    return input_scale.float() * weight_scale.float()


def quantize_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int32 codes of ``bias`` at ``scale`` (half-to-even rounding), as int64 for exact arithmetic."""
    return torch.clamp(torch.round(bias.detach().float() / scale), INT32_MIN, INT32_MAX).to(torch.int64)


def fake_quantize_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``bias`` rounded onto its int32 grid, with a straight-through gradient."""
    rounded = torch.clamp(torch.round(bias / scale), INT32_MIN, INT32_MAX) * scale
    return bias + (rounded - bias).detach()


class _FakeQuantize(torch.autograd.Function):
    """``(clamp(round(x / scale) + zero_point) - zero_point) * scale``; the gradient passes where not clamped.

    Divides as ONNX ``QuantizeLinear`` does (PyTorch's own kernel multiplies by 1/scale, which rounds some
    ties the other way), clamps to ``[quant_min - z, quant_max - z]`` instead of adding and removing z (the
    same integers), and runs as a few vectorised in-place passes: about twice as fast on CPU as
    ``torch.fake_quantize_per_tensor_affine``, forward plus backward. For an input known to be non-negative
    (after a ReLU) the lower bound can never clamp, which saves the mask two passes. Per-tensor parameters
    are best given as Python numbers: clamping to tensor bounds is an order of magnitude slower on CPU.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min, quant_max, nonnegative):
        if isinstance(zero_point, torch.Tensor):
            low, high = (quant_min - zero_point).to(x.dtype), (quant_max - zero_point).to(x.dtype)
        else:
            low, high = quant_min - zero_point, quant_max - zero_point
        codes = torch.div(x, scale).round_()
        # The mask is kept in x's float type: comparisons into bool tensors, and multiplying by them, are
        # several times slower on CPU than the same passes in float32.
        inside = torch.le(codes, high, out=torch.empty_like(codes))
        if not nonnegative:
            inside.mul_(torch.ge(codes, low, out=torch.empty_like(codes)))
        ctx.save_for_backward(inside)
        return codes.clamp_(low, high).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    quant_min: int,
    quant_max: int,
    nonnegative: bool = False,
) -> torch.Tensor:
    """Fake-quantize ``x`` (float32) onto ``scale`` and ``zero_point`` (broadcast: per tensor or per channel).

    ``nonnegative``: ``x`` is never below zero (a ReLU output), so only the upper bound needs a gradient mask.
    """
    return _FakeQuantize.apply(x, scale, zero_point, quant_min, quant_max, nonnegative)


def fake_quantize_weight(weight: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization (axis 0), straight-through inside the range."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return fake_quantize(weight.float(), scale.float().reshape(shape), 0, quant_min, quant_max)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int) -> torch.Tensor:
    """The int8 codes of a weight (axis 0 channels), half-to-even."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.clamp(torch.round(weight.detach().float() / scale.reshape(shape)), quant_min, quant_max).to(torch.int8)
