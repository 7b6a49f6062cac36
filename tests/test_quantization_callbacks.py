"""QuantizationAwareTraining and PostTrainingQuantization on unchanged LightningModules and through train.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from conftest import QUICK, ROOT, SYNTHETIC, UserModule, compose_config, quick_trainer
from conftest import synthetic_data as data
from lightning_edge.callbacks import ExportInt8, KnowledgeDistillation, QuantizationAwareTraining
from lightning_edge.models import create_model, read_state_dict
from lightning_edge.quant import QuantConv2d, activation_quantizers
from lightning_edge.quant.graph import UnsupportedModelError
from train import train



def trainer(*callbacks, **kwargs) -> pl.Trainer:
    return quick_trainer(*callbacks, **{"limit_val_batches": 1, **kwargs})


class RecordRanges(pl.Callback):
    """The input quantizer's range and the first conv's BN statistics after every training batch."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        quantizer = pl_module.net.activation_quantizers["layer1_0_relu2"]
        self.rows.append((trainer.current_epoch, float(quantizer.max_value), float(pl_module.net.conv1.bn.running_mean.sum()),
                          bool(quantizer.initialized)))


def test_unchanged_module_trains_with_the_freeze_schedule():
    module, record = UserModule(), RecordRanges()
    qat = QuantizationAwareTraining(freeze_bn_epoch=1, freeze_observers_epoch=2)
    trainer(qat, record, max_epochs=3).fit(module, datamodule=data())
    assert isinstance(module.net.conv1, QuantConv2d) and module.net.conv1.bn is not None
    assert all(quantizer.active for quantizer in activation_quantizers(module.net))
    by_epoch = {epoch: [row for row in record.rows if row[0] == epoch] for epoch in (0, 1, 2)}
    assert len({row[2] for row in by_epoch[0]}) > 1                     # BN statistics update in epoch 0
    assert len({row[2] for row in by_epoch[1] + by_epoch[2]}) == 1      # frozen from epoch 1
    assert len({row[1] for row in by_epoch[1]}) > 1                     # ranges still move in epoch 1
    assert len({row[1] for row in by_epoch[2]}) == 1                    # fixed from epoch 2
    assert bool(module.net.conv1.bn_frozen) and not bool(module.net.activation_quantizers["model_input"].observer_enabled)


def test_start_epoch_trains_in_float_first():
    module, record = UserModule(), RecordRanges()
    trainer(QuantizationAwareTraining(start_epoch=1), record, max_epochs=2).fit(module, datamodule=data())
    assert not any(row[3] for row in record.rows if row[0] == 0)  # no range observed while training in float
    assert all(row[3] for row in record.rows if row[0] == 1)


def test_qat_and_knowledge_distillation_in_one_fit():
    torch.manual_seed(1)
    teacher = create_model("cifar_wrn_16_2", num_classes=10, in_chans=1).eval()
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    module = UserModule()
    inputs = []
    module.net.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()) if m.training else None,
                                         prepend=True)
    logged = {}

    class Keep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.update({key: float(value) for key, value in trainer.callback_metrics.items()})

    distillation = KnowledgeDistillation(teacher=teacher)
    trainer(distillation, QuantizationAwareTraining(), Keep(), limit_train_batches=3).fit(module, datamodule=data())
    assert {"distill/kd_step", "distill/at_step", "distill/total_step"} <= set(logged)
    assert isinstance(module.net.layer1[0].conv1, QuantConv2d)
    assert len(inputs) == 3 and all(torch.equal(a, b) for a, b in zip(seen[-3:], inputs))  # the teacher reads raw inputs


def test_bf16_mixed_precision_keeps_quantization_in_float32():
    module = UserModule()
    trainer(QuantizationAwareTraining(), precision="bf16-mixed", limit_train_batches=3).fit(module, datamodule=data())
    quantizers = list(activation_quantizers(module.net))
    assert all(quantizer.active and quantizer.scale.dtype == torch.float32 for quantizer in quantizers)
    assert all(torch.isfinite(parameter).all() for parameter in module.parameters())


