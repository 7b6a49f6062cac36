"""The pieces of ``train.py``: build from the Hydra config, find the checkpoint to resume, write the summary.

``train.py`` stays a thin script that strings these together; each piece is usable on its own.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import Logger

from lightning_edge.callbacks.channel_pruning import ChannelPruning
from lightning_edge.callbacks.gradual_magnitude_pruning import GradualMagnitudePruning
from lightning_edge.callbacks.knowledge_distillation import KnowledgeDistillation
from lightning_edge.callbacks.network import find_network
from lightning_edge.callbacks.post_training_quantization import PostTrainingQuantization
from lightning_edge.callbacks.quantization_aware_training import QuantizationAwareTraining
from lightning_edge.data.base import ImageClassificationDataModule
from lightning_edge.distill.teacher import load_teacher
from lightning_edge.export.int8 import export_int8, test_batch_limit
from lightning_edge.io import atomic_write_bytes, atomic_write_json
from lightning_edge.models.factory import load_weights
from lightning_edge.models.profile import profile_model, weight_bytes
from lightning_edge.quant.calibrate import batch_input
from lightning_edge.quant.prepare import inactive_quantizers, is_prepared
from lightning_edge.module import ClassificationModule

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> ImageClassificationDataModule:
    """Instantiate ``cfg.data`` and find its files now, so missing data stops the run before any model is built."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def model_spec(cfg: DictConfig, datamodule: ImageClassificationDataModule) -> dict[str, Any]:
    """The ``create_model`` arguments for ``cfg.model`` adapted to the data's channels, size and classes."""
    kwargs = cfg.model.get("kwargs")
    spec = dict(
        name=cfg.model.name,
        num_classes=datamodule.num_classes,
        in_chans=datamodule.num_channels,
        image_size=datamodule.input_size,
        pretrained=bool(cfg.model.get("pretrained", False)),
        **(OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {}),
    )
    student = cfg.get("student")
    if isinstance(student, Mapping) and student.get("block"):
        spec["derive"] = OmegaConf.to_container(student, resolve=True)
    return spec


def build_module(cfg: DictConfig, datamodule: ImageClassificationDataModule) -> pl.LightningModule:
    """The LightningModule of ``cfg.module`` around the network of ``cfg.model``, local weights loaded."""
    module = instantiate(cfg.module, net=model_spec(cfg, datamodule), num_classes=datamodule.num_classes)
    checkpoint_path = cfg.model.get("checkpoint_path")
    if checkpoint_path:
        load_weights(module.net, checkpoint_path)
        log.info("loaded weights from %s", checkpoint_path)
    return module


def teacher_stage_config(cfg: DictConfig) -> DictConfig:
    """The config that trains ``teacher.name`` first: same data, optimizer and schedule, in OUTPUT_DIR/teacher."""
    teacher = cfg.teacher
    if not teacher.get("name"):
        raise ValueError("teacher.train=true needs teacher.name: the architecture to train as the teacher")
    stage = cfg.copy()
    OmegaConf.set_struct(stage, False)
    stage.paths.output_dir = os.path.join(cfg.paths.output_dir, "teacher")
    stage.task_name = f"{cfg.get('task_name')}/teacher"
    stage.model = {"name": teacher.name, "pretrained": False, "checkpoint_path": None, "kwargs": teacher.get("kwargs") or {}}
    stage.student = None
    stage.distill = None
    stage.quant = None  # the teacher stays a float network
    stage.prune = None  # and a dense one
    stage.teacher = {"name": None, "ckpt": None, "train": False}
    stage.ckpt_path = None
    if teacher.get("max_epochs"):
        stage.trainer.max_epochs = teacher.max_epochs
    OmegaConf.set_struct(stage, True)
    return stage


def build_distillation(cfg: DictConfig, datamodule: ImageClassificationDataModule) -> KnowledgeDistillation | None:
    """The ``distill`` group's callback around the ``teacher`` group's network, or None with ``distill=none``."""
    distill_cfg = cfg.get("distill")
    teacher_cfg = cfg.get("teacher") or {}
    if not (isinstance(distill_cfg, Mapping) and "_target_" in distill_cfg):
        if teacher_cfg.get("name") or teacher_cfg.get("ckpt"):
            log.warning("teacher.* is set but distill=none: the teacher is not used (choose distill=kd, at, kd_at or hint)")
        return None
    if not teacher_cfg.get("ckpt"):
        raise ValueError(
            "distillation needs a trained teacher: teacher.ckpt=PATH (a checkpoint written by train.py), "
            "or teacher.name=MODEL teacher.ckpt=PATH for other weights"
        )
    spec = {
        "name": teacher_cfg.get("name"),
        "checkpoint": teacher_cfg.ckpt,
        "kwargs": OmegaConf.to_container(teacher_cfg.kwargs, resolve=True) if teacher_cfg.get("kwargs") else {},
    }
    teacher = load_teacher(
        spec, num_classes=datamodule.num_classes, in_chans=datamodule.num_channels, image_size=datamodule.input_size
    )
    log.info("teacher loaded from %s", teacher_cfg.ckpt)
    return instantiate(distill_cfg, teacher=teacher)


