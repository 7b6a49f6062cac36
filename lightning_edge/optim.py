"""Learning-rate schedules that Hydra builds as partials: ``scheduler(optimizer, total_steps, steps_per_epoch)``.

Both are stepped every optimizer step, so a linear warm-up is smooth even in runs of a few epochs, and
the milestones of a multistep schedule are given in epochs, as papers state them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warm-up must be >= 0 epochs, got {warmup_steps} steps")


def cosine_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_epochs``, then a cosine decay to ``min_lr_ratio`` times the base LR."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    _check(total_steps, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def multistep_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then the base LR times ``gamma`` after each milestone epoch (the WRN papers' schedule)."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    _check(total_steps, warmup_steps)
    milestone_steps = sorted(round(epoch * steps_per_epoch) for epoch in milestones)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return gamma ** sum(step >= milestone for milestone in milestone_steps)

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """No schedule: the base LR throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)
