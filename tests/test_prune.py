"""Pruning: the cubic schedule's values, magnitude masks, and masks that keep pruned weights exactly zero."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAMILIES, UserModule, family, quick_trainer, requires_fashion_mnist
from conftest import synthetic_data as data
from lightning_edge.callbacks import GradualMagnitudePruning
from lightning_edge.models import create_model
from lightning_edge.prune import (
    MASK_NAME,
    CubicSchedule,
    apply_masks,
    attach_masks,
    magnitude_masks,
    make_permanent,
    prunable_layers,
    sparsity_report,
)


def test_cubic_schedule_values_at_given_steps():
    schedule = CubicSchedule(initial_sparsity=0.0, final_sparsity=0.8, start_step=100, end_step=500, frequency=100)
    expected = {0: 0.0, 99: 0.0, 100: 0.0, 150: 0.0, 200: 0.8 - 0.8 * 0.75**3, 299: 0.8 - 0.8 * 0.75**3,
                300: 0.8 - 0.8 * 0.5**3, 400: 0.8 - 0.8 * 0.25**3, 500: 0.8, 10_000: 0.8}
    for step, sparsity in expected.items():
        assert schedule.sparsity(step) == pytest.approx(sparsity, abs=1e-12), step
    assert [step for step in range(0, 1000) if schedule.is_update(step)] == [100, 200, 300, 400, 500]
    ragged = CubicSchedule(0.2, 0.9, start_step=0, end_step=250, frequency=100)  # end between two updates
    assert [step for step in range(1000) if ragged.is_update(step)] == [0, 100, 200, 300]
    assert ragged.sparsity(0) == pytest.approx(0.2) and ragged.sparsity(300) == pytest.approx(0.9)
    assert ragged.sparsity(100) == pytest.approx(0.9 - 0.7 * 0.6**3)


@pytest.mark.parametrize("kwargs,message", [
    ({"initial_sparsity": 0.5, "final_sparsity": 0.4}, "initial_sparsity"),
    ({"final_sparsity": 1.0}, "< 1"),
    ({"start_step": 10, "end_step": 10}, "start_step"),
    ({"frequency": 0}, "frequency"),
])
def test_cubic_schedule_refuses_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CubicSchedule(**kwargs)


def test_magnitude_masks_remove_exactly_the_smallest_with_stable_ties():
    weight = torch.tensor([[0.5, -0.1, 0.1, 2.0, -0.1], [0.0, 3.0, 0.1, -0.2, 1.0]])
    mask = magnitude_masks({"w": weight}, 0.5)["w"]
    # 5 go: the zero, then the four 0.1s in index order ... of which exactly four exist: 0.0, -0.1, 0.1, -0.1, 0.1
    assert mask.sum() == 5 and mask.tolist() == [[1, 0, 0, 1, 0], [0, 1, 0, 1, 1]]
    assert magnitude_masks({"w": weight}, 0.0)["w"].all()


def test_global_masks_prune_the_smaller_layer_harder():
    signs = torch.where(torch.arange(100) % 3 == 0, -1.0, 1.0)
    weights = {"small": torch.linspace(0.001, 0.01, 100) * signs, "large": torch.linspace(1.0, 2.0, 100) * signs}
    per_layer = magnitude_masks(weights, 0.5)
    assert per_layer["small"].sum() == per_layer["large"].sum() == 50
    overall = magnitude_masks(weights, 0.5, scope="global")
    assert overall["small"].sum() == 0 and overall["large"].sum() == 100
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(weights, 0.5, scope="channel")


def blocks_are_whole(mask: torch.Tensor, block: tuple[int, int]) -> bool:
    """Every (out, in) block of ``mask`` at every kernel position is all kept or all pruned."""
    grid = mask.reshape(mask.shape[0], mask.shape[1], -1)
    for o in range(0, grid.shape[0], block[0]):
        for i in range(0, grid.shape[1], block[1]):
            cell = grid[o:o + block[0], i:i + block[1]]
            if not (cell == cell[:1, :1]).all():
                return False
    return True


def test_block_masks_remove_the_weakest_whole_blocks_nearest_the_target():
    torch.manual_seed(0)
    # 40 x 18 channels (blocks of 16 x 4 cut short at both edges), 3x3: each block's magnitude set by hand
    weight = torch.randn(40, 18, 3, 3).sign() * 1.0
    strength = torch.rand(3, 5, 9)  # per (output block, input block, kernel position)
    for ob in range(3):
        for ib in range(5):
            weight[ob * 16:(ob + 1) * 16, ib * 4:(ib + 1) * 4] *= strength[ob, ib].reshape(3, 3)
    mask = magnitude_masks({"w": weight}, 0.85, block=(16, 4))["w"]
    assert blocks_are_whole(mask, (16, 4))
    held = torch.tensor([16, 16, 8]).reshape(3, 1, 1) * torch.tensor([4, 4, 4, 4, 2]).reshape(1, 5, 1) * torch.ones(1, 1, 9)
    kept = mask.reshape(40, 18, 9)[::16, ::4] > 0  # one entry per block
    assert strength[kept].min() > strength[~kept].max()  # the weakest blocks went
    assert abs(float(held[~kept].sum()) - 0.85 * weight.numel()) <= held.max() / 2  # nearest the target
    linear = magnitude_masks({"fc": torch.randn(10, 7)}, 0.85, block=(16, 4))["fc"]  # two blocks: one stays
    assert 0 < linear.sum() < 70 and blocks_are_whole(linear, (16, 4))
    both = magnitude_masks({"w": weight, "fc": torch.randn(64, 64) * 100}, 0.5, scope="global", block=(16, 4))
    assert both["fc"].mean() == 1.0 and blocks_are_whole(both["w"], (16, 4))  # one threshold: the weak layer goes
    for bad in [(16,), (0, 4), "16x4", (16, 4.0), 16]:
        with pytest.raises(ValueError, match="block must be two positive integers"):
            magnitude_masks({"w": weight}, 0.5, block=bad)


def test_gradual_magnitude_pruning_in_blocks_ends_with_whole_blocks():
    torch.manual_seed(0)
    pruning = GradualMagnitudePruning(final_sparsity=0.75, start_step=0, end_step=6, frequency=2, block=[16, 4])
    module = UserModule()
    quick_trainer(pruning, max_epochs=1).fit(module, datamodule=data())
    for path, layer in pruning.layers:
        assert blocks_are_whole((layer.weight != 0).float(), (16, 4)), path
    assert pruning.final_report["total"] == pytest.approx(0.75, abs=0.1)
    with pytest.raises(ValueError, match="block"):
        GradualMagnitudePruning(block=[16, 4, 1])


def test_prunable_layers_keep_the_first_conv_and_the_classifier():
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    names = [path for path, _ in prunable_layers(model)]
    assert "conv1" not in names and "fc" not in names and len(names) == 20
    assert [path for path, _ in prunable_layers(model, include=["layer3.*"])] == [p for p in names if p.startswith("layer3")]
    assert not any("shortcut" in p for p, _ in prunable_layers(model, exclude=["*shortcut*"]))
    assert len(prunable_layers(model, keep_first_and_last=False)) == 22
    with pytest.raises(ValueError, match="no layer to prune"):
        prunable_layers(model, include=["nothing.*"])


def masked(model: nn.Module, sparsity: float) -> list[tuple[str, nn.Module]]:
    """``model``'s prunable layers with magnitude masks at ``sparsity`` attached and applied."""
    layers = prunable_layers(model)
    attach_masks(layers)
    masks = magnitude_masks({path: module.weight for path, module in layers}, sparsity)
    for path, module in layers:
        getattr(module, MASK_NAME).copy_(masks[path])
    apply_masks(layers)
    return layers


