"""GradualMagnitudePruning: Zhu and Gupta's gradual magnitude pruning on any LightningModule's network."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lightning_edge.callbacks.network import find_network
from lightning_edge.prune import (
    MASK_NAME,
    CubicSchedule,
    apply_masks,
    attach_masks,
    check_block,
    magnitude_masks,
    make_permanent,
    prunable_layers,
    sparsity_report,
)


class GradualMagnitudePruning(Callback):
    """Prune the network's weights by magnitude on the cubic schedule, counted in optimizer steps.

    Masks are persistent buffers (``weight_mask``) on the pruned layers, applied to the gradients and again
    after every optimizer step, so a pruned weight stays exactly zero, checkpoints carry the masks and a
    resumed run continues with them. Masks are recomputed at ``start_step``, every ``frequency`` steps, up
    to ``end_step``; under DDP rank 0's masks are broadcast so every rank holds the same ones. At the end of
    fit the masks are made permanent (``permanent=True``) and the final sparsity is reported. Beside
    QuantizationAwareTraining it prunes the weights that get quantized (its layers are prepared first).

    Args:
        initial_sparsity, final_sparsity, start_step, end_step, frequency: the schedule (``CubicSchedule``);
            ``end_step=None`` ends at 75% of the run's optimizer steps, ``frequency=None`` makes 10 updates.
        scope: ``"layer"`` (each layer to the same sparsity) or ``"global"`` (one threshold for all).
        block: ``(out, in)`` prunes whole blocks of ``out`` output by ``in`` input channels at one kernel
            position instead of single weights; ``(16, 4)`` is the pattern the INT8 runtime's sparse kernels
            skip (``magnitude_masks``). None: unstructured.
        include, exclude: glob patterns of module paths (relative to the network) to prune or to keep.
        keep_first_and_last: leave the first conv and the classifier dense.
        network: the network (module or attribute path); default as KnowledgeDistillation finds it.
        permanent: make the masks permanent at the end of fit.
    """

    def __init__(self, initial_sparsity: float = 0.0, final_sparsity: float = 0.8, start_step: int = 0,
                 end_step: int | None = None, frequency: int | None = None, scope: str = "layer",
                 block: list[int] | tuple[int, int] | None = None, include: list[str] | None = None, exclude: list[str] | None = None, keep_first_and_last: bool = True,
                 network: str | nn.Module | None = None, permanent: bool = True):
        super().__init__()
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
        self.initial_sparsity, self.final_sparsity = initial_sparsity, final_sparsity
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        if end_step is not None:  # check the numbers now, not after the first epoch
            self._build_schedule(end_step)
        self.block = check_block(block) if block is not None else None
        self.scope, self.include, self.exclude, self.keep_first_and_last = scope, include, exclude, keep_first_and_last
        self.network_spec, self.permanent = network, permanent
        self.schedule: CubicSchedule | None = None
        self.layers: list[tuple[str, nn.Module]] = []
        self.last_update: int | None = None
        self.final_report: dict[str, float] | None = None

    def _build_schedule(self, end_step: int) -> CubicSchedule:
        frequency = self.frequency or max(1, (end_step - self.start_step) // 10)
        return CubicSchedule(self.initial_sparsity, self.final_sparsity, self.start_step, end_step, frequency)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.layers:
            return
        from lightning_edge.callbacks.quantization_aware_training import QuantizationAwareTraining

        for callback in trainer.callbacks:  # QAT replaces modules: attach the masks to the final ones
            if isinstance(callback, QuantizationAwareTraining):
                callback.setup(trainer, pl_module, stage)
        _, network = find_network(pl_module, self.network_spec)
        self.layers = prunable_layers(network, include=self.include, exclude=self.exclude,
                                      keep_first_and_last=self.keep_first_and_last)
        attach_masks(self.layers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is None:
            end_step = self.end_step if self.end_step is not None else max(
                self.start_step + 1, int(0.75 * trainer.estimated_stepping_batches))
            self.schedule = self._build_schedule(end_step)
            rank_zero_info(f"GradualMagnitudePruning: {len(self.layers)} layers, {asdict(self.schedule)}")
        self._step(trainer, pl_module, log=False)  # start_step 0 prunes before the first step (no logging here)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._step(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.layers or not hasattr(self.layers[0][1], MASK_NAME):
            return
        apply_masks(self.layers)
        self.final_report = sparsity_report(self.layers)
        if self.permanent:
            make_permanent(self.layers)
        rank_zero_info(f"GradualMagnitudePruning: final sparsity {self.final_report['total']:.4f}"
                       + (" (masks made permanent)" if self.permanent else ""))

    # ------------------------------------------------------------------ the work
    def _step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log: bool = True) -> None:
        step = trainer.global_step
        if self.schedule.is_update(step) and step != self.last_update:
            sparsity = self.schedule.sparsity(step)
            masks = magnitude_masks({path: module.weight for path, module in self.layers}, sparsity, self.scope, self.block)
            for path, module in self.layers:
                mask = getattr(module, MASK_NAME)
                mask.copy_(masks[path].to(mask.device))
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.broadcast(mask, src=0)  # identical masks on every rank, even after ties
            self.last_update = step
        apply_masks(self.layers)
        if log and self.last_update == step:
            report = sparsity_report(self.layers)
            pl_module.log("prune/sparsity", report.pop("total"), on_step=True, on_epoch=False)
            pl_module.log_dict({f"prune/{path}": value for path, value in report.items()}, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"last_update": self.last_update, "schedule": asdict(self.schedule) if self.schedule else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedule")
        if saved is not None:
            schedule = CubicSchedule(**saved)
            if self.end_step is not None and schedule != self._build_schedule(self.end_step):
                raise ValueError(f"the checkpoint was pruned with {saved}, not this callback's schedule; resume with "
                                 "the same settings")
            self.schedule = schedule
        self.last_update = state_dict.get("last_update")
