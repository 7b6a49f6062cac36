"""ChannelPruning: physically remove channels during fine-tuning until a target fraction of MACs is gone."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lightning_edge.callbacks.network import find_network
from lightning_edge.models.profile import count_macs, count_parameters
from lightning_edge.prune.channels import prune_channels
from lightning_edge.prune.dependency import channel_groups
from lightning_edge.prune.importance import CRITERIA, TaylorImportance
from lightning_edge.prune.surgery import (
    ARCHITECTURE_KEY,
    architecture,
    follow_pruned_state_dicts,
    shrink_optimizer_state,
)


def _rewrap_ddp(trainer: pl.Trainer) -> None:
    """Wrap the pruned module in a new DistributedDataParallel: DDP's gradient buckets are sized for the old
    parameters. Every rank prunes the same channels at the same step (identical weights and all-reduced
    gradients give identical scores), so all of them get here together, as the wrapper's collectives need."""
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel) and hasattr(strategy, "_setup_model"):
        strategy.model = strategy._setup_model(strategy.lightning_module)  # Lightning's own DDP wrapping
        if hasattr(strategy, "_register_ddp_hooks"):
            strategy._register_ddp_hooks()


class ChannelPruning(Callback):
    """Remove ``target_macs`` of the network's MACs in ``steps`` equal steps between ``start_step`` and
    ``end_step`` (optimizer steps), fine-tuning in between and after.

    Each step traces the network's channel dependencies, scores every group (``importance``: ``l1``, ``bn`` or
    ``taylor``, the last from the gradients seen since the previous step) and removes channels for real, so the
    network ends smaller and faster. The optimizer is pointed at the new parameters, its momentum sliced with
    them, so the learning-rate schedule and optimizer carry on. Checkpoints record the pruned widths
    (``pruned_architecture``): resuming, testing, ``load_weights`` and export rebuild the pruned network.
    Under DDP every rank removes the same channels and the model is wrapped again.

    Args:
        target_macs: fraction of the original MACs to remove, in (0, 1).
        importance: ``l1`` (filter norms), ``bn`` (BatchNorm scales, Network Slimming) or ``taylor``.
        steps: how many pruning steps reach the target; step k removes down to ``target_macs * k / steps``.
        start_step, end_step: optimizer steps of the first and the last pruning step; ``end_step=None`` is half
            of the run, so the second half fine-tunes the final network.
        exclude: glob patterns of layer paths whose channel groups stay whole.
        max_group_fraction: no group loses more than this fraction of its channels.
        input_shape: (C, H, W) of one sample; default from the datamodule's ``input_shape`` or the module's
            ``example_input_array``.
        network: the network (module or attribute path); default as KnowledgeDistillation finds it.
    """

    def __init__(self, target_macs: float = 0.4, importance: str = "l1", steps: int = 4, start_step: int = 0,
                 end_step: int | None = None, exclude: list[str] | None = None, max_group_fraction: float = 0.9,
                 input_shape: tuple[int, ...] | None = None, network: str | nn.Module | None = None):
        super().__init__()
        if not 0.0 < target_macs < 1.0:
            raise ValueError(f"target_macs is a fraction of the MACs to remove, in (0, 1); got {target_macs}")
        if importance not in CRITERIA:
            raise ValueError(f"unknown channel importance {importance!r}; choose one of {', '.join(CRITERIA)}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        if end_step is not None and end_step < start_step:
            raise ValueError(f"end_step {end_step} comes before start_step {start_step}")
        self.target_macs, self.importance, self.steps = target_macs, importance, steps
        self.start_step, self.end_step = start_step, end_step
        self.exclude, self.max_group_fraction = exclude, max_group_fraction
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.network_spec = network
        self.network: nn.Module | None = None
        self.done = 0
        self.original_macs: int | None = None
        self.original_parameters: int | None = None
        self.history: list[dict[str, Any]] = []
        self.taylor: TaylorImportance | None = None

    # ------------------------------------------------------------------ schedule
    def step_at(self, k: int, total_steps: int) -> int:
        """The optimizer step of pruning step ``k`` (0-based)."""
        end = self.end_step if self.end_step is not None else max(self.start_step, total_steps // 2)
        if self.steps == 1:
            return self.start_step
        return self.start_step + round(k * (end - self.start_step) / (self.steps - 1))

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _, self.network = find_network(pl_module, self.network_spec)
        self._refuse_incompatible(trainer)
        follow_pruned_state_dicts(self.network)  # a resumed or tested checkpoint brings its pruned widths

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if self.importance == "taylor" and self.done < self.steps:
            if self.taylor is None:
                self.taylor = TaylorImportance(channel_groups(self.network, self._example_input(trainer, pl_module)))
            self.taylor.accumulate()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.done >= self.steps or trainer.global_step < self.step_at(self.done, trainer.estimated_stepping_batches):
            return
        if self.importance == "taylor" and (self.taylor is None or not self.taylor.batches):
            return  # no gradients yet: prune after the first optimizer step
        self._prune(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.done:
            checkpoint[ARCHITECTURE_KEY] = architecture(self.network)

    # ------------------------------------------------------------------ the work
    @staticmethod
    def _refuse_incompatible(trainer: pl.Trainer) -> None:
        """Callbacks whose modules are sized to the unpruned widths: say so before training, with the fix."""
        from lightning_edge.callbacks.knowledge_distillation import KnowledgeDistillation
        from lightning_edge.callbacks.quantization_aware_training import QuantizationAwareTraining

        for callback in trainer.callbacks:
            if isinstance(callback, QuantizationAwareTraining):
                raise ValueError("ChannelPruning and QuantizationAwareTraining in one fit: prune channels first, then "
                                 "fine-tune the pruned checkpoint with QAT (model.checkpoint_path=PRUNED.ckpt quant=qat)")
            if isinstance(callback, KnowledgeDistillation) and "hint" in callback.losses:
                raise ValueError("ChannelPruning with a distillation loss that has adapters sized to the student's "
                                 "channels (hint): use kd or at, which follow any width")

    def _example_input(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        parameter = next(self.network.parameters())
        shape = self.input_shape or getattr(trainer.datamodule, "input_shape", None)
        if shape is None and getattr(pl_module, "example_input_array", None) is not None:
            return pl_module.example_input_array[:1].to(parameter.device)
        if shape is None:
            raise ValueError("ChannelPruning needs the input shape to trace the network: pass input_shape=(C, H, W), "
                             "or set example_input_array on the LightningModule")
        return torch.zeros((1, *shape), device=parameter.device, dtype=parameter.dtype)

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        example = self._example_input(trainer, pl_module)
        current = count_macs(self.network, tuple(example.shape[1:]))
        if self.original_macs is None:
            self.original_macs, self.original_parameters = current, count_parameters(self.network)
        goal = self.original_macs * (1.0 - self.target_macs * (self.done + 1) / self.steps)
        self.done += 1
        if current <= goal:
            return
        result = prune_channels(self.network, example, 1.0 - goal / current, self.importance, self.taylor,
                                self.exclude, groups=self.taylor.groups if self.taylor is not None else None,
                                max_group_fraction=self.max_group_fraction)
        for optimizer in trainer.optimizers:
            shrink_optimizer_state(optimizer, result.record)
        _rewrap_ddp(trainer)
        self.taylor = None
        removed = 1.0 - result.macs_after / self.original_macs
        self.history.append({"step": trainer.global_step, "macs": result.macs_after, "parameters": result.parameters_after,
                             "macs_removed": removed})
        pl_module.log("prune/macs_removed", removed, on_step=True, on_epoch=False)
        rank_zero_info(f"ChannelPruning step {self.done}/{self.steps} at optimizer step {trainer.global_step}: "
                       f"MACs {result.macs_before:,} -> {result.macs_after:,} ({removed:.1%} of the original removed), "
                       f"parameters {result.parameters_before:,} -> {result.parameters_after:,}")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "original_macs": self.original_macs, "original_parameters": self.original_parameters,
                "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = state_dict.get("done", 0)
        self.original_macs = state_dict.get("original_macs")
        self.original_parameters = state_dict.get("original_parameters")
        self.history = list(state_dict.get("history", []))
