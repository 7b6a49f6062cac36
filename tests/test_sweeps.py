"""Hydra multirun: the basic launcher, submitit's local launcher, and the SLURM launcher's config."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT

SWEEP = [
    "data=synthetic",
    "data.train_samples=256",
    "data.test_samples=64",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "logger=none",
    "optimizer.lr=0.05,0.1",
]


def _run_sweep(tmp_path, *launcher: str) -> list:
    command = [sys.executable, "train.py", "-m", *SWEEP, *launcher, f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(tmp_path.rglob("summary.json"))


@pytest.mark.slow
def test_basic_launcher_runs_a_two_job_sweep(tmp_path):
    summaries = _run_sweep(tmp_path)
    assert [path.parent.name for path in summaries] == ["0", "1"]


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    summaries = _run_sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert [path.parent.name for path in summaries] == ["0", "1"]
    assert list(tmp_path.rglob(".submitit"))


def test_slurm_launcher_config_composes_for_a_cluster():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.partition == "gpu"
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0
