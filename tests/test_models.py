"""Our CIFAR networks: exact sizes from the papers, timm registration, adaptation and weight loading."""
from __future__ import annotations

import pytest
import timm
import torch

from lightning_edge.models import (
    CifarResNet,
    count_macs,
    count_parameters,
    create_model,
    list_models,
    load_weights,
    model_bytes,
)


@pytest.mark.parametrize(
    ("name", "parameters"),
    [("cifar_wrn_40_2", 2_243_546), ("cifar_wrn_16_2", 691_674), ("cifar_wrn_16_1", 175_066)],
)
def test_wide_resnet_parameter_counts_match_the_papers(name, parameters):
    assert count_parameters(timm.create_model(name, num_classes=10)) == parameters


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnets_are_registered_with_timm_and_classify(depth):
    model = timm.create_model(f"cifar_resnet{depth}", num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    # He et al.: 6n+2 layers with n blocks of two convolutions per stage.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == depth - 1


def test_resnet20_size_and_cost_match_the_paper():
    paper = CifarResNet(20, shortcut="A")
    assert 0.26e6 < count_parameters(paper) < 0.28e6  # "0.27M"
    model = timm.create_model("cifar_resnet20")
    assert 40e6 < count_macs(model, (3, 32, 32)) < 42e6  # 41 MMACs, BENCHMARKS.md
    assert model_bytes(model) > 4 * count_parameters(model)  # BN running statistics are stored too


def test_any_valid_wrn_depth_and_width_works_through_the_factory():
    model = create_model("cifar_wrn_22_3", num_classes=5, in_chans=3, image_size=32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert "cifar_wrn_22_3" in list_models("cifar_wrn_22_*")
    with pytest.raises(ValueError, match="6n\\+4"):
        create_model("cifar_wrn_15_2")


def test_timm_models_adapt_to_channels_classes_and_resolution():
    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    vit = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, image_size=32)
    assert vit(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model name 'cifar_resnet21'.*cifar_resnet20"):
        create_model("cifar_resnet21")


def test_model_too_big_for_the_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="cannot run on 1x4x4.*data.image_size"):
        create_model("resnet18", in_chans=1, image_size=4, num_classes=10, global_pool="")


def test_pretrained_weights_of_our_models_point_to_local_checkpoints():
    with pytest.raises(ValueError, match="checkpoint_path"):
        timm.create_model("cifar_resnet20", pretrained=True)


def test_checkpoint_path_loads_weights_and_rejects_a_mismatch(tmp_path):
    source = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = create_model("cifar_resnet20", num_classes=10, in_chans=1, checkpoint_path=path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    with pytest.raises(ValueError, match="shape mismatch.*fc.weight"):
        load_weights(create_model("cifar_resnet20", num_classes=100, in_chans=1), path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_weights(source, truncated)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights(source, tmp_path / "missing.pt")


def test_feature_info_names_the_three_stages_for_distillation():
    model = timm.create_model("cifar_wrn_16_2")
    assert [info["module"] for info in model.feature_info] == ["layer1", "layer2", "layer3"]
    assert [info["num_chs"] for info in model.feature_info] == [32, 64, 128]
