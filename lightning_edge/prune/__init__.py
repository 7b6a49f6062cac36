"""Pruning in pure torch: Zhu and Gupta's cubic sparsity schedule and magnitude masks.

``CubicSchedule`` (sparsity per optimizer step), ``prunable_layers`` (which weights to prune),
``magnitude_masks`` (per layer or global), and masks kept as persistent buffers that are applied to the
weights and to their gradients (``attach_masks``, ``apply_masks``, ``make_permanent``). The
``GradualMagnitudePruning`` callback drives them in a Trainer. Channel pruning and the Hydra group follow.
"""
from lightning_edge.prune.masks import (
    MASK_NAME,
    apply_masks,
    attach_masks,
    magnitude_masks,
    make_permanent,
    prunable_layers,
    sparsity_report,
)
from lightning_edge.prune.schedule import CubicSchedule

__all__ = [
    "MASK_NAME", "CubicSchedule", "apply_masks", "attach_masks", "magnitude_masks", "make_permanent",
    "prunable_layers", "sparsity_report",
]
