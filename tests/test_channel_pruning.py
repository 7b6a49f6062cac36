"""Channel pruning: dependency groups by tracing, physical removal, importance, the callback, checkpoints."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import FAMILIES, UserModule, family, quick_trainer
from conftest import synthetic_data as data
from lightning_edge.callbacks import ChannelPruning
from lightning_edge.models import create_model, load_weights
from lightning_edge.models.profile import count_macs, count_parameters
from lightning_edge.prune import (
    ARCHITECTURE_KEY,
    TaylorImportance,
    architecture,
    channel_groups,
    choose_channels,
    prunable_groups,
    prune_channels,
    remove_channels,
    shrink_optimizer_state,
)

EXAMPLE = torch.zeros(1, 1, 32, 32)


def silence(group, drop: list[int]) -> None:
    """Make channels ``drop`` of ``group`` exactly zero wherever they flow: their BatchNorms output 0 (or, with no
    BatchNorm, their filters and biases are 0)."""
    with torch.no_grad():
        for _, module in group.norms:
            module.weight[drop] = 0
            module.bias[drop] = 0
        for _, module in group.producers + group.depthwise:
            if getattr(module, "bias", None) is not None:
                module.bias[drop] = 0
            if not group.norms:
                module.weight[drop] = 0


@pytest.mark.parametrize("name", FAMILIES)
def test_removing_channels_that_are_already_zero_keeps_the_outputs(name):
    model = family(name)
    x = torch.randn(4, 1, 32, 32)
    groups = prunable_groups(channel_groups(model, EXAMPLE))
    assert groups
    generator = torch.Generator().manual_seed(1)
    kept = []
    for group in groups:
        count = group.channels // group.blocks // 3 * group.blocks
        keep = choose_channels(group, torch.rand(group.channels, generator=generator), count)
        silence(group, sorted(set(range(group.channels)) - set(keep.tolist())))
        kept.append((group, keep))
    before, macs, parameters = model(x), count_macs(model, (1, 32, 32)), count_parameters(model)
    remove_channels(kept)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert count_macs(model, (1, 32, 32)) < 0.75 * macs and count_parameters(model) < 0.8 * parameters


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_prunes_to_its_mac_budget_and_still_trains(name):
    model = family(name).train()
    result = prune_channels(model, EXAMPLE, 0.4, importance="bn")
    assert 0.4 <= result.macs_removed < 0.5
    assert result.macs_after == count_macs(model, (1, 32, 32)) and result.parameters_after < result.parameters_before
    loss = model(torch.randn(4, 1, 32, 32)).logsumexp(1).mean()
    loss.backward()  # the smaller network is an ordinary one
    assert all(parameter.grad is not None for parameter in model.parameters() if parameter.requires_grad)


def test_residual_streams_grouped_and_depthwise_convs_are_coupled():
    groups = {group.name: group for group in channel_groups(family("cifar_resnet20"), EXAMPLE)}
    stream = groups["conv1"]  # the stem's output runs through every add of the first stage
    assert {path for path, _ in stream.producers} == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert {"bn1", "layer1.0.bn2"} <= {path for path, _ in stream.norms} and stream.prunable
    assert groups["fc"].pinned == "the network's output" and not groups["fc"].prunable
    student = {group.name: group for group in channel_groups(family("moonshine_g4"), EXAMPLE)}
    assert student["layer1.0.conv1.spatial"].blocks == 4  # the grouped conv's 4 groups lose channels evenly
    mobilenet = channel_groups(family("mobilenetv2_100"), EXAMPLE)
    assert all(group.depthwise[0][1].groups == group.channels for group in mobilenet if group.depthwise)
    assert sum(bool(group.depthwise) for group in mobilenet) == 17


def test_grouped_convs_lose_the_same_number_of_channels_from_every_group():
    model = family("moonshine_g4")
    prune_channels(model, EXAMPLE, 0.3)
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            assert module.in_channels % module.groups == 0 and module.out_channels % module.groups == 0, path
    model(torch.randn(2, 1, 32, 32))


def test_unknown_operations_pin_their_channels_instead_of_breaking_the_network():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
            self.mid = nn.Conv2d(16, 12, 3, padding=1)
            self.head = nn.Linear(12, 10)

        def forward(self, x):
            y = self.mid(torch.cat([self.a(x), self.b(x)], 1)).relu()
            return self.head(y.mean((2, 3)))

    groups = {group.name: group for group in channel_groups(Concat(), EXAMPLE)}
    assert not groups["a"].prunable and not groups["b"].prunable and "cat" in groups["a"].pinned
    assert groups["mid"].prunable


def test_untraceable_networks_and_unknown_criteria_fail_with_the_fix():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="torch.fx.*data-dependent"):
        channel_groups(Dynamic(), EXAMPLE)
    with pytest.raises(ValueError, match="unknown channel importance 'l3'.*l1, bn, taylor"):
        prune_channels(family("cifar_resnet20"), EXAMPLE, 0.4, importance="l3")
    with pytest.raises(ValueError, match="target_macs"):
        ChannelPruning(target_macs=40)
    with pytest.raises(ValueError, match="more than 10%"):
        prune_channels(family("cifar_resnet20"), EXAMPLE, 0.6, max_group_fraction=0.1)


def test_l1_importance_removes_the_weakest_filters():
    model = family("cifar_resnet20")
    group = next(group for group in channel_groups(model, EXAMPLE) if group.name == "layer2.0.conv1")
    with torch.no_grad():
        model.layer2[0].conv1.weight[[3, 7, 11]] *= 1e-3
    prune_channels(model, EXAMPLE, 0.007, importance="l1", groups=[group])
    assert model.layer2[0].conv1.out_channels == 29  # 32 less the three weak filters ...
    assert model.layer2[0].bn1.num_features == 29 and model.layer2[0].conv2.in_channels == 29


def test_taylor_importance_comes_from_gradients():
    model = family("cifar_resnet20").train()
    groups = channel_groups(model, EXAMPLE)
    taylor = TaylorImportance(groups)
    with pytest.raises(RuntimeError, match="no gradients"):
        prune_channels(model, EXAMPLE, 0.3, importance="taylor", taylor=taylor, groups=groups)
    for _ in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.randint(0, 10, (8,))).backward()
        taylor.accumulate()
    assert taylor.batches == 2 and all(float(score.sum()) > 0 for score in taylor.scores.values())
    result = prune_channels(model, EXAMPLE, 0.3, importance="taylor", taylor=taylor, groups=groups)
    assert result.macs_removed >= 0.3


def test_the_optimizer_follows_the_surgery_with_its_momentum_sliced():
    model = family("cifar_resnet20").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.randint(0, 10, (8,))).backward()
    optimizer.step()
    momentum = optimizer.state[model.layer2[0].conv1.weight]["momentum_buffer"].clone()
    group = next(group for group in channel_groups(model, EXAMPLE) if group.name == "layer2.0.conv1")
    keep = torch.arange(0, 32, 2)
    record = remove_channels([(group, keep)])
    shrink_optimizer_state(optimizer, record)
    weight = model.layer2[0].conv1.weight
    assert any(parameter is weight for parameter in optimizer.param_groups[0]["params"])
    assert torch.equal(optimizer.state[weight]["momentum_buffer"], momentum[keep])
    assert optimizer.state[model.layer2[0].conv2.weight]["momentum_buffer"].shape[1] == 16
    model.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.randint(0, 10, (8,))).backward()
    optimizer.step()


def test_the_callback_removes_the_target_in_steps_and_its_checkpoint_loads_back(tmp_path):
    torch.manual_seed(0)
    pruning = ChannelPruning(target_macs=0.4, steps=3, start_step=0, end_step=4)
    module = UserModule()
    macs = count_macs(module.net, (1, 28, 28))
    trainer = quick_trainer(pruning, max_epochs=2, limit_train_batches=4, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data())
    assert [entry["step"] for entry in pruning.history] == [0, 2, 4]
    removed = [entry["macs_removed"] for entry in pruning.history]
    assert removed == sorted(removed) and removed[-1] >= 0.4 and removed[0] >= 0.4 / 3
    assert count_macs(module.net, (1, 28, 28)) <= 0.6 * macs
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert saved[ARCHITECTURE_KEY] == architecture(module.net)
    fresh = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    load_weights(fresh, path)  # no shape mismatch: the recorded widths are applied first
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), module.net.eval()(x))
    tested = UserModule()  # trainer.test on a fresh module rebuilds the pruned widths from the checkpoint
    quick_trainer(ChannelPruning(target_macs=0.4), limit_test_batches=1).validate(tested, datamodule=data(), ckpt_path=path)
    torch.testing.assert_close(tested.net.eval()(x), module.net(x))


def test_a_channel_pruned_run_resumed_mid_schedule_ends_where_the_uninterrupted_run_does(tmp_path):
    """Through train.py with prune=channel: interrupted after epoch 1 of 2 with one of two steps done."""
    from conftest import SYNTHETIC, compose_config
    from lightning_edge.models import read_state_dict
    from train import train

    base = [*SYNTHETIC, "trainer.max_epochs=2", "test=false", "prune=channel", "prune.steps=2",
            "prune.end_step=20", "prune.target_macs=0.4"]

    def final(name: str) -> list[str]:
        return ["+callbacks.final._target_=conftest.SaveFinalWeights", f"+callbacks.final.path={tmp_path / name}.pt"]

    straight = train(compose_config([*base, *final("straight")], tmp_path / "straight"))
    interrupt = ["+callbacks.interrupt._target_=conftest.StopAfterEpochs", "+callbacks.interrupt.epochs=1"]
    first = train(compose_config([*base, *interrupt], tmp_path / "first"))
    assert 0 < first["global_step"] < 20 < straight["global_step"]
    assert first["prune"]["history"] and len(straight["prune"]["history"]) == 2
    resumed = train(compose_config([*base, f"ckpt_path={first['last_checkpoint']}", *final("resumed")], tmp_path / "resumed"))
    assert resumed["global_step"] == straight["global_step"] and resumed["macs"] == straight["macs"]
    assert straight["macs"] <= 0.6 * straight["prune"]["original_macs"]
    expected, actual = read_state_dict(tmp_path / "straight.pt"), read_state_dict(tmp_path / "resumed.pt")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_ddp_ranks_remove_the_same_channels_and_train_on(tmp_path, importance):
    from conftest import ddp_train_records

    overrides = ["prune=channel", "prune.steps=2", "prune.end_step=3", f"prune.importance={importance}"]
    ranks = ddp_train_records(tmp_path, overrides, "WeightsProbe")
    assert ranks[0]["global_step"] > 3
    assert ranks[0]["digest"] == ranks[1]["digest"]  # same widths, same weights after training on pruned
    assert ranks[0]["macs"] == ranks[1]["macs"] <= 0.6 * 40_813_184  # cifar_resnet20 on 3x32x32


def test_callbacks_sized_to_the_unpruned_widths_are_refused_before_training():
    from lightning_edge.callbacks import KnowledgeDistillation, QuantizationAwareTraining

    with pytest.raises(ValueError, match="prune channels first, then.*quant=qat"):
        quick_trainer(ChannelPruning(), QuantizationAwareTraining()).fit(UserModule(), datamodule=data())
    teacher = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="hint"):
        quick_trainer(ChannelPruning(), KnowledgeDistillation(teacher=teacher, losses=["hint"])).fit(UserModule(), datamodule=data())