def test_masks_keep_pruned_weights_exactly_zero_through_training_and_travel_with_the_state_dict():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    layers = masked(model, 0.7)
    masks = {path: getattr(module, MASK_NAME).clone() for path, module in layers}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for path, module in layers:
            assert (module.weight.grad[masks[path] == 0] == 0).all()
        optimizer.step()
        apply_masks(layers)
    report = sparsity_report(layers)
    assert all(abs(report[path] - 0.7) < 0.01 for path, _ in layers) and abs(report["total"] - 0.7) < 0.01
    state = model.state_dict()
    assert all(f"{path}.{MASK_NAME}" in state for path, _ in layers)
    fresh = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    attach_masks(prunable_layers(fresh))
    fresh.load_state_dict(state)
    assert all(torch.equal(getattr(module, MASK_NAME), masks[path]) for path, module in prunable_layers(fresh))


def test_make_permanent_drops_masks_and_hooks_but_keeps_the_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 24 * 24, 2))
    layers = prunable_layers(model)
    assert [path for path, _ in layers] == ["1"]
    attach_masks(layers)
    getattr(model[1], MASK_NAME).copy_(magnitude_masks({"1": model[1].weight}, 0.5)["1"])
    apply_masks(layers)
    zeros = model[1].weight == 0
    make_permanent(layers)
    assert not hasattr(model[1], MASK_NAME) and (model[1].weight[zeros] == 0).all()
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert (model[1].weight.grad[zeros] != 0).any()  # no hook left: the zeros are ordinary weights now


