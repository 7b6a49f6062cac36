"""Pre-activation Wide-ResNets WRN-d-k (Zagoruyko and Komodakis, 2016), registered with timm.

This is the exact network that attention transfer and Moonshine use: a 3x3 stem to 16 channels, three
groups of (d-4)/6 blocks at 16k, 32k and 64k channels, each block BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a
1x1 convolution on the shortcut where the shape changes, then BN-ReLU, global pooling and a linear layer.
On CIFAR-10, WRN-40-2 has 2,243,546 parameters, WRN-16-2 691,674 and WRN-16-1 175,066.

Any valid depth and width is available as ``cifar_wrn_DEPTH_WIDTH`` through
``lightning_edge.models.create_model``, which registers names outside the list below on first use.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from timm.models import is_model, register_model

from lightning_edge.models.cifar_common import CifarClassifierMixin, validate_common_args

__all__: list[str] = []

WRN_NAME = re.compile(r"^cifar_wrn_(\d+)_(\d+)$")


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the shortcut is a 1x1 conv of the pre-activated input when shapes differ."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.equal_in_out = in_channels == out_channels and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(activated)
        return out + residual


class CifarWideResNet(CifarClassifierMixin, nn.Module):
    """WRN-depth-width; ``layer1..layer3`` are the three groups whose outputs attention transfer matches.

    Args:
        depth: 6n+4 (16, 22, 28, 40, ...).
        width: the widening factor k.
        num_classes: size of the classifier.
        in_chans: input channels.
        drop_rate: dropout between the two convolutions of each block (the paper's 0.3 for some runs).
    """

    def __init__(
        self, depth: int = 16, width: int = 1, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__()
        validate_common_args("cifar_wrn", num_classes, in_chans, kwargs)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"cifar_wrn depth must be 6n+4 with n >= 1 (16, 22, 28, 40), got {depth}")
        if width < 1:
            raise ValueError(f"cifar_wrn width must be >= 1, got {width}")
        blocks_per_group = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        in_channels = 16
        groups = []
        for index, group_width in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_group):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(PreActBlock(in_channels, group_width, stride, drop_rate))
                in_channels = group_width
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        self.bn_final = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.init_head(in_channels, num_classes, drop_rate=0.0)
        self.feature_info = [
            dict(num_chs=widths[0], reduction=1, module="layer1"),
            dict(num_chs=widths[1], reduction=2, module="layer2"),
            dict(num_chs=widths[2], reduction=4, module="layer3"),
        ]
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.relu(self.bn_final(x))


def register_wrn(depth: int, width: int) -> str:
    """Register ``cifar_wrn_{depth}_{width}`` with timm (idempotent) and return the name."""
    name = f"cifar_wrn_{depth}_{width}"
    if is_model(name):
        return name

    def entrypoint(pretrained: bool = False, **kwargs) -> CifarWideResNet:
        if pretrained:
            raise ValueError(
                f"{name} has no downloadable weights; pass model.checkpoint_path=PATH to load local weights"
            )
        return CifarWideResNet(depth=depth, width=width, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"Wide-ResNet WRN-{depth}-{width} for 32x32 images."
    entrypoint.__module__ = __name__
    register_model(entrypoint)
    globals()[name] = entrypoint
    return name


def register_wrn_name(name: str) -> bool:
    """Register a ``cifar_wrn_D_K`` name on demand; False when the name has another form."""
    match = WRN_NAME.match(name)
    if match is None:
        return False
    register_wrn(int(match.group(1)), int(match.group(2)))
    return True


STANDARD_WRNS: tuple[tuple[int, int], ...] = ((16, 1), (16, 2), (16, 4), (16, 8), (22, 2), (28, 10), (40, 1), (40, 2), (40, 4))
for _depth, _width in STANDARD_WRNS:
    register_wrn(_depth, _width)
