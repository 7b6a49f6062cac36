"""ExportInt8: at the end of fit, write model.onnx (QDQ) and model.edge and evaluate them on the test set."""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lightning_edge.callbacks.network import find_network

log = logging.getLogger(__name__)


class ExportInt8(Callback):
    """Deploy a quantized network with no extra code: add it beside QuantizationAwareTraining (or
    PostTrainingQuantization) in any Trainer.

    At the end of fit, once the network's int8 quantizers are live (QAT), or else at the end of testing
    (PTQ calibrates when testing starts), rank 0 writes ``dirpath/filename.onnx`` and ``.edge``, runs
    both on the datamodule's test set (ONNX Runtime and lightning-edge's runtime: accuracy, argmax
    agreement with the torch model) and keeps the report in ``self.result`` (train.py puts it in
    summary.json under ``export``).

    Args:
        dirpath: folder for the files; default: the trainer's ``default_root_dir``.
        filename: file stem.
        evaluate: run both files on the test set (``limit_test_batches`` applies).
        opset: ONNX opset.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "model", evaluate: bool = True, opset: int = 17):
        super().__init__()
        self.dirpath, self.filename, self.evaluate, self.opset = dirpath, filename, evaluate, opset
        self.result: dict[str, Any] | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._export(trainer, pl_module, when="fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.result is None:
            self._export(trainer, pl_module, when="test")

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        from lightning_edge.quant.prepare import inactive_quantizers, is_prepared
        from lightning_edge.quant.calibrate import batch_input

        _, network = find_network(pl_module)
        if not is_prepared(network) or inactive_quantizers(network):
            if when == "test":  # after fit this is expected with PTQ, which calibrates when testing starts
                log.warning("ExportInt8: the network is not quantized at the end of testing; nothing exported")
            return
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("ExportInt8 needs a datamodule with test_dataloader() for its example input and evaluation; "
                             "pass datamodule= to trainer.fit")
        loader = datamodule.test_dataloader()
        example = batch_input(next(iter(loader)))[:1].cpu()
        from lightning_edge.export.int8 import export_int8, test_batch_limit

        training = network.training
        try:
            self.result = export_int8(network.eval(), example, self.dirpath or trainer.default_root_dir, self.filename,
                                      opset=self.opset, loader=loader if self.evaluate else None,
                                      max_batches=test_batch_limit(trainer))
        finally:
            network.train(training)
        log.info("ExportInt8 wrote %s and %s", self.result["onnx"], self.result.get("edge", {}).get("path"))

    def __repr__(self) -> str:
        return f"ExportInt8(dirpath={self.dirpath!r}, filename={self.filename!r}, evaluate={self.evaluate})"


__all__ = ["ExportInt8"]
