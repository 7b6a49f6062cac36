"""CIFAR-10 and CIFAR-100 in torchvision's layout (``cifar-10-batches-py``, ``cifar-100-python``).

Training uses the papers' augmentation: a random 32x32 crop from the image zero-padded by 4, and a
random horizontal flip. The pickled batches are read directly, so any copy in torchvision's layout works.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence

import numpy as np
import torch

from lightning_edge.data.base import ImageClassificationDataModule


class CIFARDataModule(ImageClassificationDataModule):
    """Shared CIFAR reader; subclasses name the folder, files and label key.

    Args:
        system_dirs: directories searched after ``root``.
        **kwargs: see ``ImageClassificationDataModule`` (defaults here: padding 4, flips, no held-out
            validation set, as the papers train and report).
    """

    native_channels = 3
    native_size = 32
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    torchvision_class: str

    def __init__(self, root: str = "data", system_dirs: Sequence[str] = (), **kwargs):
        kwargs.setdefault("crop_padding", 4)
        kwargs.setdefault("hflip", True)
        kwargs.setdefault("val_size", 0)
        super().__init__(root=root, **kwargs)
        self.system_dirs = tuple(system_dirs)

    def candidate_dirs(self) -> list[str]:
        return [os.path.join(base, self.folder) for base in (self.root, *self.system_dirs)]

    def is_complete(self, directory: str) -> bool:
        return all(os.path.isfile(os.path.join(directory, name)) for name in self.train_files + self.test_files)

    def fetch(self) -> str:
        import torchvision.datasets

        getattr(torchvision.datasets, self.torchvision_class)(self.root, download=True)
        return os.path.join(self.root, self.folder)

    def expected_files(self) -> str:
        return ", ".join(self.train_files + self.test_files)

    def how_to_get(self) -> str:
        return (
            f"python -c \"import torchvision; torchvision.datasets.{self.torchvision_class}('{self.root}', download=True)\""
            f"   (where a network is reachable; then copy {self.folder}/ into data.root)"
        )

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        directory = self.locate()
        images, labels = [], []
        for file_name in self.train_files if train else self.test_files:
            path = os.path.join(directory, file_name)
            try:
                with open(path, "rb") as handle:
                    batch = pickle.load(handle, encoding="bytes")
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                batch_labels = np.asarray(batch[self.label_key], dtype=np.int64)
            except Exception as error:  # noqa: BLE001
                raise ValueError(f"{self.name} file {path!r} is unreadable ({error}); delete it and fetch it again") from error
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
                raise ValueError(f"{self.name} file {path!r} holds data {data.shape} and {len(batch_labels)} labels")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(batch_labels)
        label_tensor = torch.from_numpy(np.concatenate(labels))
        if label_tensor.min() < 0 or label_tensor.max() >= self.num_classes:
            raise ValueError(f"{self.name} labels in {directory!r} fall outside 0..{self.num_classes - 1}")
        return torch.from_numpy(np.concatenate(images)), label_tensor


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 60,000 32x32 colour images in 10 classes."""

    name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = b"labels"
    torchvision_class = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    @property
    def num_classes(self) -> int:
        return 10


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: 60,000 32x32 colour images in 100 fine classes."""

    name = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = b"fine_labels"
    torchvision_class = "CIFAR100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

    @property
    def num_classes(self) -> int:
        return 100
