"""KnowledgeDistillation on LightningModules written the way users write them, with no change to their code."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn

from conftest import UserModule
from conftest import quick_trainer as trainer
from conftest import synthetic_data as data
from lightning_edge.callbacks import KnowledgeDistillation
from lightning_edge.distill import FeatureHintLoss
from lightning_edge.models import create_model
from lightning_edge.module import ClassificationModule
from lightning_edge.optim import cosine_with_warmup


class DictModule(UserModule):
    """Returns a dict, as many users do, with an extra entry the callback must keep."""

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return {"loss": F.cross_entropy(self.net(images), labels), "batch_size": images.shape[0]}


class ModuleHoldingTheTeacher(UserModule):
    """Keeps the teacher as a submodule, so Lightning itself switches it to train mode at every stage."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher


class RecordOutputs(Callback):
    def __init__(self):
        self.outputs = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.outputs.append(outputs)


def teacher_network() -> nn.Module:
    torch.manual_seed(1)
    teacher = create_model("cifar_wrn_16_2", num_classes=10, in_chans=1)
    teacher.train()
    with torch.no_grad():  # give the BN layers statistics of their own, so a change would show
        teacher(torch.randn(32, 1, 28, 28) * 3 + 1)
    return teacher


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def assert_unchanged(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"teacher's {key} changed"


def test_unchanged_user_module_distils_and_the_teacher_ends_frozen():
    teacher = teacher_network()
    before = snapshot(teacher)
    callback = KnowledgeDistillation(teacher=teacher)
    student = UserModule()
    student_before = snapshot(student.net)
    fit = trainer(callback, max_epochs=2)
    fit.fit(student, datamodule=data())

    assert callback.teacher is teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert_unchanged(before, teacher)  # weights and BN statistics, through training, validation and sanity check
    assert any(not torch.equal(student_before[k], v) for k, v in student.net.state_dict().items())
    metrics = fit.callback_metrics
    for name in ("distill/kd", "distill/at", "distill/total"):
        assert name in metrics and torch.isfinite(metrics[name])
    # The last step's loss is (1 - alpha) * the user's loss + the terms.
    expected = 0.1 * metrics["user_loss"] + metrics["distill/kd_step"] + metrics["distill/at_step"]
    assert metrics["distill/total_step"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert [pair[:2] for pair in callback.pairs] == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    assert "training_step" not in student.__dict__  # the wrapper is gone after fit


def test_teacher_held_inside_the_module_stays_in_eval_mode():
    teacher = teacher_network()
    before = snapshot(teacher)
    student = ModuleHoldingTheTeacher(teacher)
    trainer(KnowledgeDistillation(teacher=teacher, losses=["kd"])).fit(student, datamodule=data())
    assert_unchanged(before, teacher)


def test_dict_returning_training_step_keeps_its_other_entries():
    record = RecordOutputs()
    callback = KnowledgeDistillation(teacher=teacher_network(), losses={"kd": {"temperature": 2.0, "alpha": 0.5}})
    trainer(callback, record, limit_train_batches=2, limit_val_batches=0).fit(DictModule(), datamodule=data())
    assert [sorted(output) for output in record.outputs] == [["batch_size", "loss"]] * 2
    assert record.outputs[0]["batch_size"] == 16


def test_feature_points_are_resolved_before_training_from_the_datamodule():
    teacher = teacher_network()
    callback = KnowledgeDistillation(teacher=teacher, losses=["at"], points=["layer2", "layer3:layer2"])
    fit = trainer(callback, max_steps=1, limit_val_batches=0)
    fit.fit(UserModule(), datamodule=data())
    assert callback.pairs == [("layer2", "layer2", 32, 64), ("layer3", "layer2", 64, 64)]


def test_impossible_points_fail_before_any_training_step_naming_both_networks():
    class Flat(UserModule):
        def __init__(self):
            super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)))

    student = Flat()
    before = snapshot(student)
    with pytest.raises(ValueError, match=r"Student candidates: none\. Teacher candidates: layer1 \(32x28x28\)"):
        trainer(KnowledgeDistillation(teacher=teacher_network())).fit(student, datamodule=data())
    assert_unchanged(before, student)
    with pytest.raises(ValueError, match="the student has no module at path 'layer9'. Did you mean layer3, layer2, layer1"):
        trainer(KnowledgeDistillation(teacher=teacher_network(), points=["layer9:layer1"])).fit(UserModule(), datamodule=data())


