"""How much each channel of a group matters: filter L1 norm, BatchNorm scale, or first-order Taylor.

Every criterion scores a whole :class:`ChannelGroup` (all its coupled layers), one score per channel. Each
member layer's scores are divided by their mean before they are summed, so a group of several convolutions
(a residual stream) is not dominated by its largest layer and scores of different groups are comparable.

- ``l1``: the L1 norm of each output filter (Li et al., "Pruning Filters for Efficient ConvNets", 2017).
- ``bn``: |gamma| of the group's BatchNorms (Liu et al., Network Slimming, 2017); a group without a
  BatchNorm falls back to ``l1``.
- ``taylor``: (sum of weight x gradient over each channel's parameters)^2, accumulated over batches
  (Molchanov et al., "Importance Estimation for Neural Network Pruning", 2019): the first-order estimate
  of the loss change when the channel goes. Needs gradients: :class:`TaylorImportance` collects them.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lightning_edge.prune.dependency import ChannelGroup

CRITERIA = ("l1", "bn", "taylor")


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.detach().float()
    return scores / scores.mean().clamp_min(1e-12)


def _filter_norms(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().abs().flatten(1).sum(1)


def l1_importance(group: ChannelGroup) -> torch.Tensor:
    """Sum over the group's producers and depthwise convs of each channel's normalised filter L1 norm."""
    members = [module for _, module in group.producers + group.depthwise]
    return torch.stack([_normalised(_filter_norms(module)).cpu() for module in members]).sum(0)


def bn_importance(group: ChannelGroup) -> torch.Tensor:
    """Sum of the group's normalised BatchNorm |gamma| (Network Slimming); L1 when the group has no BatchNorm."""
    norms = [module for _, module in group.norms if module.weight is not None]
    if not norms:
        return l1_importance(group)
    return torch.stack([_normalised(module.weight.abs()).cpu() for module in norms]).sum(0)


class TaylorImportance:
    """Accumulates Molchanov's first-order Taylor scores of ``groups`` from the gradients present when
    :meth:`accumulate` is called (after backward, before the optimizer step)."""

    def __init__(self, groups: Iterable[ChannelGroup]):
        self.groups = [group for group in groups if group.prunable]
        self.scores = {id(group): torch.zeros(group.channels) for group in self.groups}
        self.batches = 0

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this batch's (sum of w * dL/dw per channel)^2 of each member layer's output parameters."""
        for group in self.groups:
            total = self.scores[id(group)]
            for _, module in group.producers + group.depthwise + group.norms:
                for parameter in (module.weight, getattr(module, "bias", None)):
                    if parameter is None or parameter.grad is None:
                        continue
                    contribution = (parameter.detach() * parameter.grad.detach()).flatten(1).sum(1) \
                        if parameter.dim() > 1 else parameter.detach() * parameter.grad.detach()
                    total += contribution.float().pow(2).cpu()
        self.batches += 1

    def importance(self, group: ChannelGroup) -> torch.Tensor:
        if not self.batches:
            raise RuntimeError("Taylor importance has seen no gradients: call accumulate() after backward passes")
        return _normalised(self.scores[id(group)])


def group_importance(group: ChannelGroup, criterion: str, taylor: TaylorImportance | None = None) -> torch.Tensor:
    """Scores of ``group``'s channels by ``criterion`` (one of ``CRITERIA``)."""
    if criterion == "l1":
        return l1_importance(group)
    if criterion == "bn":
        return bn_importance(group)
    if criterion == "taylor":
        if taylor is None:
            raise ValueError("importance='taylor' needs gradients: pass a TaylorImportance that has accumulated some")
        return taylor.importance(group)
    raise ValueError(f"unknown channel importance {criterion!r}; choose one of {', '.join(CRITERIA)}")