def build_quantization(cfg: DictConfig) -> QuantizationAwareTraining | PostTrainingQuantization | None:
    """The ``quant`` group's callback (QAT or PTQ), or None with ``quant=none``."""
    quant_cfg = cfg.get("quant")
    if not (isinstance(quant_cfg, Mapping) and "_target_" in quant_cfg):
        return None
    callback = instantiate(quant_cfg)
    if isinstance(callback, QuantizationAwareTraining) and not cfg.get("train", True):
        raise ValueError("quant=qat with train=false has nothing to train; quantize a trained network with quant=ptq")
    if isinstance(callback, PostTrainingQuantization) and not cfg.get("test", True):
        raise ValueError("quant=ptq calibrates when testing starts, and test=false skips testing; drop test=false")
    return callback


def build_pruning(cfg: DictConfig) -> Callback | None:
    """The ``prune`` group's callback (GradualMagnitudePruning or ChannelPruning), or None with ``prune=none``."""
    prune_cfg = cfg.get("prune")
    if not (isinstance(prune_cfg, Mapping) and "_target_" in prune_cfg):
        return None
    if not cfg.get("train", True):
        raise ValueError("prune=... prunes while training, and train=false skips training; drop train=false")
    return instantiate(prune_cfg)


def export_network(
    module: pl.LightningModule, datamodule: ImageClassificationDataModule, cfg: DictConfig, trainer: pl.Trainer
) -> dict[str, Any] | None:
    """Write OUTPUT_DIR/model.onnx (and model.edge for a quantized network) per the ``export`` group, and run
    them in ONNX Runtime and the INT8 runtime on the test set.

    ``export.onnx=auto`` exports only quantized networks (as QDQ); ``true`` exports float ones as FP32 too.
    """
    export_cfg = cfg.get("export") or {}
    _, network = find_network(module)
    choice = export_cfg.get("onnx", "auto")
    if choice is False or choice == "false" or (choice == "auto" and not is_prepared(network)):
        return None
    if is_prepared(network) and inactive_quantizers(network):
        log.warning("no ONNX export: the network's quantization never started (quant.start_epoch beyond the epochs run?)")
        return None
    example = batch_input(next(iter(datamodule.test_dataloader())))[:1]
    return export_int8(network, example, cfg.paths.output_dir, opset=int(export_cfg.get("opset", 17)),
                       loader=datamodule.test_dataloader() if export_cfg.get("evaluate", True) else None,
                       max_batches=test_batch_limit(trainer), edge=bool(export_cfg.get("edge", True)))


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Every ``_target_`` entry of the ``logger`` group."""
    return [instantiate(entry) for entry in (logger_cfg or {}).values() if isinstance(entry, Mapping) and "_target_" in entry]


def instantiate_callbacks(callbacks_cfg: DictConfig | None, have_logger: bool) -> list[Callback]:
    """Every ``_target_`` entry of the ``callbacks`` group; the LR monitor is dropped when nothing logs."""
    callbacks = []
    for name, entry in (callbacks_cfg or {}).items():
        if not (isinstance(entry, Mapping) and "_target_" in entry):
            continue
        callback = instantiate(entry)
        if isinstance(callback, LearningRateMonitor) and not have_logger:
            log.info("callbacks.%s skipped: a learning-rate monitor needs a logger", name)
            continue
        callbacks.append(callback)
    return callbacks


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` if set, else this output directory's last.ckpt.

    The second case is a requeued cluster job (SLURM preemption through submitit): it runs again in
    the same output directory, and picks up where it stopped. Fresh runs get fresh directories.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        if ckpt_path not in ("last", "best") and not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist; give the path of a .ckpt file to resume")
        return ckpt_path
    last = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    if os.path.isfile(last):
        log.info("resuming from %s left by an earlier attempt of this job", last)
        return last
    return None


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """Path of the best checkpoint kept by the trainer's monitoring ModelCheckpoint, if any."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor and os.path.isfile(callback.best_model_path or ""):
            return callback.best_model_path
    return None


