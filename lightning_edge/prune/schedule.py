"""Zhu and Gupta's gradual pruning schedule ("To prune, or not to prune", 2017), counted in optimizer steps.

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3   for t = t0, t0 + dt, ..., t0 + n * dt

Pruning starts at ``start_step`` (t0) with ``initial_sparsity`` (s_i), updates every ``frequency`` (dt)
steps, and reaches ``final_sparsity`` (s_f) at ``end_step``: fast at first, while the network can recover
from it, and slowly near the end. Between updates the sparsity holds; before t0 nothing is pruned.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    """Target sparsity of each optimizer step; ``end_step`` must come after ``start_step``."""

    initial_sparsity: float = 0.0
    final_sparsity: float = 0.8
    start_step: int = 0
    end_step: int = 1000
    frequency: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial_sparsity <= self.final_sparsity < 1.0:
            raise ValueError(f"need 0 <= initial_sparsity ({self.initial_sparsity}) <= final_sparsity "
                             f"({self.final_sparsity}) < 1")
        if self.start_step < 0 or self.end_step <= self.start_step:
            raise ValueError(f"need 0 <= start_step ({self.start_step}) < end_step ({self.end_step})")
        if self.frequency < 1:
            raise ValueError(f"frequency must be at least 1 step, not {self.frequency}")

    def is_update(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``: t0, t0 + dt, ... up to the first update at or past end_step."""
        if step < self.start_step or (step - self.start_step) % self.frequency:
            return False
        return step - self.frequency < self.end_step

    def sparsity(self, step: int) -> float:
        """The sparsity in force at ``step``: the value of the latest update at or before it (0 before t0)."""
        if step < self.start_step:
            return 0.0
        updated = self.start_step + (step - self.start_step) // self.frequency * self.frequency
        progress = min(1.0, (updated - self.start_step) / (self.end_step - self.start_step))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3
