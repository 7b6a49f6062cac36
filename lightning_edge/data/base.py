"""In-memory image classification: uint8 tensors, augmented per sample, shared by every small data set.

Fashion-MNIST and CIFAR fit in memory as uint8 (47 MB and 150 MB), so they are decoded once and
augmented with tensor ops: no PIL round trip, and every random draw comes from torch's generator,
which checkpoints record, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lightning_edge.data.errors import DataNotFoundError

# ITU-R BT.601 luma weights, to turn RGB data into one channel when a model wants grayscale.
_LUMA = (0.299, 0.587, 0.114)


def adapt_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Turn C x H x W (or N x C x H x W) float images into ``channels`` channels: repeat gray, or take luma."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1:
        return images.expand(*images.shape[:-3], channels, *images.shape[-2:])
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=images.dtype).view(3, 1, 1)
        return (images * weights).sum(dim=-3, keepdim=True)
    raise ValueError(f"cannot turn {have}-channel images into {channels} channels; use data.channels=null, 1 or 3")


def adapt_statistics(values: Sequence[float], channels: int) -> list[float]:
    """Per-channel mean or std to match ``adapt_channels``."""
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    return [sum(w * v for w, v in zip(_LUMA, values))]


class TensorImageDataset(Dataset):
    """Images held as uint8 N x C x H x W; returns normalised float images and int64 labels.

    Args:
        images: uint8 tensor N x C x H x W.
        labels: int64 tensor N.
        mean, std: per-channel statistics after channel adaptation.
        channels: output channels (see ``adapt_channels``).
        size: output side; bilinear resizing (antialiased) when it differs from the stored side.
        crop_padding: random crop after zero-padding by this many pixels (0: none); training only.
        hflip: random horizontal flip; training only.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        channels: int,
        size: int,
        crop_padding: int = 0,
        hflip: bool = False,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.channels, self.size = channels, size
        self.crop_padding, self.hflip = crop_padding, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(255.0)
        image = adapt_channels(image, self.channels)
        if image.shape[-1] != self.size or image.shape[-2] != self.size:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        if self.crop_padding:
            padding = self.crop_padding
            image = F.pad(image, (padding, padding, padding, padding))
            top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
            image = image[:, top : top + self.size, left : left + self.size]
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image - self.mean) / self.std, self.labels[index]


class ImageClassificationDataModule(pl.LightningDataModule):
    """What every datamodule here shares: sizes the model adapts to, loaders, and the validation split.

    Args:
        root: where to look first for the files (then the data set's system directories).
        batch_size: training batch size per device.
        eval_batch_size: validation and test batch size (default: ``batch_size``).
        num_workers: loader worker processes (0 keeps the two cores of a small machine for compute).
        val_size: training images held out for validation; 0 validates on the test set, as CIFAR papers do.
        split_seed: seed of the fixed train/validation split.
        image_size: side the model sees (default: the data's own); images are resized to it.
        channels: channels the model sees (default: the data's own); gray is repeated, colour turned to luma.
        crop_padding: random-crop padding for training (0 turns it off).
        hflip: random horizontal flips for training.
        download: fetch through torchvision when the files are nowhere local (needs a network).
        pin_memory: pin host memory for faster copies to a GPU.
    """

    name: str = "images"
    native_channels: int = 3
    native_size: int = 32
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        download: bool = False,
        pin_memory: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"data.val_size must be >= 0, got {val_size}")
        if channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be null, 1 or 3, got {channels}")
        self.root = os.path.expanduser(os.fspath(root))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.image_size = image_size
        self.channels = channels
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.download = download
        self.pin_memory = pin_memory
        self._directory: str | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def num_channels(self) -> int:
        """Channels of the images the model receives."""
        return self.channels or self.native_channels

    @property
    def input_size(self) -> int:
        """Side of the square images the model receives."""
        return self.image_size or self.native_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, self.input_size, self.input_size)

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of classes."""

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The training or test split as (uint8 N x C x H x W images, int64 labels).

        In-memory data sets implement this; file-backed ones (ImageFolder) override ``setup`` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load_split or override setup")

    def prepare_data(self) -> None:
        """Find (or fetch) the files; raises ``DataNotFoundError`` naming where it looked and the fix."""
        self.locate()

    def locate(self) -> str:
        """Directory holding the files: the first complete candidate, else a download if allowed.

        Raises:
            DataNotFoundError: naming every place looked in and the command that gets the files.
        """
        if self._directory is not None:
            return self._directory
        candidates = self.candidate_dirs()
        found = next((directory for directory in candidates if self.is_complete(directory)), None)
        note = "data.download=false"
        if found is None and self.download:
            try:
                fetched = self.fetch()
                found = fetched if self.is_complete(fetched) else None
                note = f"download finished but {fetched} is incomplete"
            except Exception as error:  # noqa: BLE001 - every network failure leads to the same advice
                note = f"download through torchvision failed: {type(error).__name__}: {' '.join(str(error).split())}"
        if found is None:
            raise DataNotFoundError(self.name, [*candidates, f"(download: {note})"], self.expected_files(), self.how_to_get())
        self._directory = found
        return found

    def candidate_dirs(self) -> list[str]:
        """Directories to look in, in order."""
        return [self.root]

    def is_complete(self, directory: str) -> bool:
        """Whether ``directory`` holds every file of the data set."""
        raise NotImplementedError

    def fetch(self) -> str:
        """Download into ``root`` and return the directory holding the files."""
        raise NotImplementedError(f"{self.name} cannot be downloaded")

    def expected_files(self) -> str:
        """The files looked for, for the error message."""
        return "the data set's files"

    def how_to_get(self) -> str:
        """The command that gets the files, for the error message."""
        return "set data.root to the directory holding the files"

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, train: bool) -> TensorImageDataset:
        return TensorImageDataset(
            images,
            labels,
            adapt_statistics(self.mean, self.num_channels),
            adapt_statistics(self.std, self.num_channels),
            self.num_channels,
            self.input_size,
            crop_padding=self.crop_padding if train else 0,
            hflip=self.hflip and train,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self.test_set = self._dataset(*self.load_split(train=False), train=False)
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self.load_split(train=True)
            if self.val_size >= len(images):
                raise ValueError(f"data.val_size={self.val_size} leaves no training images out of {len(images)}")
            if self.val_size == 0:
                self.train_set, self.val_set = self._dataset(images, labels, train=True), self.test_set
                return
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
            train_index, val_index = order[self.val_size :], order[: self.val_size]
            self.train_set = self._dataset(images[train_index], labels[train_index], train=True)
            self.val_set = self._dataset(images[val_index], labels[val_index], train=False)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are requested")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
