"""Synthetic images for unit tests only: learnable class templates plus noise, generated in memory.

It runs the same in-memory pipeline as the real data sets, so tests of recipes, modules and callbacks
need no files. Never report a result on it.
"""
from __future__ import annotations

import torch

from lightning_edge.data.base import ImageClassificationDataModule


class SyntheticDataModule(ImageClassificationDataModule):
    """Class-conditional uint8 images: each class has a fixed random template, each sample adds noise.

    Args:
        num_classes: number of classes.
        native_channels: channels of the generated images.
        native_size: side of the generated images.
        train_samples, test_samples: split sizes.
        noise: standard deviation of the per-sample noise, in pixel levels.
        seed: seed of the templates and noise.
        **kwargs: see ``ImageClassificationDataModule``.
    """

    name = "synthetic"

    def __init__(
        self,
        num_classes: int = 10,
        native_channels: int = 3,
        native_size: int = 32,
        train_samples: int = 512,
        test_samples: int = 256,
        noise: float = 40.0,
        seed: int = 0,
        **kwargs,
    ):
        kwargs.setdefault("val_size", min(128, train_samples // 4))
        super().__init__(**kwargs)
        self._num_classes = num_classes
        self.native_channels, self.native_size = native_channels, native_size
        self.train_samples, self.test_samples = train_samples, test_samples
        self.noise, self.seed = noise, seed

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def locate(self) -> str:
        return "<generated in memory>"

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self._num_classes, self.native_channels, self.native_size, self.native_size)
        templates = torch.rand(shape, generator=generator) * 255
        generator.manual_seed(self.seed + (1 if train else 2))
        count = self.train_samples if train else self.test_samples
        labels = torch.randint(0, self._num_classes, (count,), generator=generator)
        noise = torch.randn((count, *shape[1:]), generator=generator) * self.noise
        images = (templates[labels] + noise).clamp_(0, 255).round_().to(torch.uint8)
        return images, labels
