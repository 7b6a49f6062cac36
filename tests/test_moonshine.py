"""Moonshine students: the reference implementation's parameter counts, block specs, surgery on our and timm's ResNets."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lightning_edge.models import create_model, derive_student, parse_block_spec, residual_blocks
from lightning_edge.models.cheap_convs import BottleneckConv, GroupedSeparableConv
from lightning_edge.models.profile import count_parameters
from lightning_edge.models.taps import pair_points, stage_points

# BayesWatch/pytorch-moonshine's students of WRN-40-2 on CIFAR-10 (teacher 2,243,546 parameters).
REFERENCE_COUNTS = {
    "G(2)": 1_358_970,
    "G(4)": 814_650,
    "G(8)": 542_490,
    "G(16)": 406_410,
    "DW": 293_514,
    "B(2)": 856_538,
    "B(4)": 292_058,
    "BG(2,4)": 421_082,
}


@pytest.fixture(scope="module")
def wrn_40_2() -> nn.Module:
    return create_model("cifar_wrn_40_2", num_classes=10)


@pytest.mark.parametrize(("block", "parameters"), REFERENCE_COUNTS.items())
def test_wrn_40_2_students_have_the_reference_parameter_counts(wrn_40_2, block, parameters):
    student, report = derive_student(wrn_40_2, block)
    assert count_parameters(student) == report.student_parameters == parameters
    assert report.teacher_parameters == count_parameters(wrn_40_2) == 2_243_546
    assert len(report.layers) == 36  # two 3x3 convs in each of the 18 blocks; stem and shortcuts stay
    saved = sum(layer.teacher_parameters - layer.student_parameters for layer in report.layers)
    assert report.teacher_parameters - report.student_parameters == saved
    assert student(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_teacher_is_copied_not_changed(wrn_40_2):
    before = {key: value.clone() for key, value in wrn_40_2.state_dict().items()}
    derive_student(wrn_40_2, "DW")
    after = wrn_40_2.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_block_specs_use_the_papers_notation():
    assert [str(parse_block_spec(s)) for s in ("G(4)", "g4", "DW", "B(2)", "B2", "BG(2,4)", "BG2x4", "S")] == [
        "G(4)", "G(4)", "DW", "B(2)", "B(2)", "BG(2,4)", "BG(2,4)", "S",
    ]
    for bad in ("G", "BG(2)", "B(2,4)", "G0", "X(1)", "conv"):
        with pytest.raises(ValueError, match="block specs are G\\(g\\), DW, B\\(b\\), BG\\(b,g\\)"):
            parse_block_spec(bad)


def test_a_spec_that_cannot_apply_names_the_conv_and_its_channels():
    teacher = create_model("cifar_resnet20", num_classes=10)
    with pytest.raises(ValueError, match="block spec G\\(3\\) cannot replace conv 'layer1.0.conv1' with 16 input .* groups must divide its 16"):
        derive_student(teacher, "G(3)")
    with pytest.raises(ValueError, match="cannot replace conv 'layer1.0.conv1' .* bottleneck width of 8 channels"):
        derive_student(teacher, "BG(2,3)")


def test_blocks_are_built_as_the_reference_builds_them():
    teacher = create_model("cifar_resnet20", num_classes=10)
    grouped = derive_student(teacher, "G(4)")[0].layer2[0].conv1
    assert isinstance(grouped, GroupedSeparableConv)
    assert (grouped.spatial.in_channels, grouped.spatial.out_channels, grouped.spatial.groups, grouped.spatial.stride) == (16, 16, 4, (2, 2))
    assert (grouped.pointwise.in_channels, grouped.pointwise.out_channels, grouped.pointwise.kernel_size) == (16, 32, (1, 1))
    bottleneck = derive_student(teacher, "BG(2,4)")[0].layer2[0].conv1
    assert isinstance(bottleneck, BottleneckConv)
    assert (bottleneck.reduce.in_channels, bottleneck.reduce.out_channels) == (16, 16)  # C_out / b = 32 / 2
    assert (bottleneck.spatial.groups, bottleneck.spatial.stride, bottleneck.expand.out_channels) == (4, (2, 2), 32)


def test_per_block_lists_give_each_residual_block_its_own_substitution():
    teacher = create_model("cifar_resnet20", num_classes=10)
    blocks = residual_blocks(teacher)
    assert blocks == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    specs = ["S", "G(2)", "DW", "B(2)", "S", "G(4)", "BG(2,4)", "S", "G(8)"]
    student, report = derive_student(teacher, specs)
    assert isinstance(student.layer1[0].conv1, nn.Conv2d) and isinstance(student.layer3[2].conv2, GroupedSeparableConv)
    assert student.layer1[1].conv1.spatial.groups == 2 and student.layer1[2].conv2.spatial.groups == 16
    assert {layer.path.rsplit(".", 1)[0]: layer.spec for layer in report.layers} == {
        block: spec for block, spec in zip(blocks, specs) if spec != "S"
    }
    with pytest.raises(ValueError, match="one spec for each of the 9 residual blocks .* got 2"):
        derive_student(teacher, ["G(4)", "DW"])


def test_include_and_exclude_choose_convs_by_path():
    teacher = create_model("cifar_resnet20", num_classes=10)
    student, report = derive_student(teacher, "DW", include=["conv1"], exclude=["layer1.*"])
    paths = [layer.path for layer in report.layers]
    assert paths[0] == "conv1" and not any(path.startswith("layer1.") for path in paths)
    assert student.conv1.spatial.groups == 3  # the stem's 3 input channels, depthwise
    assert isinstance(student.conv1, GroupedSeparableConv) and isinstance(student.layer1[0].conv1, nn.Conv2d)
    assert isinstance(student.layer2[0].shortcut[0], nn.Conv2d)  # 1x1 shortcut convs stay standard


@pytest.mark.parametrize(("name", "replaced"), [("resnet18", 16), ("resnet50", 16)])
def test_timm_resnets_basic_and_bottleneck(name, replaced):
    teacher = timm.create_model(name, num_classes=10)
    student, report = derive_student(teacher, "G(4)", input_shape=(3, 64, 64))
    assert len(report.layers) == replaced  # resnet18: both 3x3 convs of 8 blocks; resnet50: conv2 of 16 blocks
    assert all(layer.path.endswith(("conv1", "conv2")) for layer in report.layers)
    assert isinstance(student.layer2[0].downsample[0], nn.Conv2d)
    assert report.student_parameters < report.teacher_parameters and report.student_macs < report.teacher_macs
    assert student(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_the_student_keeps_the_teachers_stages_for_attention_transfer(wrn_40_2):
    student, _ = derive_student(wrn_40_2, "G(4)")
    example = torch.zeros(1, 3, 32, 32)
    assert [str(p) for p in stage_points(student, example)] == [str(p) for p in stage_points(wrn_40_2, example)]
    pairs = pair_points(student, wrn_40_2, example)
    assert [(s.path, t.path) for s, t in pairs] == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]


def test_the_report_counts_each_layer_and_prints_a_table():
    teacher = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    _, report = derive_student(teacher, "G(4)", input_shape=(1, 28, 28))
    first = report.layers[0]
    assert (first.path, first.spec, first.teacher_parameters) == ("layer1.0.conv1", "G(4)", 16 * 16 * 9)
    assert first.student_parameters == 16 * 4 * 9 + 2 * 16 + 16 * 16  # grouped 3x3, BN, 1x1
    assert first.teacher_macs == 16 * 16 * 9 * 28 * 28
    assert report.as_dict()["student"]["parameters"] == report.student_parameters == 99_802
    assert "total: parameters 272,186 -> 99,802 (36.7%)" in str(report)


def test_create_model_builds_the_student_a_checkpoint_records():
    spec = {"name": "cifar_resnet20", "num_classes": 10, "in_chans": 1, "image_size": 28, "derive": {"block": "B(2)"}}
    student = create_model(**spec)
    assert isinstance(student.layer3[2].conv2, BottleneckConv)
    with pytest.raises(ValueError, match="found no residual blocks in Sequential"):
        derive_student(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), "G(4)")
