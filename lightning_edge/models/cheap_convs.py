"""Cheap substitutes for a standard convolution, as Moonshine (Crowley, Gray and Storkey, 2018) builds them.

Each takes the place of one ``nn.Conv2d`` (same input and output channels, kernel, stride and padding)
and is laid out exactly as BayesWatch/pytorch-moonshine's ``models/blocks.py``, so parameter counts
match the paper's tables. No bias anywhere: a BatchNorm follows the substituted convolution in its block.
"""
from __future__ import annotations

from torch import nn


def _spatial(conv: nn.Conv2d, channels: int, groups: int) -> nn.Conv2d:
    """The spatial convolution of a cheap block: the original's kernel, stride, padding and dilation."""
    return nn.Conv2d(
        channels, channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=groups, bias=False,
    )


class GroupedSeparableConv(nn.Sequential):
    """G(g) and DW: a grouped spatial convolution C_in -> C_in, BatchNorm, ReLU, then a 1x1 C_in -> C_out.

    ``groups = C_in`` is the depthwise-separable DW (the reference's ``DConv``); ``groups = g`` is its
    ``DConvA{g}``.
    """

    def __init__(self, conv: nn.Conv2d, groups: int):
        channels = conv.in_channels
        super().__init__()
        self.spatial = _spatial(conv, channels, groups)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.pointwise = nn.Conv2d(channels, conv.out_channels, 1, bias=False)


class BottleneckConv(nn.Sequential):
    """B(b) and BG(b,g): 1x1 C_in -> C_out/b, BN, ReLU, spatial C_out/b -> C_out/b (g groups), BN, ReLU, 1x1 -> C_out.

    The reference's ``ConvB{b}`` (one group) and ``A{g}B{b}`` (``AConvBottleneck`` with g groups).
    """

    def __init__(self, conv: nn.Conv2d, bottleneck: int, groups: int = 1):
        width = conv.out_channels // bottleneck
        super().__init__()
        self.reduce = nn.Conv2d(conv.in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.spatial = _spatial(conv, width, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(width, conv.out_channels, 1, bias=False)