# ---------------------------------------------------------------------------- the callback
class SparsityProbe(pl.Callback):
    """Records the pruned layers' overall sparsity after every optimizer step."""

    def __init__(self, pruning):
        self.pruning, self.seen = pruning, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen[trainer.global_step] = sparsity_report(self.pruning.layers)["total"]


def test_gradual_magnitude_pruning_follows_its_schedule_and_ends_permanent():
    torch.manual_seed(0)
    pruning = GradualMagnitudePruning(final_sparsity=0.6, start_step=2, end_step=8, frequency=2)
    probe = SparsityProbe(pruning)
    module = UserModule()
    quick_trainer(pruning, probe, max_epochs=2).fit(module, datamodule=data())
    schedule = pruning.schedule
    for step, seen in probe.seen.items():
        assert seen == pytest.approx(schedule.sparsity(step), abs=1e-3), step
    last = max(probe.seen)
    assert last >= 8 and probe.seen[1] == 0 and probe.seen[last] == pytest.approx(0.6, abs=1e-3)
    assert pruning.final_report["total"] == pytest.approx(0.6, abs=1e-3)
    assert not any(MASK_NAME in key for key in module.state_dict())  # permanent: plain zero weights
    layers = prunable_layers(module.net)
    assert sparsity_report(layers)["total"] == pytest.approx(0.6, abs=1e-3)


def test_gradual_magnitude_pruning_prunes_the_weights_qat_quantizes():
    from lightning_edge.callbacks import QuantizationAwareTraining
    from lightning_edge.quant import QuantConv2d

    torch.manual_seed(0)
    pruning = GradualMagnitudePruning(final_sparsity=0.5, start_step=0, end_step=4, frequency=2)
    module = UserModule()
    quick_trainer(pruning, QuantizationAwareTraining(), limit_train_batches=6).fit(module, datamodule=data())
    assert all(isinstance(layer, QuantConv2d) for path, layer in pruning.layers if "conv" in path)
    assert sparsity_report(pruning.layers)["total"] == pytest.approx(0.5, abs=1e-3)
    quantized = [layer.integer_weight_and_bias()["weight"] for _, layer in pruning.layers if hasattr(layer, "integer_weight_and_bias")]
    zeros = sum(int((weight == 0).sum()) for weight in quantized) / sum(weight.numel() for weight in quantized)
    assert zeros >= 0.5  # every pruned weight is an int8 zero too


def test_gradual_magnitude_pruning_refuses_a_bad_schedule():
    with pytest.raises(ValueError, match="start_step"):
        GradualMagnitudePruning(start_step=10, end_step=5)
    with pytest.raises(ValueError, match="scope"):
        GradualMagnitudePruning(scope="filter")


