"""Quantization-aware training as a callback: the user's LightningModule stays unchanged.

``setup`` prepares the network in place (``lightning_edge.quant.prepare_qat``) before optimizers, DDP
and checkpoint loading, so the optimizer gets the prepared parameters (LSQ step sizes included) and DDP wraps the prepared
network. Each epoch start applies the schedule, a pure function of the epoch (so a resumed run lands
in the same state): fake quantization from ``start_epoch``, frozen BatchNorm statistics from
``freeze_bn_epoch``, fixed activation ranges from ``freeze_observers_epoch``. After every training batch
the ranks' ranges are reduced so all hold the same scales. All quantization state lives in the model's
buffers, so checkpoints restore it exactly; the callback's own state checks that a resume uses the same
settings.

Works beside ``KnowledgeDistillation`` (the teacher sees the raw input, the student is quantized) and
under ``precision="bf16-mixed"`` (ranges, rounding and folding stay float32).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lightning_edge.callbacks.network import find_network
from lightning_edge.quant.prepare import (
    QuantConfig,
    freeze_batchnorm,
    is_prepared,
    prepare_qat,
    set_fake_quant,
    set_observers,
    synchronize_observers,
)


class QuantizationAwareTraining(Callback):
    """Train the LightningModule's network with simulated INT8 arithmetic (INT8_SPEC.md).

    Args:
        observer: ``"minmax"`` (moving-average ranges, default) or ``"lsq"`` (learned step sizes).
        activation_bits: 8 (codes 0..255) or 7 (0..127, exact in the runtime's fastest kernels).
        weight_bits: 8: symmetric per-channel codes -127..127.
        averaging_constant: weight of each batch in the moving-average ranges.
        start_epoch: train in float before this epoch, then fine-tune quantized (0: quantized throughout).
        freeze_bn_epoch: from this epoch on, BatchNorm uses and keeps its running statistics, exactly as
            the folded deployed layer (torchvision's QAT reference freezes after 3 epochs). None: never.
        freeze_observers_epoch: from this epoch on, activation ranges stay fixed (torchvision: 4). None: never.
        network: the module to quantize: an attribute path of the LightningModule or the module itself;
            None finds ``net`` / ``model`` / ``student`` / ``network``, else the whole LightningModule.
        input_shape: (C, H, W) for a network whose forward branches on its input's size (timm's MobileViT):
            the trace is specialised to it (``QuantConfig.input_shape``). None: traced without sizes.
    """

    def __init__(
        self,
        observer: str = "minmax",
        activation_bits: int = 8,
        weight_bits: int = 8,
        averaging_constant: float = 0.01,
        start_epoch: int = 0,
        freeze_bn_epoch: int | None = None,
        freeze_observers_epoch: int | None = None,
        network: str | nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.config = QuantConfig(observer, activation_bits, weight_bits, averaging_constant, input_shape)
        for name, value in (("start_epoch", start_epoch), ("freeze_bn_epoch", freeze_bn_epoch),
                            ("freeze_observers_epoch", freeze_observers_epoch)):
            if value is not None and int(value) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")
        self.start_epoch = int(start_epoch)
        self.freeze_bn_epoch = freeze_bn_epoch
        self.freeze_observers_epoch = freeze_observers_epoch
        self.network_spec = network
        self.network: nn.Module | None = None
        self.network_path: str | None = None

    @property
    def schedule(self) -> dict[str, int | None]:
        return {
            "start_epoch": self.start_epoch,
            "freeze_bn_epoch": self.freeze_bn_epoch,
            "freeze_observers_epoch": self.freeze_observers_epoch,
        }

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every stage prepares: ``trainer.test(module, ckpt_path=QAT_CHECKPOINT)`` on a fresh module needs the
        # quantized structure before Lightning loads the checkpoint's weights and quantization buffers into it.
        if self.network is not None:
            return
        self.network_path, network = find_network(pl_module, self.network_spec)
        if is_prepared(network):
            if network.quant_config != self.config:
                raise ValueError(
                    f"the network is already prepared with {network.quant_config}, not this callback's {self.config}"
                )
        else:
            prepare_qat(network, self.config, inplace=True)
            plan = network.quant_plan
            rank_zero_info(
                f"QuantizationAwareTraining: {len(plan.folds)} int8 layers, {len(plan.points)} int8 tensors in "
                f"{self.network_path or type(pl_module).__name__}; fake quantization from epoch {self.start_epoch}"
            )
        self.network = network
        if stage == "fit":
            self.apply_schedule(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply_schedule(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1 and self.network is not None:
            synchronize_observers(self.network)

    def apply_schedule(self, epoch: int) -> None:
        """Set fake quantization, BatchNorm freezing and observers for ``epoch`` (idempotent)."""
        quantizing = epoch >= self.start_epoch
        set_fake_quant(self.network, quantizing)
        freeze_batchnorm(self.network, quantizing and _reached(epoch, self.freeze_bn_epoch))
        set_observers(self.network, not _reached(epoch, self.freeze_observers_epoch))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The settings a resumed run must share; the quantization state itself is in the model's buffers."""
        return {"config": self.config.as_dict(), "schedule": self.schedule}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = QuantConfig.create(state_dict.get("config", {}))
        if saved != self.config:
            raise ValueError(
                f"the checkpoint was trained with quantization {saved}, this callback has {self.config}; resume with "
                "the same settings"
            )
        if state_dict.get("schedule") != self.schedule:
            rank_zero_info(f"QuantizationAwareTraining: schedule changed from {state_dict.get('schedule')} to {self.schedule}")


def _reached(epoch: int, threshold: int | None) -> bool:
    return threshold is not None and epoch >= int(threshold)
