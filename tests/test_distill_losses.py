"""The distillation losses against values worked out by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_edge.distill import AttentionTransferLoss, FeatureHintLoss, KDLoss, attention_map, build_losses
from lightning_edge.distill.spatial import match_size

# Two classes, student logits [1, 0], teacher logits [0, 1]. At T = 2 the softened distributions are
# mirror images: teacher [a, b], student [b, a], with a = 1 / (1 + e^0.5), so KL = (b - a) * ln(b / a).
A = 1 / (1 + math.exp(0.5))
B = 1 - A
KL_AT_T2 = (B - A) * math.log(B / A)
CE_LABEL_0 = math.log(1 + math.exp(-1))  # -log softmax([1, 0])[0]
STUDENT = torch.tensor([[1.0, 0.0]])
TEACHER = torch.tensor([[0.0, 1.0]])


def test_kd_soft_term_is_alpha_times_t_squared_times_the_kl_divergence():
    loss = KDLoss(temperature=2.0, alpha=0.5)
    assert loss.soft_term(STUDENT, TEACHER).item() == pytest.approx(0.5 * 4 * KL_AT_T2, rel=1e-6)


def test_kd_alpha_weights_the_soft_term_and_one_minus_alpha_the_cross_entropy():
    total = KDLoss(temperature=2.0, alpha=0.5)(STUDENT, TEACHER, torch.tensor([0]))
    assert total.item() == pytest.approx(0.5 * 4 * KL_AT_T2 + 0.5 * CE_LABEL_0, rel=1e-6)
    only_labels = KDLoss(temperature=2.0, alpha=0.0)(STUDENT, TEACHER, torch.tensor([0]))
    assert only_labels.item() == pytest.approx(CE_LABEL_0, rel=1e-6)
    assert KDLoss(alpha=0.25).hard_weight == 0.75


def test_kd_scales_with_temperature_squared_and_averages_over_the_batch():
    for temperature in (1.0, 2.0, 8.0):
        p_teacher = torch.softmax(TEACHER / temperature, dim=1)[0]
        p_student = torch.softmax(STUDENT / temperature, dim=1)[0]
        kl = sum(float(t) * math.log(float(t) / float(s)) for t, s in zip(p_teacher, p_student))
        loss = KDLoss(temperature=temperature, alpha=1.0)
        assert loss.soft_term(STUDENT, TEACHER).item() == pytest.approx(temperature**2 * kl, rel=1e-5)
        batch = loss.soft_term(STUDENT.repeat(3, 1), TEACHER.repeat(3, 1))
        assert batch.item() == pytest.approx(temperature**2 * kl, rel=1e-5)  # batchmean: per sample, not summed
    assert KDLoss().soft_term(TEACHER, TEACHER).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_rejects_bad_arguments_and_mismatched_logits():
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        KDLoss(alpha=1.5)
    with pytest.raises(ValueError, match="same classes"):
        KDLoss()(torch.zeros(1, 10), torch.zeros(1, 100))


# Student: one channel, a single active pixel -> Q = [1, 0, 0, 0]. Teacher: two channels active on the top
# row -> Q = mean of squares = [1, 1, 0, 0] -> normalised [1/sqrt2, 1/sqrt2, 0, 0].
AT_STUDENT = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
AT_TEACHER = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[-1.0, 1.0], [0.0, 0.0]]]])
SQUARED_DIFFERENCE = (1 - 1 / math.sqrt(2)) ** 2 + 0.5


def test_attention_map_is_the_normalised_channel_mean_of_powered_activations():
    assert attention_map(AT_TEACHER)[0].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0])
    # p = 1 uses absolute values: channel means [1, 1, 0, 0] again, despite the -1.
    assert attention_map(AT_TEACHER, p=1)[0].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0])
    uneven = torch.tensor([[[[2.0, 1.0]]]])  # Q = [4, 1] at p = 2
    assert attention_map(uneven)[0].tolist() == pytest.approx([4 / math.sqrt(17), 1 / math.sqrt(17)])


def test_attention_transfer_code_mode_averages_squared_differences():
    loss = AttentionTransferLoss(beta=1000.0, mode="code")
    assert loss([AT_STUDENT], [AT_TEACHER]).item() == pytest.approx(1000.0 * SQUARED_DIFFERENCE / 4, rel=1e-6)


def test_attention_transfer_paper_mode_takes_the_l2_norm_of_the_difference():
    loss = AttentionTransferLoss(beta=2.0, mode="paper")
    assert loss([AT_STUDENT], [AT_TEACHER]).item() == pytest.approx(2.0 * math.sqrt(SQUARED_DIFFERENCE), rel=1e-6)


def test_attention_transfer_weights_every_pair_by_beta():
    loss = AttentionTransferLoss(beta=10.0)
    one = loss([AT_STUDENT], [AT_TEACHER]).item()
    assert loss([AT_STUDENT, AT_STUDENT], [AT_TEACHER, AT_TEACHER]).item() == pytest.approx(2 * one)
    assert loss([AT_TEACHER], [AT_TEACHER]).item() == pytest.approx(0.0, abs=1e-9)


def test_attention_transfer_area_averages_a_larger_student_map():
    student = torch.zeros(1, 3, 4, 4)
    student[..., :2, :2] = 1.0  # after 2x2 block means: [1, 0, 0, 0], the teacher's own map
    teacher = torch.zeros(1, 5, 2, 2)
    teacher[..., 0, 0] = 3.0
    assert AttentionTransferLoss()([student], [teacher]).item() == pytest.approx(0.0, abs=1e-9)
    assert match_size(torch.arange(16.0).view(1, 1, 4, 4), (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_attention_transfer_rejects_unknown_modes():
    with pytest.raises(ValueError, match="unknown attention transfer mode 'pepper'"):
        AttentionTransferLoss(mode="pepper")


def test_feature_hint_adapts_channels_with_a_learned_1x1_convolution():
    loss = FeatureHintLoss(weight=0.5, student_channels=[2, 4], teacher_channels=[3, 4])
    adapter, identity = loss.adapters
    assert isinstance(adapter, torch.nn.Conv2d) and adapter.weight.shape == (3, 2, 1, 1) and adapter.bias is None
    assert isinstance(identity, torch.nn.Identity)
    with torch.no_grad():
        adapter.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(3, 2, 1, 1))
    student = [torch.ones(1, 2, 2, 2), torch.zeros(1, 4, 2, 2)]
    teacher = [torch.ones(1, 3, 2, 2), torch.ones(1, 4, 2, 2)]
    # pair 1: adapted = [1, 1, 2] per pixel vs [1, 1, 1] -> mean squared error 1/3; pair 2: 1.
    assert loss(student, teacher).item() == pytest.approx(0.5 * (1 / 3 + 1.0))
    loss(student, teacher).backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0


def test_losses_are_built_by_name_or_mapping():
    losses = build_losses(None)
    assert list(losses) == ["kd", "at"]
    custom = build_losses({"kd": {"temperature": 2.0}, "hint": None})
    assert custom["kd"].temperature == 2.0 and isinstance(custom["hint"], FeatureHintLoss)
    with pytest.raises(ValueError, match="unknown distillation loss 'crd'"):
        build_losses(["crd"])
    with pytest.raises(ValueError, match="only one logit loss"):
        build_losses({"kd": None, "kd2": KDLoss()})
