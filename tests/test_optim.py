"""Learning-rate schedules stepped per optimizer step."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_edge.optim import cosine_with_warmup, multistep_with_warmup


def _lrs(scheduler, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_cosine_warms_up_linearly_then_decays_to_the_floor():
    lrs = _lrs(cosine_with_warmup(_optimizer(), total_steps=100, steps_per_epoch=10, warmup_epochs=1, min_lr_ratio=0.1), 100)
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_multistep_milestones_are_epochs():
    lrs = _lrs(multistep_with_warmup(_optimizer(), total_steps=50, steps_per_epoch=5, milestones=[2, 6], gamma=0.2), 50)
    assert lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.02)
    assert lrs[29] == pytest.approx(0.02) and lrs[30] == pytest.approx(0.004)


def test_schedule_rejects_an_empty_run():
    with pytest.raises(ValueError, match="at least one step"):
        cosine_with_warmup(_optimizer(), total_steps=0, steps_per_epoch=1)
