"""``prepare_qat``: turn a float network into its fake-quantized twin, in place or on a copy.

The model keeps its class, forward code and module paths. Convolutions (with the BatchNorm that follows
folded in), linear layers and lone BatchNorms become their ``lightning_edge.quant.modules`` versions; every
int8 point of the plan (``graph.build_plan``) gets an :class:`ActivationQuantizer` in the model's
``activation_quantizers`` dict and a forward hook on its anchor module, or, for the result of a functional
call in ``forward``, a place in the network's ``calls.CallQuantization``. The helpers below switch the
pieces a QAT schedule needs: fake quantization, observers, BatchNorm statistics; and make DDP ranks agree.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lightning_edge.quant.calls import CallQuantization, call_points
from lightning_edge.quant.graph import QuantPlan, build_plan
from lightning_edge.quant.modules import QuantBatchNorm2d, QuantConv2d, QuantLinear
from lightning_edge.quant.quantizers import OBSERVERS, ActivationQuantizer, SharedQuantizer
from lightning_edge.quant.qparams import activation_range, weight_range

QUANTIZERS_ATTRIBUTE = "activation_quantizers"
QUANTIZED_LAYERS = (QuantConv2d, QuantLinear, QuantBatchNorm2d)


@dataclass(frozen=True)
class QuantConfig:
    """How a network is quantized.

    Args:
        observer: ``"minmax"`` (moving-average min/max ranges, the default) or ``"lsq"`` (learned step sizes).
        activation_bits: 8 (codes 0..255) or 7 (0..127: the runtime's u8 x s8 products can never saturate).
        weight_bits: 8 gives symmetric codes -127..127.
        averaging_constant: weight of each new batch in the moving-average ranges.
        input_shape: (C, H, W) of one input, for a network whose forward branches on its input's size (timm's
            MobileViT resizes only when H or W is not a multiple of its patch): the trace is specialised to this
            size, and the network must then run at it. None (the default) traces without sizes.
    """

    observer: str = "minmax"
    activation_bits: int = 8
    weight_bits: int = 8
    averaging_constant: float = 0.01
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            shape = tuple(self.input_shape)  # a checkpoint or a Hydra config gives a list
            if not shape or not all(isinstance(size, int) and size > 0 for size in shape):
                raise ValueError(f"input_shape must be positive sizes (C, H, W) of one input, got {self.input_shape!r}")
            object.__setattr__(self, "input_shape", shape)
        if self.observer not in OBSERVERS:
            raise ValueError(f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}")
        activation_range(self.activation_bits)
        weight_range(self.weight_bits)

    @classmethod
    def create(cls, config: "QuantConfig | Mapping[str, Any] | None") -> "QuantConfig":
        if config is None or isinstance(config, QuantConfig):
            return config or cls()
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown quantization options {unknown}; known: {sorted(known)}")
        return cls(**dict(config))

    def as_dict(self) -> dict[str, Any]:
        """Plain values (a list for ``input_shape``), as a checkpoint or a YAML file stores them."""
        values = asdict(self)
        if self.input_shape is not None:
            values["input_shape"] = list(self.input_shape)
        return values


def prepare_qat(
    model: nn.Module, config: QuantConfig | Mapping[str, Any] | None = None, inplace: bool = False
) -> nn.Module:
    """A fake-quantized version of ``model`` (a copy unless ``inplace``), ready for QAT or calibration.

    Weights are quantized per output channel (symmetric int8), activations per tensor (asymmetric uint8)
    at every point where the INT8 runtime holds an int8 tensor; Conv+BN pairs train with simulated
    folding. Raises ``UnsupportedModelError`` naming the op or module the runtime cannot run.
    """
    if is_prepared(model):
        raise ValueError(f"{type(model).__name__} is already prepared for quantization (it has {QUANTIZERS_ATTRIBUTE})")
    config = QuantConfig.create(config)
    plan = build_plan(model, config.input_shape)
    if not inplace:
        model = copy.deepcopy(model)
    if hasattr(model, QUANTIZERS_ATTRIBUTE):
        raise ValueError(f"{type(model).__name__} already has an attribute {QUANTIZERS_ATTRIBUTE!r}; rename it to quantize")
    _replace_layers(model, plan, config)
    quantizers = _build_quantizers(plan, config)
    device = next((tensor.device for tensor in model.parameters()), torch.device("cpu"))
    model.add_module(QUANTIZERS_ATTRIBUTE, quantizers.to(device))
    for point in plan.points:
        anchor = model.get_submodule(point.anchor)
        quantizer = quantizers[point.name]
        if point.where == "output":
            anchor.register_forward_hook(functools.partial(_quantize_output, quantizer))
        elif point.where == "input":
            anchor.register_forward_pre_hook(functools.partial(_quantize_input, quantizer))
    if call_points(plan):
        CallQuantization(plan, quantizers).install(model, plan.opaque)
    for fold in plan.folds:
        _quantized_layer(model, fold.path).attach_input_quantizer(quantizers[fold.input_point])
    model.quant_plan = plan
    model.quant_config = config
    quantizers.train(model.training)
    return model


def _replace_layers(model: nn.Module, plan: QuantPlan, config: QuantConfig) -> None:
    for fold in plan.folds:
        layer = model.get_submodule(fold.path)
        if fold.kind == "conv":
            bn = model.get_submodule(fold.bn_path) if fold.bn_path else None
            _set_submodule(model, fold.path, QuantConv2d.from_float(layer, bn, config.weight_bits))
            if bn is not None:
                _set_submodule(model, fold.bn_path, _activation_of(bn))
        elif fold.kind == "linear":
            _set_submodule(model, fold.path, QuantLinear.from_float(layer, config.weight_bits))
        else:
            quantized = QuantBatchNorm2d.from_float(layer, config.weight_bits)
            act = _activation_of(layer)
            _set_submodule(model, fold.path, quantized if isinstance(act, nn.Identity) else nn.Sequential(quantized, act))


def _quantized_layer(model: nn.Module, path: str) -> nn.Module:
    """The quantized layer at ``path``: a lone BatchNorm with an activation became ``Sequential(layer, act)``."""
    layer = model.get_submodule(path)
    return layer[0] if isinstance(layer, nn.Sequential) else layer


def _activation_of(bn: nn.Module) -> nn.Module:
    """What remains of a BatchNorm once folded away: timm's BatchNormAct2d keeps its activation."""
    act = getattr(bn, "act", None)
    return act if isinstance(act, nn.Module) else nn.Identity()