def test_points_resolve_at_the_first_step_when_no_input_shape_is_known():
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    callback = KnowledgeDistillation(teacher=teacher_network(), losses=["at", "hint"])
    fit = trainer(callback, max_steps=3)
    fit.fit(UserModule(), loader)
    assert len(callback.pairs) == 3
    assert len(fit.optimizers[0].param_groups) == 2  # the hint adapters joined at the first step


def test_hint_adapters_train_with_the_student_and_follow_its_schedule():
    hint = FeatureHintLoss()
    callback = KnowledgeDistillation(teacher=teacher_network(), losses={"hint": hint}, points=["layer3"])
    module = ClassificationModule(
        create_model("cifar_resnet20", num_classes=10, in_chans=1),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        scheduler=lambda optimizer, total_steps, steps_per_epoch: cosine_with_warmup(optimizer, total_steps, steps_per_epoch, warmup_epochs=0.5),
    )
    fit = trainer(callback, max_epochs=2, limit_val_batches=0)
    fit.fit(module, datamodule=data())
    adapter = hint.adapters[0]
    assert adapter.weight.shape == (128, 64, 1, 1)
    optimizer = fit.optimizers[0]
    student_group, adapter_group = optimizer.param_groups
    assert adapter_group["params"] == [adapter.weight]
    assert adapter_group["lr"] == student_group["lr"] and adapter_group["momentum"] == 0.9
    assert optimizer.state[adapter.weight]["momentum_buffer"].abs().sum() > 0
    assert "distill/hint" in fit.callback_metrics


def test_teacher_can_run_in_bfloat16():
    callback = KnowledgeDistillation(teacher=teacher_network(), teacher_precision="bf16")
    fit = trainer(callback, max_steps=2, limit_val_batches=0)
    fit.fit(UserModule(), datamodule=data())
    assert torch.isfinite(fit.callback_metrics["distill/total"])
    assert next(callback.teacher.parameters()).dtype == torch.float32  # autocast, the weights stay as they were


def test_bad_arguments_are_named():
    teacher = teacher_network()
    with pytest.raises(ValueError, match="teacher_precision"):
        KnowledgeDistillation(teacher=teacher, teacher_precision="fp8")
    with pytest.raises(ValueError, match="a feature point is"):
        KnowledgeDistillation(teacher=teacher, points=[["a", "b", "c"]])
    with pytest.raises(FileNotFoundError, match="neither a module nor an existing checkpoint"):
        KnowledgeDistillation(teacher="cifar_wrn_40_2")
    with pytest.raises(ValueError, match="has no checkpoint: distilling from untrained weights teaches nothing"):
        KnowledgeDistillation(teacher={"name": "cifar_wrn_40_2"})


def test_manual_optimisation_is_refused_with_the_reason():
    class Manual(UserModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(RuntimeError, match="manual optimisation ignores"):
        trainer(KnowledgeDistillation(teacher=teacher_network())).fit(Manual(), datamodule=data())


def test_a_second_fit_with_the_same_callback_keeps_the_points_and_trained_adapters():
    hint = FeatureHintLoss()
    callback = KnowledgeDistillation(teacher=teacher_network(), losses={"at": None, "hint": hint})
    module = UserModule()
    trainer(callback, max_steps=2, limit_val_batches=0).fit(module, datamodule=data())
    adapter = hint.adapters[0]
    trained = adapter.weight.detach().clone()
    second = trainer(callback, max_steps=2, limit_val_batches=0)
    second.fit(module, datamodule=data())
    assert hint.adapters[0] is adapter and not torch.equal(adapter.weight, trained)  # kept, and trained further
    assert second.optimizers[0].param_groups[1]["params"] == list(hint.adapters.parameters())
    assert torch.isfinite(second.callback_metrics["distill/hint"])
