"""Bringing a student's map to the teacher's spatial size, the one rule every feature loss uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def match_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``N x C x H x W`` maps to ``size``: area averages when shrinking, bilinear when growing.

    Shrinking uses ``adaptive_avg_pool2d``, so every target cell is the mean of the source cells it covers
    (exact block means for integer ratios) and no activation is skipped; growing (or a mix) interpolates
    bilinearly with ``align_corners=False``.
    """
    size = (int(size[0]), int(size[1]))
    height, width = maps.shape[-2:]
    if (height, width) == size:
        return maps
    if size[0] <= height and size[1] <= width:
        return F.adaptive_avg_pool2d(maps, size)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
