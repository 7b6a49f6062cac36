"""ClassificationModule: the LightningModule that trains any classifier in lightning-edge.

It holds the network as ``self.net`` and nothing else that changes its output, so the callbacks
(distillation, quantization, pruning) adapt it through hooks, exactly as they adapt a user's own module.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_edge.models.factory import create_model

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class ClassificationModule(pl.LightningModule):
    """Cross-entropy training with top-1/top-5 accuracy and the best validation accuracy so far.

    Args:
        net: the network, or a ``create_model`` spec (``{"name": "cifar_resnet20", "num_classes": 10,
            "in_chans": 1}``) that is stored in the checkpoint, so ``load_from_checkpoint(path)`` rebuilds it.
        optimizer: a partial that takes the parameters (Hydra: ``_partial_: true``); SGD by default.
        scheduler: a partial ``(optimizer, total_steps, steps_per_epoch) -> LRScheduler`` from
            ``lightning_edge.optim``, stepped every optimizer step; none by default.
        label_smoothing: cross-entropy label smoothing.
        num_classes: classes of the data (default: the network's ``num_classes``).
    """

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        if isinstance(net, nn.Module):
            self.save_hyperparameters(ignore=["optimizer", "scheduler", "net"])
            self.net = net
        else:
            # Plain containers keep checkpoints loadable with torch.load(weights_only=True).
            net = OmegaConf.to_container(net, resolve=True) if isinstance(net, DictConfig) else dict(net)
            self.save_hyperparameters(ignore=["optimizer", "scheduler"])
            self.net = create_model(**net)
        num_classes = num_classes or getattr(self.net, "num_classes", None)
        if not num_classes:
            raise ValueError("ClassificationModule needs num_classes: the network has no num_classes attribute")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = int(num_classes)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc = self._accuracy(1)
        self.val_acc, self.test_acc = self._accuracy(1), self._accuracy(1)
        self.top_k = min(5, self.num_classes)
        self.val_acc_top5, self.test_acc_top5 = self._accuracy(self.top_k), self._accuracy(self.top_k)
        self.val_acc_best = MaxMetric()

    def _accuracy(self, top_k: int) -> MulticlassAccuracy:
        return MulticlassAccuracy(num_classes=self.num_classes, top_k=top_k, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return loss, logits, targets

    def on_train_start(self) -> None:
        # The sanity check's validation pass must not count as the best accuracy.
        self.val_acc_best.reset()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits, targets = self._shared_step(batch)
        self.train_loss(loss)
        self.train_acc(logits, targets)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits, targets = self._shared_step(batch)
        self.val_loss(loss)
        self.val_acc(logits, targets)
        self.val_acc_top5(logits, targets)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log(f"val/acc_top{self.top_k}", self.val_acc_top5, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits, targets = self._shared_step(batch)
        self.test_loss(loss)
        self.test_acc(logits, targets)
        self.test_acc_top5(logits, targets)
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log("test/acc", self.test_acc, on_epoch=True, prog_bar=True)
        self.log(f"test/acc_top{self.top_k}", self.test_acc_top5, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainer.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        batches = self.trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            steps_per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
        else:
            steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs or 1))
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
