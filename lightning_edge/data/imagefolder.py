"""Any data set in ImageNet's layout: ``root/train/CLASS/*.jpg`` and ``root/val/CLASS/*.jpg``.

Images are decoded from disk per sample (too large for memory), with the standard ImageNet
augmentation: random resized crops and flips for training, resize to size/0.875 and a centre crop for
evaluation. ``val/`` serves as the validation and the test set unless a ``test/`` folder exists.
"""
from __future__ import annotations

import os

from torchvision import datasets, transforms

from lightning_edge.data.base import ImageClassificationDataModule, adapt_statistics

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(ImageClassificationDataModule):
    """Image folders as a LightningDataModule.

    Args:
        root: the folder holding ``train/`` and ``val/`` (and optionally ``test/``).
        image_size: side of the crops the model sees (224 as ImageNet models are trained).
        **kwargs: see ``ImageClassificationDataModule``; ``channels=1`` reads images as grayscale.
    """

    name = "ImageFolder"
    native_channels = 3
    native_size = 224
    mean = _IMAGENET_MEAN
    std = _IMAGENET_STD

    def __init__(self, root: str, image_size: int = 224, **kwargs):
        kwargs.setdefault("val_size", 0)
        super().__init__(root=root, image_size=image_size, **kwargs)
        self._classes: list[str] | None = None

    def is_complete(self, directory: str) -> bool:
        return all(os.path.isdir(os.path.join(directory, split)) for split in ("train", "val"))

    def expected_files(self) -> str:
        return "train/CLASS/*.jpg and val/CLASS/*.jpg (one sub-folder of images per class)"

    def how_to_get(self) -> str:
        return "set data.root=DIR where DIR/train/CLASS/ and DIR/val/CLASS/ hold the images"

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            train_dir = os.path.join(self.locate(), "train")
            self._classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
            if not self._classes:
                raise ValueError(f"no class folders in {train_dir!r}; expected train/CLASS/*.jpg")
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _transform(self, train: bool) -> transforms.Compose:
        size = self.input_size
        steps: list = [transforms.Grayscale(1)] if self.num_channels == 1 else []
        if train:
            steps += [transforms.RandomResizedCrop(size)]
            steps += [transforms.RandomHorizontalFlip()] if self.hflip else []
        else:
            steps += [transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size)]
        steps += [
            transforms.ToTensor(),
            transforms.Normalize(adapt_statistics(self.mean, self.num_channels), adapt_statistics(self.std, self.num_channels)),
        ]
        return transforms.Compose(steps)

    def _folder(self, split: str, train: bool) -> datasets.ImageFolder:
        dataset = datasets.ImageFolder(os.path.join(self.locate(), split), transform=self._transform(train))
        if dataset.classes != self.classes:
            raise ValueError(f"{split}/ has classes {dataset.classes[:5]}... but train/ has {self.classes[:5]}...")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        test_split = "test" if os.path.isdir(os.path.join(self.locate(), "test")) else "val"
        if self.test_set is None:
            self.test_set = self._folder(test_split, train=False)
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = self._folder("train", train=True)
            self.val_set = self._folder("val", train=False)