def test_resume_without_matching_settings_is_refused():
    qat = QuantizationAwareTraining(activation_bits=7)
    with pytest.raises(ValueError, match="resume with the same settings"):
        qat.load_state_dict(QuantizationAwareTraining().state_dict())
    with pytest.raises(ValueError, match="unknown observer 'histogram'"):
        QuantizationAwareTraining(observer="histogram")
    with pytest.raises(ValueError, match="start_epoch must be >= 0"):
        QuantizationAwareTraining(start_epoch=-1)


def test_resumed_qat_continues_exactly(tmp_path):
    quant = ["quant=qat", "quant.freeze_bn_epoch=1"]

    def final(name: str) -> list[str]:
        return ["+callbacks.final._target_=conftest.SaveFinalWeights", f"+callbacks.final.path={tmp_path / name}.pt"]

    straight = train(compose_config([*SYNTHETIC, *quant, "trainer.max_epochs=2", *final("straight")], tmp_path / "straight"))
    interrupt = ["+callbacks.interrupt._target_=conftest.StopAfterEpochs", "+callbacks.interrupt.epochs=1", "test=false"]
    first = train(compose_config([*SYNTHETIC, *quant, "trainer.max_epochs=2", *interrupt], tmp_path / "first"))
    saved = torch.load(first["last_checkpoint"], weights_only=True)
    assert saved["callbacks"]["QuantizationAwareTraining"]["config"]["observer"] == "minmax"
    assert "net.activation_quantizers.model_input.scale" in saved["state_dict"]
    resume = [f"ckpt_path={first['last_checkpoint']}", *final("resumed")]
    resumed = train(compose_config([*SYNTHETIC, *quant, "trainer.max_epochs=2", *resume], tmp_path / "resumed"))
    assert resumed["global_step"] == straight["global_step"] == 2 * first["global_step"]
    expected, actual = read_state_dict(tmp_path / "straight.pt"), read_state_dict(tmp_path / "resumed.pt")
    assert any(key.startswith("activation_quantizers.") for key in expected)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_export_int8_writes_and_evaluates_both_files_after_fit(tmp_path):
    """A user's own Trainer: QAT plus ExportInt8, no change to the LightningModule."""
    export = ExportInt8(dirpath=str(tmp_path / "deploy"))
    quick_trainer(QuantizationAwareTraining(), export, limit_train_batches=4, limit_test_batches=2).fit(UserModule(), datamodule=data())
    result = export.result
    assert result["format"] == "qdq" and os.path.isfile(result["onnx"])
    assert result["edge"]["path"] == str(tmp_path / "deploy" / "model.edge") and result["edge"]["bytes"] > 0
    runtime = result["edge"]["runtime"]
    assert runtime["images"] == 32 and runtime["agreement"] >= 0.9 and runtime["kernels"] in ("avx512", "avx2", "neon", "scalar")


def test_export_int8_waits_for_a_quantized_network(tmp_path):
    export = ExportInt8(dirpath=str(tmp_path))
    quick_trainer(export, limit_train_batches=2).fit(UserModule(), datamodule=data())
    assert export.result is None and not any(tmp_path.iterdir())


def test_train_py_qat_writes_an_onnx_qdq_export(tmp_path):
    summary = train(compose_config([*SYNTHETIC, "quant=qat", "trainer.max_epochs=1"], tmp_path))
    assert summary["quant"]["method"] == "qat" and summary["quant"]["int8_layers"] == 22
    assert summary["checkpoint"] is None  # the final (quantized) weights are tested
    export = summary["export"]
    assert export["format"] == "qdq" and os.path.isfile(export["onnx"]) and export["onnx"].startswith(str(tmp_path))
    assert export["onnxruntime"]["images"] == 256 and export["onnxruntime"]["agreement"] >= 0.95
    assert json.loads((tmp_path / "summary.json").read_text())["export"]["bytes"] == os.path.getsize(export["onnx"])
    edge = export["edge"]  # the INT8 runtime's plan of the same file, run on the same test images
    assert os.path.isfile(edge["path"]) and edge["path"] == str(tmp_path / "model.edge")
    assert edge["runtime"]["images"] == 256 and edge["runtime"]["agreement"] >= 0.95
    assert abs(edge["runtime"]["acc"] - export["onnxruntime"]["acc"]) <= 0.01


