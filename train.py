"""Train, test and summarise one run, configured by Hydra.

    python train.py recipe=moonshine_resnet              # teacher, then its Moonshine student, distilled
    python train.py recipe=baseline                      # a recipe from recipes/recipe/
    python train.py model.name=cifar_wrn_16_2 data=cifar10 trainer.max_epochs=30
    python train.py distill=kd_at teacher.ckpt=outputs/baseline/runs/.../checkpoints/last.ckpt  # distil
    python train.py quant=qat model.checkpoint_path=FP32.ckpt trainer.max_epochs=1 optimizer.lr=0.01  # QAT, ONNX QDQ
    python train.py prune=gmp model.checkpoint_path=FP32.ckpt trainer.max_epochs=3 optimizer.lr=0.02  # 80% sparse
    python train.py quant=ptq train=false model.checkpoint_path=FP32.ckpt     # post-training quantization
    python train.py -m optimizer.lr=0.05,0.1 hydra/launcher=submitit_local   # a sweep
    python train.py recipe=baseline ckpt_path=outputs/baseline/runs/.../checkpoints/last.ckpt  # resume

Each run writes its checkpoints, logs and summary.json into its output folder (outputs/TASK/runs/TIME).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LIGHTNING_EDGE_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from pytorch_lightning.utilities.rank_zero import rank_zero_only  # noqa: E402

import lightning_edge.models  # noqa: E402,F401  (registers our models with timm)
from lightning_edge.callbacks import QuantizationAwareTraining  # noqa: E402
from lightning_edge.training import (  # noqa: E402
    best_checkpoint,
    build_datamodule,
    build_distillation,
    build_module,
    build_pruning,
    build_quantization,
    build_summary,
    export_network,
    instantiate_callbacks,
    instantiate_loggers,
    resolve_checkpoint,
    save_network,
    teacher_stage_config,
    test_network,
    write_summary,
)

log = logging.getLogger("train")


def train(cfg: DictConfig, final_weights: bool = False) -> dict[str, Any]:
    """Fit and test the configured model; return the summary that is also written to summary.json.

    With ``final_weights`` the network's final weights are also written to checkpoints/final_weights.ckpt
    (a teacher stage needs a checkpoint even when the trainer keeps none, as in ``fast_dev_run``).
    """
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"), have_logger=bool(loggers))
    distillation = build_distillation(cfg, datamodule)
    if distillation is not None:
        callbacks.insert(0, distillation)
    quantization = build_quantization(cfg)
    if quantization is not None:
        callbacks.insert(1 if distillation is not None else 0, quantization)
    pruning = build_pruning(cfg)
    if pruning is not None:  # after KD and QAT, as ARCHITECTURE.md orders them
        callbacks.insert(sum(c is not None for c in (distillation, quantization)), pruning)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    fit_metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_checkpoint(cfg))
        fit_metrics = dict(trainer.callback_metrics)
    # A QAT or pruning run tests (and exports) its final weights: the best epoch may predate quantization
    # or the final sparsity.
    final_only = isinstance(quantization, QuantizationAwareTraining) or pruning is not None
    tested_checkpoint = None if final_only else best_checkpoint(trainer)
    test_metrics: dict[str, Any] = {}
    if cfg.get("test", True):
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=tested_checkpoint, weights_only=False)[0]
    summary = build_summary(
        cfg, trainer, module, datamodule, fit_metrics, test_metrics, tested_checkpoint, time.perf_counter() - started
    )
    if distillation is not None and cfg.get("test", True) and trainer.world_size == 1:
        summary["distill"]["teacher"]["test"] = test_network(distillation.teacher, datamodule, cfg)
    if cfg.get("test", True) and trainer.is_global_zero:
        summary["export"] = export_network(module, datamodule, cfg, trainer)
    if final_weights and trainer.is_global_zero:
        summary["final_weights"] = save_network(module, os.path.join(cfg.paths.output_dir, "checkpoints", "final_weights.ckpt"))
    if trainer.is_global_zero:
        path = write_summary(summary, cfg.paths.output_dir)
        log.info("summary written to %s", path)
    return summary


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole pipeline: with ``teacher.train=true`` (and no ``teacher.ckpt``) the teacher is trained first
    in OUTPUT_DIR/teacher, then the configured model (a Moonshine student, say) is trained from it."""
    started = time.perf_counter()
    teacher_summary = None
    if cfg.teacher.get("train") and not cfg.teacher.get("ckpt"):
        stage = teacher_stage_config(cfg)
        finished = os.path.join(stage.paths.output_dir, "summary.json")
        if os.path.isfile(finished):  # a requeued job: the teacher stage already ended
            with open(finished) as handle:
                teacher_summary = json.load(handle)
            log.info("teacher already trained in %s", stage.paths.output_dir)
        else:
            log.info("training the teacher %s in %s", cfg.teacher.name, stage.paths.output_dir)
            teacher_summary = train(stage, final_weights=True)
        with open_dict(cfg):
            cfg.teacher.ckpt = teacher_summary["checkpoint"] or teacher_summary.get("final_weights")
    summary = train(cfg)
    if teacher_summary is not None:
        summary["teacher_run"] = {
            key: teacher_summary.get(key) for key in ("model", "test", "val", "parameters", "macs", "checkpoint", "wall_time_s")
        }
        summary["pipeline_wall_time_s"] = round(time.perf_counter() - started, 2)
        if rank_zero_only.rank == 0:
            write_summary(summary, cfg.paths.output_dir)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the test accuracy so sweepers can optimise it."""
    summary = run(cfg)
    return summary["test"].get("acc")


if __name__ == "__main__":
    main()
