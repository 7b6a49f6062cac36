"""What the CIFAR ResNets and Wide-ResNets share: argument checks, the classifier head, timm's model API."""
from __future__ import annotations

import torch
from torch import nn

# Keys timm.create_model always hands to an entrypoint; our models have no pretrained configs.
_TIMM_PASSTHROUGH_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "device", "dtype")


def validate_common_args(family: str, num_classes: int, in_chans: int, extra: dict) -> None:
    """Reject impossible sizes and unknown keyword arguments by name, instead of failing deep in a layer."""
    for key in _TIMM_PASSTHROUGH_KEYS:
        extra.pop(key, None)
    if extra:
        raise TypeError(f"{family} got unexpected arguments {sorted(extra)}")
    if int(num_classes) < 1:
        raise ValueError(f"{family} needs num_classes >= 1, got {num_classes}")
    if int(in_chans) < 1:
        raise ValueError(f"{family} needs in_chans >= 1, got {in_chans}")


class CifarClassifierMixin:
    """Global average pooling, optional dropout and a linear classifier, with timm's classifier API.

    Subclasses define ``forward_features`` and call ``init_head`` once their stages exist.
    """

    num_classes: int
    num_features: int

    def init_head(self, num_features: int, num_classes: int, drop_rate: float) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def init_weights(self) -> None:
        """He-normal convolutions, unit BatchNorm, default Linear: the initialisation both papers use."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.flatten(self.global_pool(x)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
