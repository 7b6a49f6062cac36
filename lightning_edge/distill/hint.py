"""FitNets feature hints: regress the teacher's feature maps from the student's through a learned adapter."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_edge.distill.spatial import match_size


class FeatureHintLoss(nn.Module):
    """Feature hints (Romero et al., FitNets, ICLR 2015) over pairs of student and teacher feature maps.

    ``loss = weight * sum_j mean((r_j(S_j) - T_j)^2)``, the mean over batch, channels and positions, where
    ``r_j`` is a learned 1x1 convolution (no bias) from the student's channels to the teacher's when they
    differ, and the identity when they agree. FitNets' regressor is a convolution too; it writes the
    distance as ``1/2 ||.||^2`` summed, we average so ``weight`` does not depend on the map sizes. When
    spatial sizes differ the adapted student map is resized to the teacher's (``match_size``: area
    averages when shrinking, bilinear when growing).

    The adapters are built by ``configure`` once the channel counts are known (``KnowledgeDistillation``
    does it when it pairs the feature maps) and are trained with the student: the callback adds them to
    the student's optimizer.

    Args:
        weight: factor on the summed distances.
        student_channels, teacher_channels: channel counts per pair, to build the adapters now.
    """

    name = "hint"
    inputs = "features"

    def __init__(
        self,
        weight: float = 1.0,
        student_channels: Sequence[int] | None = None,
        teacher_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        if weight < 0:
            raise ValueError(f"FeatureHintLoss weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.adapters = nn.ModuleList()
        self.channels: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        if student_channels is not None or teacher_channels is not None:
            self.configure(student_channels or [], teacher_channels or [])

    @property
    def configured(self) -> bool:
        return len(self.adapters) > 0

    def configure(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        """Build one adapter per pair of feature maps; adapters already built for these channels are kept."""
        channels = (tuple(int(c) for c in student_channels), tuple(int(c) for c in teacher_channels))
        if self.configured and channels == self.channels:
            return
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(
                f"FeatureHintLoss needs one channel count per pair for both networks, got {list(student_channels)} "
                f"and {list(teacher_channels)}"
            )
        self.channels = channels
        self.adapters = nn.ModuleList(
            nn.Identity() if s == t else nn.Conv2d(s, t, kernel_size=1, bias=False) for s, t in zip(*channels)
        )

    def forward(self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(student_features, torch.Tensor):
            student_features, teacher_features = [student_features], [teacher_features]
        if not self.configured:
            self.configure([s.shape[1] for s in student_features], [t.shape[1] for t in teacher_features])
        if not len(student_features) == len(teacher_features) == len(self.adapters):
            raise ValueError(
                f"FeatureHintLoss was configured for {len(self.adapters)} pairs, got {len(student_features)} student "
                f"and {len(teacher_features)} teacher feature maps"
            )
        total = 0.0
        for adapter, student, teacher in zip(self.adapters, student_features, teacher_features):
            adapted = adapter(student.to(next(adapter.parameters(), student).dtype)).float()
            adapted = match_size(adapted, teacher.shape[-2:])
            total = total + F.mse_loss(adapted, teacher.float())
        return self.weight * total

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
