"""Physical channel removal, and the architecture record that lets a pruned network load back.

``remove_channels`` slices every layer of each :class:`ChannelGroup` in place: the producers' filters, the
BatchNorms' affine parameters and statistics, depthwise filters and the consumers' input slices, so the
result is an ordinary dense network with fewer channels and fewer MACs. The replaced parameters are recorded, and ``shrink_optimizer_state`` points an optimizer built before the
surgery at their successors, its momentum sliced the same way, so training carries on.

``architecture`` records each conv, linear and BatchNorm's widths; ``apply_architecture`` reshapes a freshly
built network to them before a pruned checkpoint's state dict is loaded.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_edge.prune.dependency import ChannelGroup

# The checkpoint key holding a pruned network's widths (``architecture``); ``load_weights`` applies it.
ARCHITECTURE_KEY = "pruned_architecture"

Slicer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Sliced:
    """One parameter replaced by ``remove_channels``: its successor, its shape before, and how it was sliced."""

    new: nn.Parameter
    original_shape: torch.Size
    slicers: list[Slicer]


# Replaced parameters, keyed by id() of the parameter an optimizer may still hold.
SliceRecord = dict[int, Sliced]


def _select(dim: int, keep: torch.Tensor) -> Slicer:
    return lambda tensor: tensor.index_select(dim, keep.to(tensor.device))


def _grouped_input_slicer(groups: int, keep: torch.Tensor, channels: int) -> Slicer:
    """Input-channel slice of a grouped conv's weight (out, in/groups, kh, kw): group j's rows keep the local
    indices of the channels kept in its block."""
    per_group = channels // groups
    local = [keep[(keep >= j * per_group) & (keep < (j + 1) * per_group)] - j * per_group for j in range(groups)]

    def slicer(weight: torch.Tensor) -> torch.Tensor:
        rows = weight.shape[0] // groups
        return torch.cat([weight[j * rows:(j + 1) * rows].index_select(1, local[j].to(weight.device))
                          for j in range(groups)])
    return slicer


@torch.no_grad()
def _shrink(module: nn.Module, names: tuple[str, ...], slicer: Slicer, record: SliceRecord) -> None:
    """Replace the named parameters and buffers of ``module``, and any buffer shaped like its weight (a pruning
    mask), by ``slicer`` of them. Parameters are replaced by new ones (autograd caches a leaf's shape), and
    ``record`` maps each original to its successor so an optimizer can follow."""
    weight_shape = module.weight.shape if isinstance(getattr(module, "weight", None), torch.Tensor) else None
    targets = [name for name in names if getattr(module, name, None) is not None]
    targets += [name for name, buffer in module.named_buffers(recurse=False)
                if name not in targets and weight_shape is not None and buffer.shape == weight_shape and "weight" in names]
    for name in targets:
        tensor = getattr(module, name)
        if not isinstance(tensor, nn.Parameter):
            setattr(module, name, slicer(tensor))
            continue
        replacement = nn.Parameter(slicer(tensor.detach()), requires_grad=tensor.requires_grad)
        if tensor.grad is not None:
            replacement.grad = slicer(tensor.grad)
        setattr(module, name, replacement)
        first = next((key for key, entry in record.items() if entry.new is tensor), id(tensor))
        previous = record.get(first)
        record[first] = Sliced(replacement, previous.original_shape if previous else tensor.shape,
                               (previous.slicers if previous else []) + [slicer])


def remove_channels(kept: Iterable[tuple[ChannelGroup, torch.Tensor]]) -> SliceRecord:
    """Keep only the ``keep`` channel indices of each group, in place; returns what was sliced."""
    record: SliceRecord = {}
    for group, keep in kept:
        keep = keep.sort().values
        width = int(keep.numel())
        if width == group.channels:
            continue
        select_out = _select(0, keep)
        for _, module in group.producers:
            _shrink(module, ("weight", "bias"), select_out, record)
            if isinstance(module, nn.Conv2d):
                module.out_channels = width
            else:
                module.out_features = width
        for _, module in group.depthwise:
            _shrink(module, ("weight", "bias"), select_out, record)
            module.in_channels = module.out_channels = module.groups = width
        for _, module in group.norms:
            _shrink(module, ("weight", "bias", "running_mean", "running_var"), select_out, record)
            module.num_features = width
        for _, module in group.consumers:
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                _shrink(module, ("weight",), _grouped_input_slicer(module.groups, keep, group.channels), record)
                module.in_channels = width
            elif isinstance(module, nn.Conv2d):
                _shrink(module, ("weight",), _select(1, keep), record)
                module.in_channels = width
            else:
                _shrink(module, ("weight",), _select(1, keep), record)
                module.in_features = width
    return record


@torch.no_grad()
def shrink_optimizer_state(optimizer: torch.optim.Optimizer, record: SliceRecord) -> None:
    """Point ``optimizer`` at the parameters ``remove_channels`` put in place, its per-parameter state (momentum,
    Adam moments) sliced the same way; state shaped otherwise (a step count) is kept as it is."""
    for group in optimizer.param_groups:
        for index, parameter in enumerate(group["params"]):
            entry = record.get(id(parameter))
            if entry is None:
                continue
            group["params"][index] = entry.new
            state = optimizer.state.pop(parameter, None)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == entry.original_shape:
                    for slicer in entry.slicers:
                        value = slicer(value)
                    state[key] = value
            optimizer.state[entry.new] = state


def architecture(model: nn.Module) -> dict[str, dict[str, int]]:
    """The widths of every conv, linear and BatchNorm of ``model``, keyed by module path (JSON-serialisable)."""
    spec: dict[str, dict[str, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            spec[path] = {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
        elif isinstance(module, nn.Linear):
            spec[path] = {"in_features": module.in_features, "out_features": module.out_features}
        elif isinstance(module, _BatchNorm):
            spec[path] = {"num_features": module.num_features}
    return spec


@torch.no_grad()
def apply_architecture(model: nn.Module, spec: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Reshape ``model``'s layers to the widths in ``spec`` (from :func:`architecture` of a pruned network), so
    the pruned state dict loads. Values are placeholders until it does. Unknown paths raise, naming them."""
    modules = dict(model.named_modules())
    unknown = sorted(set(spec) - set(modules))
    if unknown:
        raise ValueError(f"the pruned architecture names layers this network lacks: {unknown[:5]}; the checkpoint "
                         "belongs to another model (check model.name)")
    for path, widths in spec.items():
        module = modules[path]
        if isinstance(module, nn.Conv2d):
            out_channels, in_channels, groups = widths["out_channels"], widths["in_channels"], widths["groups"]
            _resize(module, "weight", (out_channels, in_channels // groups, *module.kernel_size))
            _resize(module, "bias", (out_channels,))
            module.in_channels, module.out_channels, module.groups = in_channels, out_channels, groups
        elif isinstance(module, nn.Linear):
            _resize(module, "weight", (widths["out_features"], widths["in_features"]))
            _resize(module, "bias", (widths["out_features"],))
            module.in_features, module.out_features = widths["in_features"], widths["out_features"]
        elif isinstance(module, _BatchNorm):
            for name in ("weight", "bias", "running_mean", "running_var"):
                _resize(module, name, (widths["num_features"],))
            module.num_features = widths["num_features"]
        else:
            raise ValueError(f"the pruned architecture lists {path!r} as a layer, but it is a {type(module).__name__}")
    return model


def architecture_of_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                               prefix: str = "") -> dict[str, dict[str, int]]:
    """The widths a (possibly pruned) state dict implies for ``model``'s convs, linears and BatchNorms, for the
    layers where they differ from the model's own: what ``apply_architecture`` needs before loading it."""
    current = architecture(model)
    spec: dict[str, dict[str, int]] = {}
    for path, module in model.named_modules():
        weight = state_dict.get(f"{prefix}{path}.weight" if path else f"{prefix}weight")
        if path not in current or not isinstance(weight, torch.Tensor):
            continue
        if isinstance(module, nn.Conv2d) and weight.dim() == 4:
            depthwise = module.groups == module.in_channels == module.out_channels and weight.shape[1] == 1
            groups = weight.shape[0] if depthwise else module.groups
            widths = {"in_channels": weight.shape[1] * groups, "out_channels": weight.shape[0], "groups": groups}
        elif isinstance(module, nn.Linear) and weight.dim() == 2:
            widths = {"in_features": weight.shape[1], "out_features": weight.shape[0]}
        elif isinstance(module, _BatchNorm) and weight.dim() == 1:
            widths = {"num_features": weight.shape[0]}
        else:
            continue
        if widths != current[path]:
            spec[path] = widths
    return spec


def follow_pruned_state_dicts(model: nn.Module) -> None:
    """Make ``model`` reshape itself to any pruned state dict loaded into it (a resumed Lightning checkpoint,
    ``load_state_dict`` of a pruned network), through a load-state-dict pre-hook."""
    if getattr(model, "_lightning_edge_follows_widths", False):
        return

    def reshape(module, state_dict, prefix, *args) -> None:
        spec = architecture_of_state_dict(module, state_dict, prefix)
        if spec:
            apply_architecture(module, spec)

    model.register_load_state_dict_pre_hook(reshape)
    model._lightning_edge_follows_widths = True


def _resize(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    tensor = getattr(module, name, None)
    if tensor is None or tuple(tensor.shape) == tuple(shape):
        return
    old_shape = tensor.shape
    fresh = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, fresh)
    if name == "weight":  # a pruning mask shaped like the weight follows it
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.shape == old_shape:
                setattr(module, buffer_name, torch.ones(shape, dtype=buffer.dtype, device=buffer.device))
