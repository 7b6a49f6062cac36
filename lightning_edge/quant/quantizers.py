"""Activation quantizers: where an int8 tensor lives in the deployed model, these simulate it in training.

An :class:`ActivationQuantizer` observes its input's range, derives a per-tensor uint8 scale and zero point
(``qparams.activation_qparams``) and fake-quantizes with half-to-even rounding. Two ways to learn the range:

- ``"minmax"`` (default): an exponential moving average of each batch's min and max, as PyTorch's
  ``MovingAverageMinMaxObserver``. A batch is quantized with the range seen *before* it, then observed, so
  every DDP rank quantizes a step with the same synchronised range.
- ``"lsq"``: learned step size (Esser et al., 2020): the scale is a parameter trained by gradient descent
  (gradient scaled by ``1 / sqrt(numel * quant_max)``), initialised from the first observed batch.

All state is in buffers (and the LSQ parameter), so a checkpoint restores a quantizer exactly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lightning_edge.quant.qparams import MIN_SCALE, activation_qparams, activation_range, fake_quantize

OBSERVERS = ("minmax", "lsq")


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a tensor per tensor onto asymmetric uint8 (``bits`` wide).

    Args:
        observer: ``"minmax"`` (moving-average min/max) or ``"lsq"`` (learned step size).
        bits: 8 gives codes [0, 255]; 7 gives [0, 127], which the runtime's fast u8 x s8 path multiplies exactly.
        averaging_constant: weight of each new batch in the moving averages.
        nonnegative: the input is a ReLU/ReLU6 output, never below zero (a cheaper gradient mask).
    """

    def __init__(self, observer: str = "minmax", bits: int = 8, averaging_constant: float = 0.01,
                 nonnegative: bool = False):
        super().__init__()
        if observer not in OBSERVERS:
            raise ValueError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.observer = observer
        self.quant_min, self.quant_max = activation_range(bits)
        self.averaging_constant = float(averaging_constant)
        self.nonnegative = bool(nonnegative)
        self.register_buffer("min_value", torch.zeros(()))
        self.register_buffer("max_value", torch.zeros(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("observer_enabled", torch.ones((), dtype=torch.bool))
        self.register_buffer("fake_quant_enabled", torch.ones((), dtype=torch.bool))
        self.register_buffer("calibration_batches", torch.zeros((), dtype=torch.int64))
        if observer == "lsq":
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scale", torch.ones(()))
        # Calibration (PTQ) observes in eval mode and averages batches equally; set by ``calibrate``.
        self.calibrating = False
        # The batch's range over the inputs of a concat that share this grid (``SharedQuantizer(widens=True)``).
        self._members_range: tuple[torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"observer={self.observer}, quant_range=({self.quant_min}, {self.quant_max}), nonnegative={self.nonnegative}"

    @property
    def active(self) -> bool:
        """Whether this quantizer changes its input (enabled and given a range)."""
        return bool(self.fake_quant_enabled) and bool(self.initialized)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current (scale, zero_point): float32 and int32 scalars."""
        return self.scale.detach().float().clamp(min=MIN_SCALE), self.zero_point

    @property
    def observing(self) -> bool:
        """Whether the next batch updates the range (training or calibrating, observer on)."""
        return bool(self.fake_quant_enabled) and bool(self.observer_enabled) and (self.training or self.calibrating)

    @torch.no_grad()
    def note_member_range(self, x: torch.Tensor) -> None:
        """Widen this batch's range by ``x``: a concat input on this grid, seen before the concat's output.

        The output only holds values already clamped to the current range, so without its inputs' own ranges
        a shared concat range could never grow.
        """
        low, high = torch.aminmax(x.detach().float())
        if self._members_range is not None:
            low, high = torch.minimum(low, self._members_range[0]), torch.maximum(high, self._members_range[1])
        self._members_range = (low, high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fake_quant_enabled):
            return x
        observing = self.observing
        if observing and not bool(self.initialized):
            self._observe(x)
            observing = False
        if not bool(self.initialized):
            return x  # evaluated before any batch was seen: nothing to quantize with yet
        out = self._fake_quantize(x)
        if observing:
            self._observe(x)
        return out

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            x = x.float()  # ranges and rounding in float32 also under bf16/fp16 autocast
        if self.observer == "lsq" and not torch.onnx.is_in_onnx_export():
            return _lsq_fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
        if torch.onnx.is_in_onnx_export():  # the op the exporter writes as QuantizeLinear/DequantizeLinear
            return torch.fake_quantize_per_tensor_affine(
                x, self.scale.detach(), self.zero_point, self.quant_min, self.quant_max
            )
        # Python numbers: exact for a float32 scale and an integer zero point, and much faster bounds on CPU.
        return fake_quantize(x, float(self.scale), int(self.zero_point), self.quant_min, self.quant_max, self.nonnegative)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        batch_min, batch_max = torch.aminmax(x.detach().float())
        if self._members_range is not None:
            batch_min = torch.minimum(batch_min, self._members_range[0])
            batch_max = torch.maximum(batch_max, self._members_range[1])
            self._members_range = None
        if not bool(self.initialized):
            self.min_value.copy_(batch_min)
            self.max_value.copy_(batch_max)
        else:
            weight = 1.0 / float(self.calibration_batches + 1) if self.calibrating else self.averaging_constant
            self.min_value.lerp_(batch_min, weight)
            self.max_value.lerp_(batch_max, weight)
        if self.calibrating:
            self.calibration_batches += 1
        if self.observer == "lsq" and bool(self.initialized):
            return  # the step size is learned once initialised; the observer only seeds it
        self.update_qparams()
        self.initialized.fill_(True)

    @torch.no_grad()
    def update_qparams(self) -> None:
        """Recompute scale and zero point from the observed range (after observing, or after a DDP reduce)."""
        scale, zero_point = activation_qparams(self.min_value, self.max_value, self.quant_min, self.quant_max)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)


class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``factor`` (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def _lsq_fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int
) -> torch.Tensor:
    """LSQ: round-to-grid with straight-through rounding; the scale's gradient flows through the division."""
    factor = 1.0 / math.sqrt(x.numel() * quant_max)
    step = _GradScale.apply(scale.clamp(min=MIN_SCALE), factor)
    codes = x / step + zero_point.float()
    codes = codes + (torch.round(codes) - codes).detach()
    codes = torch.clamp(codes, quant_min, quant_max)
    return (codes - zero_point.float()) * step


class SharedQuantizer(nn.Module):
    """Re-applies another quantizer's grid after an op that keeps values on it (max pool, flatten, padding).

    Numerically an identity on already-quantized values; it marks, for the export, that the consumer reads
    an int8 tensor with the source's scale and zero point. With ``widens`` it quantizes an input of a concat
    onto the concat's grid (the source) and lets its range count in the source's (``note_member_range``).
    """

    def __init__(self, source: ActivationQuantizer, widens: bool = False):
        super().__init__()
        self._source = [source]  # a plain reference: the source's state belongs to the module that owns it
        self.widens = bool(widens)

    def extra_repr(self) -> str:
        return "widens=True" if self.widens else ""

    @property
    def source(self) -> ActivationQuantizer:
        return self._source[0]

    @property
    def active(self) -> bool:
        return self.source.active

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.qparams()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.widens and self.source.observing:
            self.source.note_member_range(x)
        return self.source._fake_quantize(x) if self.source.active else x
