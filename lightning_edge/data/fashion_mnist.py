"""Fashion-MNIST (Xiao et al., 2017): 70,000 28x28 grayscale images of 10 kinds of clothing.

The default real data set here: Debian's ``dataset-fashion-mnist`` package installs its IDX files in
/usr/share/datasets/fashion-mnist. Files are looked for in ``root`` (flat, or torchvision's
``FashionMNIST/raw`` layout), then in the system directories, then fetched through torchvision.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lightning_edge.data.base import ImageClassificationDataModule
from lightning_edge.data.idx import read_idx

SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _find_file(directory: str, stem: str) -> str | None:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


class FashionMNISTDataModule(ImageClassificationDataModule):
    """Fashion-MNIST as a LightningDataModule (defaults: 5,000 validation images, flips and 2-pixel crops).

    Args:
        system_dirs: directories searched after ``root`` (Debian's package location by default).
        **kwargs: see ``ImageClassificationDataModule``.
    """

    name = "Fashion-MNIST"
    native_channels = 1
    native_size = 28
    mean = (0.2860,)
    std = (0.3530,)

    def __init__(self, root: str = "data", system_dirs: Sequence[str] = SYSTEM_DIRS, download: bool = True, **kwargs):
        kwargs.setdefault("crop_padding", 2)
        kwargs.setdefault("hflip", True)
        super().__init__(root=root, download=download, **kwargs)
        self.system_dirs = tuple(system_dirs)

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def candidate_dirs(self) -> list[str]:
        return [self.root, os.path.join(self.root, "FashionMNIST", "raw"), *self.system_dirs]

    def is_complete(self, directory: str) -> bool:
        return all(_find_file(directory, stem) for stem in _FILES[True] + _FILES[False])

    def fetch(self) -> str:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(self.root, train=train, download=True)
        return os.path.join(self.root, "FashionMNIST", "raw")

    def expected_files(self) -> str:
        return ", ".join(f"{stem}[.gz]" for stem in _FILES[True] + _FILES[False])

    def how_to_get(self) -> str:
        return "apt-get install dataset-fashion-mnist   (Debian; or set data.root=DIR holding the four IDX files)"

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        directory = self.locate()
        image_file, label_file = (_find_file(directory, stem) for stem in _FILES[train])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST files in {directory!r} disagree: images {images.shape}, labels {labels.shape}"
            )
        if labels.max(initial=0) >= len(CLASSES):
            raise ValueError(f"Fashion-MNIST labels in {label_file!r} go up to {labels.max()}, expected 0..9")
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype("int64"))
