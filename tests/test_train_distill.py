"""train.py with distill=...: a teacher from a checkpoint, resuming exactly, clear errors, and DDP."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.errors import InstantiationException

from conftest import QUICK, ROOT, compose_config
from lightning_edge.models import create_model, read_state_dict
from train import run, train

SYNTHETIC = ["data=synthetic", "data.crop_padding=2", "data.hflip=true", "model.name=cifar_resnet20", "logger=csv", *QUICK]


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> str:
    """A ClassificationModule checkpoint of a WRN-16-2 trained briefly on the synthetic data."""
    folder = tmp_path_factory.mktemp("teacher")
    overrides = [*SYNTHETIC, "model.name=cifar_wrn_16_2", "trainer.max_epochs=1", "test=false"]
    return train(compose_config(overrides, folder))["last_checkpoint"]


def test_distill_kd_at_trains_from_a_train_py_checkpoint(teacher_checkpoint, tmp_path):
    overrides = [*SYNTHETIC, "distill=kd_at", f"teacher.ckpt={teacher_checkpoint}", "trainer.max_epochs=1"]
    summary = train(compose_config(overrides, tmp_path))
    distill = summary["distill"]
    assert distill["teacher"]["parameters"] == 691_674 and distill["teacher"]["checkpoint"] == teacher_checkpoint
    assert distill["points"] == [["layer1", "layer1"], ["layer2", "layer2"], ["layer3", "layer3"]]
    assert set(distill["losses"]) == {"kd", "at"}
    assert summary["parameters"] == 272_474  # the student: ResNet-20 for 3-channel 32x32 synthetic data
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {"distill/kd_epoch", "distill/at_epoch", "distill/total_epoch"} <= set(metrics)


def test_teacher_by_name_with_a_state_dict(tmp_path):
    torch.save(create_model("cifar_resnet32", num_classes=10, in_chans=3).state_dict(), tmp_path / "teacher.pt")
    overrides = [*SYNTHETIC, "distill=kd", "teacher.name=cifar_resnet32", f"teacher.ckpt={tmp_path / 'teacher.pt'}", "trainer.fast_dev_run=true"]
    summary = train(compose_config(overrides, tmp_path))
    assert summary["distill"]["teacher"]["name"] == "cifar_resnet32" and summary["distill"]["points"] is None


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["distill=kd_at"], ValueError, "distillation needs a trained teacher: teacher.ckpt=PATH"),
        (["distill=at", "teacher.ckpt=/nowhere.ckpt"], FileNotFoundError, "checkpoint '/nowhere.ckpt' does not exist"),
        (["distill=at", "teacher.name=cifar_wrn_40_2", "teacher.ckpt=TEACHER"], ValueError, "holds a .cifar_wrn_16_2., not the .cifar_wrn_40_2."),
        (["distill=at", "distill.losses.at.mode=pepper", "teacher.ckpt=TEACHER"], InstantiationException, "unknown attention transfer mode"),
    ],
    ids=["no-teacher", "missing-checkpoint", "wrong-architecture", "bad-mode"],
)
def test_bad_distillation_settings_stop_before_training(overrides, error, message, teacher_checkpoint, tmp_path):
    overrides = [o.replace("TEACHER", teacher_checkpoint) for o in overrides]
    with pytest.raises(error, match=message):
        train(compose_config([*SYNTHETIC, *overrides], tmp_path))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resumed_distillation_continues_exactly(teacher_checkpoint, tmp_path):
    distill = ["distill=kd_at", f"teacher.ckpt={teacher_checkpoint}", "+distill.losses.hint.weight=1.0"]

    def final(name: str) -> list[str]:
        return ["+callbacks.final._target_=conftest.SaveFinalWeights", f"+callbacks.final.path={tmp_path / name}.pt"]

    straight = train(compose_config([*SYNTHETIC, *distill, "trainer.max_epochs=2", *final("straight")], tmp_path / "straight"))
    interrupt = ["+callbacks.interrupt._target_=conftest.StopAfterEpochs", "+callbacks.interrupt.epochs=1", "test=false"]
    first = train(compose_config([*SYNTHETIC, *distill, "trainer.max_epochs=2", *interrupt], tmp_path / "first"))
    state = torch.load(first["last_checkpoint"], weights_only=True)["callbacks"]["KnowledgeDistillation"]
    assert state["pairs"] == [["layer1", "layer1", 16, 32], ["layer2", "layer2", 32, 64], ["layer3", "layer3", 64, 128]]
    assert state["losses"]["hint"]["adapters.0.weight"].shape == (32, 16, 1, 1)
    resume = [f"ckpt_path={first['last_checkpoint']}", *final("resumed")]
    resumed = train(compose_config([*SYNTHETIC, *distill, "trainer.max_epochs=2", *resume], tmp_path / "resumed"))
    assert resumed["global_step"] == straight["global_step"] == 2 * first["global_step"]
    expected, actual = read_state_dict(tmp_path / "straight.pt"), read_state_dict(tmp_path / "resumed.pt")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_each_run_the_teacher_on_their_own_shard(teacher_checkpoint, tmp_path):
    probe = tmp_path / "probe"
    command = [
        sys.executable, "train.py", *SYNTHETIC, "distill=kd_at", f"teacher.ckpt={teacher_checkpoint}",
        "+distill.losses.hint.weight=1.0", "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_epochs=1",
        "data.num_workers=0", "+callbacks.probe._target_=conftest.TeacherProbe", f"+callbacks.probe.path={probe}",
        f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT / 'tests'}"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probe.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    steps = ranks[0]["global_step"]
    for record in ranks:
        assert len(record["teacher_inputs"]) == steps > 0  # one teacher pass per step on every rank
        assert record["teacher_training"] is False
    assert ranks[0]["teacher_inputs"] != ranks[1]["teacher_inputs"]  # different shards
    assert ranks[0]["adapters"] == ranks[1]["adapters"]  # adapter gradients averaged across ranks
    assert ranks[0]["student"] == pytest.approx(ranks[1]["student"], rel=1e-9)


def test_moonshine_pipeline_trains_the_teacher_then_distils_its_student(tmp_path):
    overrides = [
        "recipe=moonshine_resnet", *SYNTHETIC[:3], "logger=csv", *QUICK, "trainer.max_epochs=2", "teacher.max_epochs=1",
        "student.block=DW", "quant.start_epoch=1",
    ]
    summary = run(compose_config(overrides, tmp_path))
    teacher_summary = tmp_path / "teacher" / "summary.json"
    assert json.loads(teacher_summary.read_text())["model"] == "cifar_resnet20"
    assert summary["teacher_run"]["parameters"] == summary["distill"]["teacher"]["parameters"] == 272_474
    assert summary["student"]["block"] == "DW" and summary["parameters"] < summary["teacher_run"]["parameters"] / 2
    assert summary["teacher_run"]["test"]["acc"] == pytest.approx(summary["distill"]["teacher"]["test"]["acc"])
    assert summary["distill"]["points"] == [["layer1", "layer1"], ["layer2", "layer2"], ["layer3", "layer3"]]
    assert json.loads((tmp_path / "summary.json").read_text())["teacher_run"] == summary["teacher_run"]
    # The student's last epoch trains quantized; the INT8 student is tested, exported and run in ONNX Runtime.
    assert summary["quant"]["method"] == "qat" and summary["quant"]["start_epoch"] == 1
    assert summary["checkpoint"] is None and summary["export"]["format"] == "qdq"
    assert summary["export"]["onnxruntime"]["agreement"] >= 0.95
    assert json.loads(teacher_summary.read_text())["quant"] is None  # the teacher stays float
    # A requeued job in the same folder keeps the finished teacher stage and resumes the student.
    written = teacher_summary.stat().st_mtime_ns
    again = run(compose_config(overrides, tmp_path))
    assert teacher_summary.stat().st_mtime_ns == written and again["global_step"] == summary["global_step"]
