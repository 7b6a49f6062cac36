"""Pruning in pure torch: gradual magnitude pruning and channel pruning that really removes channels.

Unstructured: Zhu and Gupta's cubic sparsity schedule (``CubicSchedule``), ``prunable_layers``,
``magnitude_masks`` (per layer or global, single weights or blocks the runtime's sparse kernels skip), masks kept as persistent buffers applied to the weights and to
their gradients (``attach_masks``, ``apply_masks``, ``make_permanent``); ``GradualMagnitudePruning`` drives
them in a Trainer.

Structured: ``channel_groups`` traces the network and finds the channels that must go together (residual
adds, grouped and depthwise convs, BatchNorms, the next layer's inputs); ``l1``, ``bn`` and ``taylor``
importance score them; ``prune_channels`` removes channels to a MAC budget, physically; ``architecture`` /
``apply_architecture`` let a pruned checkpoint load back. ``ChannelPruning`` drives them in a Trainer.
"""
from lightning_edge.prune.channels import ChannelPruningResult, choose_channels, prunable_groups, prune_channels
from lightning_edge.prune.dependency import ChannelGroup, channel_groups
from lightning_edge.prune.importance import CRITERIA, TaylorImportance, group_importance
from lightning_edge.prune.masks import (
    MASK_NAME,
    apply_masks,
    attach_masks,
    check_block,
    magnitude_masks,
    make_permanent,
    prunable_layers,
    sparsity_report,
)
from lightning_edge.prune.schedule import CubicSchedule
from lightning_edge.prune.surgery import (
    ARCHITECTURE_KEY,
    apply_architecture,
    architecture,
    remove_channels,
    shrink_optimizer_state,
)

__all__ = [
    "ARCHITECTURE_KEY", "CRITERIA", "MASK_NAME", "ChannelGroup", "ChannelPruningResult", "CubicSchedule",
    "TaylorImportance", "apply_architecture", "apply_masks", "architecture", "attach_masks", "channel_groups",
    "check_block", "choose_channels", "group_importance", "magnitude_masks", "make_permanent", "prunable_groups",
    "prunable_layers", "prune_channels", "remove_channels", "shrink_optimizer_state", "sparsity_report",
]
