"""ClassificationModule on its own: learning, metrics, and rebuilding from a checkpoint."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from lightning_edge.data import SyntheticDataModule
from lightning_edge.module import ClassificationModule


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )


def test_module_learns_synthetic_classes_and_tracks_the_best_accuracy(tmp_path):
    pl.seed_everything(0)
    datamodule = SyntheticDataModule(num_classes=4, native_size=16, train_samples=256, batch_size=32, noise=20.0)
    module = ClassificationModule(
        {"name": "cifar_resnet20", "num_classes": 4, "in_chans": 3},
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=True)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.callback_metrics["val/acc_best"] >= trainer.callback_metrics["val/acc"]
    assert trainer.callback_metrics["val/acc_best"] > 0.9  # four distinct templates are easy
    assert module.top_k == 4  # top-5 needs five classes: it falls back to top-4

    checkpoint = trainer.checkpoint_callback.best_model_path
    restored = ClassificationModule.load_from_checkpoint(checkpoint, weights_only=False)
    result = _trainer(tmp_path).test(restored, datamodule=datamodule, verbose=False)[0]
    assert result["test/acc"] > 0.9


def test_label_smoothing_is_validated():
    import pytest

    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationModule({"name": "cifar_resnet20"}, label_smoothing=1.0)
