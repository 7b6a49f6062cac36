"""Channel pruning to a MAC budget: find the groups, score them, choose the channels, remove them.

``prune_channels(model, example_input, macs_fraction=0.4)`` removes at least that fraction of the network's
multiply-accumulates in one shot and returns what it did. Every prunable group loses the same fraction of
its channels (the smallest fraction that meets the budget, found by bisection on the predicted MACs), and
within a group the least important channels go, the same number from each block of a grouped conv. The
uniform fraction is the robust choice of the channel-pruning literature for networks whose layers differ
a lot in width; the importance criterion decides which channels, not how many.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_edge.models.profile import count_parameters, macs_per_layer
from lightning_edge.prune.dependency import ChannelGroup, channel_groups
from lightning_edge.prune.importance import TaylorImportance, group_importance
from lightning_edge.prune.surgery import SliceRecord, remove_channels


@dataclass
class ChannelPruningResult:
    """What one ``prune_channels`` call did: MACs and parameters before and after, each group's widths."""

    macs_before: int
    macs_after: int
    parameters_before: int
    parameters_after: int
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)
    record: SliceRecord = field(default_factory=dict, repr=False)

    @property
    def macs_removed(self) -> float:
        return 1.0 - self.macs_after / max(self.macs_before, 1)


def prunable_groups(groups: Iterable[ChannelGroup], exclude: Iterable[str] | None = None) -> list[ChannelGroup]:
    """The prunable groups, less those with a layer matching one of the ``exclude`` glob patterns."""
    patterns = list(exclude or ())
    return [group for group in groups if group.prunable
            and not any(fnmatch.fnmatchcase(path, pattern) for path in group.paths() for pattern in patterns)]


def _removed(group: ChannelGroup, fraction: float) -> int:
    """Channels ``group`` loses at ``fraction``: whole multiples of its blocks, at least one channel a block left."""
    per_block = group.channels // group.blocks
    return min(int(fraction * per_block), per_block - 1) * group.blocks


def _predicted_macs(layer_macs: dict[str, int], groups: list[ChannelGroup], removed: list[int]) -> float:
    scale = {path: 1.0 for path in layer_macs}
    for group, count in zip(groups, removed):
        kept = (group.channels - count) / group.channels
        for path, _ in group.producers + group.consumers + group.depthwise:
            if path in scale:
                scale[path] *= kept
    return sum(macs * scale[path] for path, macs in layer_macs.items())


def choose_channels(group: ChannelGroup, scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the channels to keep: the ``count`` lowest-scoring go, ``count / blocks`` from each block
    (ties by index, so every rank chooses the same)."""
    per_block = group.channels // group.blocks
    drop = count // group.blocks
    keep = []
    for block in range(group.blocks):
        block_scores = scores[block * per_block:(block + 1) * per_block]
        order = torch.sort(block_scores, stable=True).indices
        keep.append(order[drop:] + block * per_block)
    return torch.cat(keep).sort().values


def prune_channels(model: nn.Module, example_input: torch.Tensor, macs_fraction: float, importance: str = "l1",
                   taylor: TaylorImportance | None = None, exclude: Iterable[str] | None = None,
                   groups: list[ChannelGroup] | None = None, max_group_fraction: float = 0.9) -> ChannelPruningResult:
    """Physically remove channels of ``model`` (in place) until at least ``macs_fraction`` of its MACs are gone.

    Args:
        example_input: one batch of the network's input (only its shape matters).
        macs_fraction: the fraction of the current MACs to remove, in (0, 1).
        importance: ``l1``, ``bn`` or ``taylor`` (``taylor`` needs a ``TaylorImportance`` that has accumulated
            gradients over ``groups``, the groups it was built on).
        exclude: glob patterns of layer paths whose groups stay whole.
        max_group_fraction: no group loses more than this fraction of its channels.
    """
    if not 0.0 < macs_fraction < 1.0:
        raise ValueError(f"macs_fraction must be in (0, 1), not {macs_fraction}")
    input_shape = tuple(example_input.shape[1:])
    layer_macs = macs_per_layer(model, input_shape)
    macs_before, parameters_before = sum(layer_macs.values()), count_parameters(model)
    candidates = prunable_groups(groups if groups is not None else channel_groups(model, example_input), exclude)
    if not candidates:
        raise ValueError("no prunable channel group in this network (every channel is pinned by the input, output, "
                         "a concatenation or an unknown layer, or excluded)")
    target = macs_before * (1.0 - macs_fraction)
    low, high = 0.0, max_group_fraction
    if _predicted_macs(layer_macs, candidates, [_removed(g, high) for g in candidates]) > target:
        raise ValueError(f"removing {macs_fraction:.0%} of the MACs would take more than {max_group_fraction:.0%} of "
                         "every prunable group's channels; lower the target or raise max_group_fraction")
    for _ in range(40):  # bisection on the uniform fraction: the smallest one that meets the budget
        middle = (low + high) / 2
        if _predicted_macs(layer_macs, candidates, [_removed(g, middle) for g in candidates]) <= target:
            high = middle
        else:
            low = middle
    counts = [_removed(group, high) for group in candidates]
    kept = [(group, choose_channels(group, group_importance(group, importance, taylor), count))
            for group, count in zip(candidates, counts) if count]
    widths = {group.name: (group.channels, int(keep.numel())) for group, keep in kept}
    record = remove_channels(kept)
    return ChannelPruningResult(macs_before, sum(macs_per_layer(model, input_shape).values()), parameters_before,
                                count_parameters(model), widths, record)