def test_a_run_resumed_mid_schedule_ends_with_the_uninterrupted_runs_masks(tmp_path):
    """Through train.py (any callback can be added from the command line): epoch 1 of 2 is mid-schedule."""
    from conftest import SYNTHETIC, compose_config
    from lightning_edge.models import read_state_dict
    from train import train

    base = [*SYNTHETIC, "trainer.max_epochs=2", "test=false",
            "+callbacks.prune._target_=lightning_edge.callbacks.GradualMagnitudePruning",
            "+callbacks.prune.final_sparsity=0.7", "+callbacks.prune.end_step=20", "+callbacks.prune.frequency=3",
            "+callbacks.prune.permanent=false"]

    def final(name: str) -> list[str]:
        return ["+callbacks.final._target_=conftest.SaveFinalWeights", f"+callbacks.final.path={tmp_path / name}.pt"]

    straight = train(compose_config([*base, *final("straight")], tmp_path / "straight"))
    interrupt = ["+callbacks.interrupt._target_=conftest.StopAfterEpochs", "+callbacks.interrupt.epochs=1"]
    first = train(compose_config([*base, *interrupt], tmp_path / "first"))
    assert 0 < first["global_step"] < 20 < straight["global_step"]  # interrupted mid-schedule
    saved = torch.load(first["last_checkpoint"], weights_only=True)
    assert saved["callbacks"]["GradualMagnitudePruning"]["last_update"] is not None
    assert any(key.endswith(MASK_NAME) for key in saved["state_dict"])
    resumed = train(compose_config([*base, f"ckpt_path={first['last_checkpoint']}", *final("resumed")], tmp_path / "resumed"))
    assert resumed["global_step"] == straight["global_step"]
    expected, actual = read_state_dict(tmp_path / "straight.pt"), read_state_dict(tmp_path / "resumed.pt")
    masks = [key for key in expected if key.endswith(MASK_NAME)]
    assert len(masks) == 20 and sum(float(expected[key].mean()) for key in masks) / 20 == pytest.approx(0.3, abs=0.01)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_hold_identical_masks(tmp_path):
    from conftest import ddp_train_records

    overrides = ["+callbacks.prune._target_=lightning_edge.callbacks.GradualMagnitudePruning",
                 "+callbacks.prune.final_sparsity=0.5", "+callbacks.prune.end_step=2", "+callbacks.prune.frequency=1",
                 "+callbacks.prune.permanent=false"]
    ranks = ddp_train_records(tmp_path, overrides, "MaskProbe")
    assert len(ranks[0]["digests"]) == ranks[0]["global_step"] >= 2
    assert ranks[0]["digests"] == ranks[1]["digests"]  # the same masks on both ranks after every step
    assert ranks[0]["kept"][-1] == pytest.approx(0.5, abs=1e-3)


def test_kd_qat_and_gmp_in_one_fit_export_a_sparse_int8_model_the_runtime_runs(tmp_path):
    """train.py with distill=kd, quant=qat and prune=gmp together; the QDQ export compiles to a .edge file that
    stores the pruned int8 weights compressed and runs in the INT8 runtime."""
    from conftest import SYNTHETIC, compose_config
    from lightning_edge.runtime.edge_format import read_edge
    from lightning_edge.runtime.plan import Plan
    from lightning_edge.runtime.report import layer_rows
    from train import train

    teacher = tmp_path / "teacher.pt"
    torch.save(create_model("cifar_resnet20", num_classes=10, in_chans=3).state_dict(), teacher)
    overrides = [*SYNTHETIC, "trainer.max_epochs=2", "distill=kd", "teacher.name=cifar_resnet20", f"teacher.ckpt={teacher}",
                 "quant=qat", "prune=gmp", "prune.final_sparsity=0.7", "prune.end_step=12", "prune.frequency=3"]
    summary = train(compose_config(overrides, tmp_path / "run"))
    assert summary["distill"] is not None and summary["quant"]["method"] == "qat"
    prune = summary["prune"]
    assert prune["method"] == "gmp" and prune["sparsity"]["total"] == pytest.approx(0.7, abs=1e-3)
    assert prune["weight_bytes"]["int8_sparse"] < 0.55 * prune["weight_bytes"]["int8_dense"]
    edge = summary["export"]["edge"]
    assert edge["runtime"]["agreement"] >= 0.95  # the runtime and torch agree on the pruned QAT network
    plan, tensors = read_edge(edge["path"])
    rows = [row for row in layer_rows(Plan.from_dict(plan), tensors) if row["op"] == "conv"]
    pruned = [row for row in rows if row["sparsity"] >= 0.69]
    assert len(pruned) == 20  # the 18 block convs and 2 shortcuts; the stem and classifier stay dense
    assert sum(row["stored_bytes"] for row in pruned) < 0.55 * sum(row["bytes"] for row in pruned)


