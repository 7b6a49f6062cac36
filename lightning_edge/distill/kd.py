"""Hinton's logit distillation: match the teacher's softened class probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KDLoss(nn.Module):
    """Soft-target knowledge distillation (Hinton, Vinyals and Dean, 2015).

    ``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``

    The KL divergence is summed over classes and averaged over the batch (``reduction="batchmean"``,
    the true KL per sample); ``T^2`` keeps the soft term's gradients on the scale of the hard term's
    as ``T`` grows. ``alpha`` weights the soft (distillation) term, as in Hinton's paper and in the
    attention-transfer and Moonshine code; torchdistill's ``alpha`` weights the cross-entropy instead,
    so its ``alpha=a`` is our ``alpha=1-a``. The attention-transfer and Moonshine code also multiply
    the soft term by 2 and average the KL over classes as well as samples (old PyTorch's default
    reduction), so their soft term is ``2 / num_classes`` times ours at the same ``alpha`` and ``T``.

    Inside ``KnowledgeDistillation`` the loss the user's ``training_step`` returns plays the part of
    the cross-entropy term: the callback returns ``(1 - alpha) * user_loss + soft_term``.

    Args:
        temperature: ``T`` > 0, the softmax temperature for both networks' logits.
        alpha: weight of the soft term in [0, 1]; ``1 - alpha`` weights the hard (label) term.
    """

    name = "kd"
    inputs = "logits"

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"KDLoss temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"KDLoss alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    @property
    def hard_weight(self) -> float:
        """The weight ``1 - alpha`` of the label term (the user's own loss inside the callback)."""
        return 1.0 - self.alpha

    def soft_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``alpha * T^2 * KL``: the part of the loss that comes from the teacher."""
        temperature = self.temperature
        log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
        divergence = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
        return self.alpha * temperature**2 * divergence

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The whole loss; without ``targets`` only the soft term (``alpha`` times T^2 KL)."""
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"KDLoss needs logits of the same shape, got student {tuple(student_logits.shape)} and teacher "
                f"{tuple(teacher_logits.shape)}: teacher and student must predict the same classes"
            )
        loss = self.soft_term(student_logits, teacher_logits)
        if targets is not None and self.alpha < 1.0:
            loss = loss + self.hard_weight * F.cross_entropy(student_logits.float(), targets)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
