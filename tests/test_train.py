"""train.py end to end: every recipe, resuming, loggers, summary.json, and bad input stopping early."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import QUICK, RECIPES, ROOT, compose_config, requires_fashion_mnist, write_cifar10
from lightning_edge.models import read_state_dict
from train import run, train


def _recipe_data_overrides(recipe: str, tmp_path) -> list[str]:
    """CIFAR recipes run on a small torchvision-layout copy: CIFAR-10 cannot be downloaded here."""
    cfg = compose_config([f"recipe={recipe}"], tmp_path)
    if "CIFAR" in cfg.data._target_:
        return [f"data.root={write_cifar10(tmp_path / 'cifar')}", "data.num_workers=0"]
    return []


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_runs_one_batch(recipe, tmp_path):
    overrides = [f"recipe={recipe}", "trainer.fast_dev_run=true", *QUICK, *_recipe_data_overrides(recipe, tmp_path)]
    summary = run(compose_config(overrides, tmp_path))
    assert summary["global_step"] == 1
    assert summary["task_name"] == recipe
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["parameters"] == summary["parameters"] > 0 and written["macs"] > 0
    assert 0.0 <= written["test"]["acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_passes_fast_dev_run_from_the_command_line(recipe, tmp_path):
    command = [sys.executable, "train.py", f"recipe={recipe}", "trainer.fast_dev_run=true", f"paths.log_dir={tmp_path}"]
    command += _recipe_data_overrides(recipe, tmp_path)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [path for path in tmp_path.rglob("summary.json") if path.parent.name != "teacher"]
    assert len(summaries) == 1
    if compose_config([f"recipe={recipe}"], tmp_path).teacher.train:  # the teacher stage ran first, beside it
        assert (summaries[0].parent / "teacher" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name=resnet_twenty"], "unknown model name 'resnet_twenty'"),
        (["data=mnist_digits"], "Could not find 'data/mnist_digits'"),
        (["data.root=/nonexistent", "data.system_dirs=[]", "data.download=false"], "apt-get install dataset-fashion-mnist"),
        (["data=cifar10", "data.root=/nonexistent"], "CIFAR-10 not found"),
    ],
    ids=["unknown-model", "unknown-dataset", "missing-fashion-mnist", "missing-cifar10"],
)
def test_bad_input_stops_before_training_with_a_clear_message(overrides, message, tmp_path):
    command = [sys.executable, "train.py", *overrides, f"paths.log_dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Epoch 0" not in result.stderr + result.stdout
    assert not list(tmp_path.rglob("*.ckpt"))


def _synthetic(tmp_path, *extra: str) -> list[str]:
    return [
        "data=synthetic",
        "data.crop_padding=2",
        "data.hflip=true",
        "model.name=cifar_resnet20",
        "logger=csv",
        *QUICK,
        *extra,
    ]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    def final(name: str) -> list[str]:
        return ["+callbacks.final._target_=conftest.SaveFinalWeights", f"+callbacks.final.path={tmp_path / name}.pt"]

    straight = train(compose_config(_synthetic(tmp_path, "trainer.max_epochs=2", *final("straight")), tmp_path / "straight"))
    interrupted = ["trainer.max_epochs=2", "test=false", "+callbacks.interrupt._target_=conftest.StopAfterEpochs", "+callbacks.interrupt.epochs=1"]
    first = train(compose_config(_synthetic(tmp_path, *interrupted), tmp_path / "first"))
    resumed = train(
        compose_config(
            _synthetic(tmp_path, "trainer.max_epochs=2", f"ckpt_path={first['last_checkpoint']}", *final("resumed")),
            tmp_path / "resumed",
        )
    )
    assert resumed["global_step"] == straight["global_step"] == 2 * first["global_step"]
    for run in (straight, resumed):  # last.ckpt is the final state even when the last epoch was not the best
        assert torch.load(run["last_checkpoint"], weights_only=True)["global_step"] == run["global_step"]
    expected = read_state_dict(tmp_path / "straight.pt")
    actual = read_state_dict(tmp_path / "resumed.pt")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_requeued_job_resumes_from_its_own_last_checkpoint(tmp_path):
    first = train(compose_config(_synthetic(tmp_path, "trainer.max_epochs=1", "test=false"), tmp_path))
    again = train(compose_config(_synthetic(tmp_path, "trainer.max_epochs=2"), tmp_path))
    assert again["global_step"] == 2 * first["global_step"]


def test_missing_resume_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path='nope.ckpt'"):
        train(compose_config(_synthetic(tmp_path, "ckpt_path=nope.ckpt"), tmp_path))


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "none"])
def test_every_logger_group_runs(logger, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: wandb must run offline
    summary = train(compose_config(_synthetic(tmp_path, f"logger={logger}", "trainer.fast_dev_run=true"), tmp_path))
    assert summary["global_step"] == 1
    if logger == "wandb":
        assert list(tmp_path.rglob("offline-run-*"))
    if logger == "tensorboard":
        assert list(tmp_path.rglob("events.out.tfevents.*"))


@pytest.mark.slow
@requires_fashion_mnist
def test_brief_training_on_real_fashion_mnist_beats_chance_by_far(tmp_path):
    overrides = [
        "recipe=baseline",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=120",
        "trainer.limit_val_batches=4",
        "trainer.num_sanity_val_steps=0",
        "logger=none",
        *QUICK,
    ]
    summary = train(compose_config(overrides, tmp_path))
    # Chance is 10%; 120 steps of ResNet-20 (15,360 images) reach about 80% on the full test set.
    assert summary["test"]["acc"] > 0.7
    assert summary["test"]["acc_top5"] > 0.95
    assert os.path.isfile(summary["checkpoint"])