def test_a_channel_pruned_checkpoint_trains_on_with_qat_and_exports_to_the_runtime(tmp_path):
    """Pruned widths travel with the checkpoint: model.checkpoint_path rebuilds them, QAT fine-tunes, and the
    export compiles and runs."""
    from conftest import SYNTHETIC, compose_config
    from train import train

    pruned = train(compose_config([*SYNTHETIC, "trainer.max_epochs=1", "test=false", "prune=channel", "prune.steps=1",
                                   "prune.target_macs=0.5"], tmp_path / "pruned"))
    assert pruned["macs"] <= 0.5 * pruned["prune"]["original_macs"]
    summary = train(compose_config([*SYNTHETIC, "trainer.max_epochs=1", "quant=qat",
                                    f"model.checkpoint_path={pruned['last_checkpoint']}"], tmp_path / "qat"))
    assert summary["macs"] == pruned["macs"] and summary["parameters"] == pruned["parameters"]
    assert summary["export"]["edge"]["runtime"]["agreement"] >= 0.95


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_takes_magnitude_masks_and_still_runs(name):
    model = family(name).train()
    layers = masked(model, 0.8)
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert all(torch.all(module.weight.grad[getattr(module, MASK_NAME) == 0] == 0) for _, module in layers)
    assert sparsity_report(layers)["total"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.slow
@requires_fashion_mnist
def test_on_fashion_mnist_pruned_networks_stay_close_to_the_dense_one():
    """Real data, small budget: a ResNet-20 trained 400 steps, then 200 more steps three ways at a lower learning
    rate (dense, GMP to 80%, channel pruning of 40% of the MACs with KD from the dense network; both prunings
    end at step 100 and recover for 100 steps), each tested on the 10,000 test images. The README's full-length
    runs hold the issue's thresholds (1 and 1.5 points); at this budget the gaps are wider, and each pruned
    network must stay within 4 points of the dense one."""
    import copy
    from functools import partial

    from lightning_edge.callbacks import ChannelPruning, KnowledgeDistillation
    from lightning_edge.data.fashion_mnist import FashionMNISTDataModule
    from lightning_edge.models.profile import count_macs
    from lightning_edge.module import ClassificationModule
    from lightning_edge.optim import cosine_with_warmup

    def sgd(lr: float):
        return partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    torch.manual_seed(0)
    data = FashionMNISTDataModule(batch_size=64, eval_batch_size=500, crop_padding=2, val_size=1000)
    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, max_epochs=1)
    dense = ClassificationModule(create_model("cifar_resnet20", num_classes=10, in_chans=1), optimizer=sgd(0.1),
                                 scheduler=cosine_with_warmup)
    pl.Trainer(limit_train_batches=400, **settings).fit(dense, datamodule=data)

    def go_on(callbacks) -> tuple[float, nn.Module]:
        torch.manual_seed(1)
        module = ClassificationModule(copy.deepcopy(dense.net), optimizer=sgd(0.02), scheduler=cosine_with_warmup)
        trainer = pl.Trainer(limit_train_batches=200, callbacks=callbacks, **settings)
        trainer.fit(module, datamodule=data)
        return trainer.test(module, datamodule=data, verbose=False)[0]["test/acc"], module.net

    dense_acc, _ = go_on([])
    gmp_acc, gmp_net = go_on([GradualMagnitudePruning(final_sparsity=0.8, end_step=100, frequency=10)])
    teacher = copy.deepcopy(dense.net).eval()
    channel_acc, channel_net = go_on([KnowledgeDistillation(teacher=teacher, losses=["kd"]),
                                      ChannelPruning(target_macs=0.4, steps=4, end_step=100)])
    assert dense_acc > 0.8  # real learning (chance is 0.1)
    assert sparsity_report(prunable_layers(gmp_net))["total"] == pytest.approx(0.8, abs=1e-3)
    assert count_macs(channel_net, (1, 28, 28)) <= 0.6 * count_macs(dense.net, (1, 28, 28))
    print(f"dense {dense_acc:.2%}, GMP {gmp_acc:.2%}, channels {channel_acc:.2%}")
    assert gmp_acc >= dense_acc - 0.04 and channel_acc >= dense_acc - 0.04, (dense_acc, gmp_acc, channel_acc)
