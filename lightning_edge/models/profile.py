"""Size and cost of a network: parameters, multiply-accumulates and bytes, counted the same way everywhere."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of the state dict's tensors as stored (parameters and buffers, FP32 for a float model)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the conv and linear weights: FP32, INT8 dense, and INT8 as the runtime's .edge file stores them
    (a mostly-zero tensor compressed to a bitmask and its nonzero values), so pruning's saving shows."""
    from lightning_edge.runtime.edge_format import sparse_int8_bytes  # numpy only

    weights = [module.weight.detach() for module in model.modules()
               if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(getattr(module, "weight", None), torch.Tensor)]
    count = sum(weight.numel() for weight in weights)
    stored = sum(min(weight.numel(), sparse_int8_bytes(weight.numel(), int(torch.count_nonzero(weight)))) for weight in weights)
    return {"fp32": 4 * count, "int8_dense": count, "int8_sparse": stored}


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kernel_macs = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    return output.numel() // output.shape[0] * kernel_macs


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() // output.shape[0] * module.in_features


_MAC_COUNTERS = {nn.Conv2d: _conv_macs, nn.Linear: _linear_macs}


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass for one sample of ``input_shape`` (C, H, W).

    Counts convolutions and linear layers, the layers that dominate cost on the edge; BN, activations
    and pooling are left out, as in the papers' MAC tables.
    """
    per_layer = macs_per_layer(model, input_shape)
    return sum(per_layer.values())


@torch.no_grad()
def macs_per_layer(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates per convolution and linear layer, keyed by module path."""
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        counter = next((fn for kind, fn in _MAC_COUNTERS.items() if isinstance(module, kind)), None)
        if counter is None:
            continue

        def hook(mod, _inputs, output, name=name, counter=counter):
            counts[name] = counts.get(name, 0) + counter(mod, output)

        handles.append(module.register_forward_hook(hook))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts


@dataclass(frozen=True)
class ModelProfile:
    """The numbers every summary reports for a network."""

    parameters: int
    macs: int
    model_bytes: int
    input_shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Parameters, MACs for one sample of ``input_shape`` and FP32 bytes of ``model``."""
    return ModelProfile(count_parameters(model), count_macs(model, input_shape), model_bytes(model), tuple(input_shape))
