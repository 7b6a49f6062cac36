"""Post-activation ResNets for 32x32 images (He et al., 2016, section 4.2), registered with timm.

Depth 6n+2 with three stages of n basic blocks at 16, 32 and 64 channels. The paper's CIFAR models
use parameter-free shortcuts (option "A": subsample and zero-pad channels); the default here is option
"B" (a strided 1x1 convolution and BatchNorm), which every INT8 runtime and pruning tool can express as
ordinary layers. Both are available through ``shortcut``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import register_model

from lightning_edge.models.cifar_common import CifarClassifierMixin, validate_common_args

__all__: list[str] = []


class PadChannelsShortcut(nn.Module):
    """Option "A" shortcut: take every other pixel and zero-pad the new channels on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (post-activation)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadChannelsShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(CifarClassifierMixin, nn.Module):
    """ResNet-(6n+2) for small images; ``layer1..layer3`` are the three resolution stages.

    Args:
        depth: 20, 32, 44, 56, 110 or any 6n+2.
        num_classes: size of the classifier.
        in_chans: input channels (1 for Fashion-MNIST, 3 for CIFAR).
        base_width: channels of the first stage; the others double it.
        shortcut: "B" (1x1 projection, default) or "A" (the paper's zero-padding identity).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        base_width: int = 16,
        shortcut: str = "B",
        drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__()
        validate_common_args("cifar_resnet", num_classes, in_chans, kwargs)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"cifar_resnet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"cifar_resnet shortcut must be 'A' (zero-pad) or 'B' (1x1 projection), got {shortcut!r}")
        blocks_per_stage = (depth - 2) // 6
        widths = [base_width, 2 * base_width, 4 * base_width]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = widths[0]
        stages = []
        for index, width in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.init_head(in_channels, num_classes, drop_rate)
        self.feature_info = [
            dict(num_chs=widths[0], reduction=1, module="layer1"),
            dict(num_chs=widths[1], reduction=2, module="layer2"),
            dict(num_chs=widths[2], reduction=4, module="layer3"),
        ]
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _create(depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    if pretrained:
        raise ValueError(
            f"cifar_resnet{depth} has no downloadable weights; pass model.checkpoint_path=PATH to load local weights"
        )
    return CifarResNet(depth=depth, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 (0.27M parameters) for 32x32 images."""
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 (0.46M parameters) for 32x32 images."""
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 (0.66M parameters) for 32x32 images."""
    return _create(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 (0.85M parameters) for 32x32 images."""
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 (1.7M parameters) for 32x32 images."""
    return _create(110, pretrained, **kwargs)