def _scalar_metrics(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {
        key[len(prefix):]: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and (not isinstance(value, torch.Tensor) or value.numel() == 1)
    }


def build_summary(
    cfg: DictConfig,
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: ImageClassificationDataModule,
    fit_metrics: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    tested_checkpoint: str | None,
    wall_time_s: float,
) -> dict[str, Any]:
    """What a run produced: accuracy, size, cost, where its checkpoints are, and how long it took."""
    net = getattr(module, "net", module)
    profile = profile_model(net, datamodule.input_shape)
    distillation = next((c for c in trainer.callbacks if isinstance(c, KnowledgeDistillation)), None)
    last = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    return {
        "task_name": cfg.get("task_name"),
        "model": cfg.model.name,
        "data": datamodule.name,
        "test": _scalar_metrics(test_metrics, "test/"),
        "val": _scalar_metrics(fit_metrics, "val/"),
        "parameters": profile.parameters,
        "macs": profile.macs,
        "model_bytes": profile.model_bytes,
        "input_shape": list(profile.input_shape),
        "checkpoint": tested_checkpoint,
        "last_checkpoint": last if os.path.isfile(last) else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(wall_time_s, 2),
        "output_dir": cfg.paths.output_dir,
        "distill": distillation_summary(distillation, cfg, datamodule) if distillation is not None else None,
        "quant": quantization_summary(trainer),
        "prune": pruning_summary(trainer, net),
        "student": model_spec(cfg, datamodule).get("derive"),
        "command": " ".join(sys.argv),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
        },
    }


def quantization_summary(trainer: pl.Trainer) -> dict[str, Any] | None:
    """What the quant group did: QAT settings and schedule, or PTQ calibration; None for a float run."""
    callback = next((c for c in trainer.callbacks if isinstance(c, (QuantizationAwareTraining, PostTrainingQuantization))), None)
    if callback is None:
        return None
    network = callback.network
    summary: dict[str, Any] = {"method": "qat" if isinstance(callback, QuantizationAwareTraining) else "ptq",
                               **callback.config.as_dict()}
    if isinstance(callback, QuantizationAwareTraining):
        summary.update(callback.schedule)
    else:
        summary.update(num_batches=callback.num_batches, split=callback.split)
    if network is not None and is_prepared(network):
        summary.update(int8_layers=len(network.quant_plan.folds), int8_tensors=len(network.quant_plan.points))
    return summary


def pruning_summary(trainer: pl.Trainer, net: nn.Module) -> dict[str, Any] | None:
    """What the prune group did: GMP's schedule and final sparsity, or the channels and MACs channel pruning
    removed; with the weight bytes dense and as the INT8 runtime stores them. None without pruning."""
    callback = next((c for c in trainer.callbacks if isinstance(c, (GradualMagnitudePruning, ChannelPruning))), None)
    if callback is None:
        return None
    if isinstance(callback, GradualMagnitudePruning):
        summary: dict[str, Any] = {
            "method": "gmp", "scope": callback.scope,
            "schedule": dataclasses.asdict(callback.schedule) if callback.schedule else None,
            "sparsity": callback.final_report,
        }
    else:
        summary = {
            "method": "channel", "importance": callback.importance, "target_macs": callback.target_macs,
            "steps": callback.steps, "original_macs": callback.original_macs,
            "original_parameters": callback.original_parameters, "history": callback.history,
        }
    summary["weight_bytes"] = weight_bytes(net)
    return summary


def distillation_summary(
    distillation: KnowledgeDistillation, cfg: DictConfig, datamodule: ImageClassificationDataModule
) -> dict[str, Any]:
    """The teacher's size and checkpoint, the losses and the feature points of a distillation run."""
    teacher = profile_model(distillation.teacher, datamodule.input_shape)
    return {
        "teacher": {
            "name": cfg.teacher.get("name"),
            "checkpoint": cfg.teacher.get("ckpt"),
            "parameters": teacher.parameters,
            "macs": teacher.macs,
        },
        "losses": {name: repr(loss) for name, loss in distillation.losses.items()},
        "points": [list(pair[:2]) for pair in distillation.pairs] if distillation.pairs else None,
    }


def test_network(net: nn.Module, datamodule: ImageClassificationDataModule, cfg: DictConfig) -> dict[str, float]:
    """Test accuracy of a bare network (a teacher) on the data's test split, on one device."""
    trainer_cfg = cfg.trainer
    tester = pl.Trainer(
        accelerator=trainer_cfg.get("accelerator", "auto"),
        devices=1,
        precision=trainer_cfg.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        fast_dev_run=trainer_cfg.get("fast_dev_run", False),
        limit_test_batches=trainer_cfg.get("limit_test_batches"),
    )
    module = ClassificationModule(net, num_classes=datamodule.num_classes)
    return _scalar_metrics(tester.test(module, datamodule=datamodule, verbose=False)[0], "test/")


def save_network(module: pl.LightningModule, path: str) -> str:
    """The module's weights with the model spec it was built from, atomically: ``load_teacher(path)`` reads it."""
    buffer = io.BytesIO()
    spec = module.hparams.get("net") if isinstance(module.hparams.get("net"), Mapping) else None
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"net": dict(spec) if spec else None}}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_summary(summary: Mapping[str, Any], output_dir: str) -> str:
    """Write summary.json into ``output_dir`` atomically and return its path."""
    return atomic_write_json(os.path.join(output_dir, "summary.json"), dict(summary))