def _build_quantizers(plan: QuantPlan, config: QuantConfig) -> nn.ModuleDict:
    quantizers = nn.ModuleDict()
    for point in plan.points:
        if point.source is None:
            quantizers[point.name] = ActivationQuantizer(
                config.observer, config.activation_bits, config.averaging_constant, nonnegative=point.nonnegative
            )
    for point in plan.points:
        if point.source is not None:
            quantizers[point.name] = SharedQuantizer(quantizers[point.source], widens=point.widens_source)
    return quantizers


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, module)


def _quantize_output(quantizer: nn.Module, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return quantizer(output)


def _quantize_input(quantizer: nn.Module, module: nn.Module, args: tuple) -> tuple:
    return (quantizer(args[0]),) + tuple(args[1:])


def is_prepared(model: nn.Module) -> bool:
    """Whether ``prepare_qat`` has run on ``model``."""
    return isinstance(getattr(model, QUANTIZERS_ATTRIBUTE, None), nn.ModuleDict)


def activation_quantizers(model: nn.Module) -> Iterator[ActivationQuantizer]:
    """Every quantizer that owns a range (shared ones reuse these)."""
    return (module for module in model.modules() if isinstance(module, ActivationQuantizer))


def quantized_layers(model: nn.Module) -> Iterator[nn.Module]:
    return (module for module in model.modules() if isinstance(module, QUANTIZED_LAYERS))


def inactive_quantizers(model: nn.Module) -> list[str]:
    """Names of the activation quantizers that do not quantize yet: switched off, or without a range."""
    return [name for name, module in model.named_modules() if isinstance(module, ActivationQuantizer) and not module.active]


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Switch simulation on or off: off, the model computes exactly as the float network (unfolded BN)."""
    for module in list(activation_quantizers(model)) + list(quantized_layers(model)):
        module.fake_quant_enabled.fill_(bool(enabled))


def set_observers(model: nn.Module, enabled: bool) -> None:
    """Keep updating activation ranges (True) or hold them fixed from now on (False)."""
    for quantizer in activation_quantizers(model):
        quantizer.observer_enabled.fill_(bool(enabled))


def freeze_batchnorm(model: nn.Module, frozen: bool = True) -> None:
    """Use (and stop updating) BatchNorm running statistics in training, as the deployed folded layers do."""
    for module in quantized_layers(model):
        if hasattr(module, "bn_frozen"):
            module.bn_frozen.fill_(bool(frozen))


@torch.no_grad()
def synchronize_observers(model: nn.Module) -> None:
    """Give every DDP rank the same ranges: min of the minima, max of the maxima, then fresh scales.

    Each rank's moving average starts from the same state, so this equals observing the global batch.
    Learned (LSQ) scales come from rank 0. A no-op outside an initialised process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    quantizers = list(activation_quantizers(model))
    if not quantizers:
        return
    minima = torch.stack([quantizer.min_value for quantizer in quantizers])
    maxima = torch.stack([quantizer.max_value for quantizer in quantizers])
    initialized = torch.stack([quantizer.initialized for quantizer in quantizers]).to(torch.int32)
    dist.all_reduce(minima, op=dist.ReduceOp.MIN)
    dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
    dist.all_reduce(initialized, op=dist.ReduceOp.MIN)
    for index, quantizer in enumerate(quantizers):
        if not bool(initialized[index]):
            continue
        quantizer.min_value.copy_(minima[index])
        quantizer.max_value.copy_(maxima[index])
        if quantizer.observer == "lsq":
            dist.broadcast(quantizer.scale.data, src=0)
            dist.broadcast(quantizer.zero_point, src=0)
        else:
            quantizer.update_qparams()
