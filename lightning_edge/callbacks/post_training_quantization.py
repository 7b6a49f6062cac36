"""Post-training quantization as a callback: the baseline QAT has to beat.

At the start of testing (after the tested checkpoint's float weights are loaded) the network is prepared
in place and its activation ranges are calibrated on a few batches of held-out training data (the
validation split: no augmentation, never the test set); the test then measures the INT8 network.
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lightning_edge.callbacks.network import find_network
from lightning_edge.quant.calibrate import calibrate
from lightning_edge.quant.prepare import QuantConfig, is_prepared, prepare_qat

SPLITS = ("val", "train")


class PostTrainingQuantization(Callback):
    """Calibrate the trained network's INT8 ranges on ``num_batches`` batches, then test it quantized.

    Args:
        num_batches: calibration batches.
        split: ``"val"`` (default: held-out training images, no augmentation) or ``"train"``.
        activation_bits: 8 or 7 (see ``QuantConfig``).
        weight_bits: 8.
        network: the module to quantize (as for ``QuantizationAwareTraining``).
        input_shape: (C, H, W) for a forward that branches on its input's size (``QuantConfig.input_shape``).
    """

    def __init__(
        self, num_batches: int = 32, split: str = "val", activation_bits: int = 8, weight_bits: int = 8,
        network: str | nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        if split not in SPLITS:
            raise ValueError(f"unknown calibration split {split!r}; choose one of {', '.join(SPLITS)}")
        self.num_batches = int(num_batches)
        self.split = split
        self.config = QuantConfig(activation_bits=activation_bits, weight_bits=weight_bits, input_shape=input_shape)
        self.network_spec = network
        self.network: nn.Module | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path, network = find_network(pl_module, self.network_spec)
        if is_prepared(network):
            raise ValueError(
                "PostTrainingQuantization got a network that is already quantized (QuantizationAwareTraining?); "
                "use one of the two"
            )
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("PostTrainingQuantization calibrates on the datamodule's data; pass datamodule= to test")
        datamodule.setup("fit")  # testing alone sets up only the test split
        split = self.split
        if split == "val" and getattr(datamodule, "val_set", None) is getattr(datamodule, "test_set", False):
            rank_zero_info("PostTrainingQuantization: the validation split is the test set (val_size=0); calibrating on train")
            split = "train"
        loader = datamodule.val_dataloader() if split == "val" else datamodule.train_dataloader()
        prepare_qat(network, self.config, inplace=True)
        calibrate(network, loader, self.num_batches)
        self.network = network
        rank_zero_info(f"PostTrainingQuantization: calibrated {path or 'the module'} on {self.num_batches} {split} batches")