def test_train_py_ptq_calibrates_on_validation_images(tmp_path):
    trained = train(compose_config([*SYNTHETIC, "trainer.max_epochs=1", "export.onnx=true"], tmp_path / "float"))
    assert trained["export"]["format"] == "fp32" and trained["quant"] is None
    overrides = [*SYNTHETIC, "quant=ptq", "quant.num_batches=2", "train=false", f"model.checkpoint_path={trained['last_checkpoint']}"]
    summary = train(compose_config(overrides, tmp_path / "ptq"))
    assert summary["quant"]["method"] == "ptq" and summary["quant"]["split"] == "val"
    assert summary["export"]["format"] == "qdq"
    assert abs(summary["test"]["acc"] - summary["export"]["onnxruntime"]["acc"]) <= 0.05


@pytest.mark.parametrize(
    "overrides,message",
    [(["quant=qat", "train=false"], "nothing to train"), (["quant=ptq", "test=false"], "drop test=false"),
     (["quant=qat", "quant.observer=histogram"], "unknown observer 'histogram'")],
    ids=["qat-without-training", "ptq-without-testing", "unknown-observer"],
)
def test_train_py_refuses_quantization_settings_that_cannot_work(overrides, message, tmp_path):
    with pytest.raises(Exception, match=message):
        train(compose_config([*SYNTHETIC, *overrides], tmp_path))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_train_py_refuses_a_network_the_runtime_cannot_run(tmp_path):
    overrides = ["data=synthetic", "model.name=mobilevit_xxs", "quant=qat", "logger=none", *QUICK, "trainer.max_epochs=1"]
    with pytest.raises(UnsupportedModelError, match=r"cannot trace ByobNet with torch\.fx"):
        train(compose_config(overrides, tmp_path))


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_hold_identical_quantization_parameters(tmp_path):
    probe = tmp_path / "probe"
    command = [
        sys.executable, "train.py", *SYNTHETIC, "quant=qat", "trainer.strategy=ddp", "trainer.devices=2",
        "trainer.max_epochs=1", "data.num_workers=0", "+callbacks.probe._target_=conftest.QuantProbe",
        f"+callbacks.probe.path={probe}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", "export.onnx=false",
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probe.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["world_size"] for record in ranks] == [2, 2]
    assert len(ranks[0]["scales"]) == ranks[0]["global_step"] > 1
    assert ranks[0]["scales"] == ranks[1]["scales"]          # the same scales on both ranks after every step
    assert ranks[0]["zero_points"] == ranks[1]["zero_points"]
    assert ranks[0]["batch_sums"] != ranks[1]["batch_sums"]  # though each saw its own shard


def test_a_fresh_module_tests_from_a_qat_checkpoint(tmp_path):
    data_module, module = data(), UserModule()
    fit = trainer(QuantizationAwareTraining(), enable_checkpointing=True, default_root_dir=tmp_path, limit_train_batches=3)
    fit.fit(module, datamodule=data_module)
    checkpoint = fit.checkpoint_callback.best_model_path

    class Test(UserModule):
        def test_step(self, batch, batch_idx):
            self.log("test_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

    fresh = Test()
    tester = trainer(QuantizationAwareTraining())
    tester.test(fresh, datamodule=data_module, ckpt_path=checkpoint, weights_only=False)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.net.eval()(x), module.net.eval()(x))
