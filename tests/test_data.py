"""Datamodules: real Fashion-MNIST, CIFAR in torchvision's layout, ImageFolder, and their errors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_MNIST_DIR, requires_fashion_mnist
from lightning_edge.data import (
    CIFAR10DataModule,
    DataNotFoundError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    read_idx,
)


@requires_fashion_mnist
def test_fashion_mnist_reads_the_debian_files():
    datamodule = FashionMNISTDataModule(root="/nonexistent", download=False)
    datamodule.prepare_data()
    assert datamodule.locate() == str(FASHION_MNIST_DIR)
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (55_000, 5_000, 10_000)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (128, 1, 28, 28) and images.dtype == torch.float32
    assert labels.min() >= 0 and labels.max() <= 9
    test_labels = datamodule.test_set.labels
    assert torch.bincount(test_labels).tolist() == [1000] * 10  # the published test split is balanced
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3  # normalised


@requires_fashion_mnist
def test_channels_and_resolution_adapt_for_any_model():
    datamodule = FashionMNISTDataModule(root="/nonexistent", download=False, image_size=32, channels=3, val_size=100)
    datamodule.setup("fit")
    images, _ = next(iter(datamodule.val_dataloader()))
    assert images.shape[1:] == (3, 32, 32) and datamodule.input_shape == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1])  # gray repeated into RGB


def test_missing_data_names_every_place_looked_and_the_command(tmp_path):
    datamodule = FashionMNISTDataModule(root=str(tmp_path / "nowhere"), system_dirs=[str(tmp_path / "system")], download=False)
    with pytest.raises(DataNotFoundError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "system") in message
    assert "apt-get install dataset-fashion-mnist" in message


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_round_trips_and_rejects_truncated_files(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte.gz"
    _write_idx(path, array)
    assert np.array_equal(read_idx(path), array)
    with gzip.open(path) as handle:
        data = handle.read()
    broken = tmp_path / "broken-idx3-ubyte"
    broken.write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(broken)
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_cifar10_reads_torchvision_layout_with_paper_augmentation(cifar10_root):
    datamodule = CIFAR10DataModule(root=str(cifar10_root), batch_size=16)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 200 and datamodule.val_set is datamodule.test_set  # papers validate on test
    assert datamodule.train_set.crop_padding == 4 and datamodule.train_set.hflip
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and datamodule.num_classes == 10


def test_cifar10_missing_gives_the_download_command(tmp_path):
    with pytest.raises(DataNotFoundError, match="(?s)cifar-10-batches-py.*torchvision.datasets.CIFAR10"):
        CIFAR10DataModule(root=str(tmp_path)).prepare_data()


def test_imagefolder_reads_the_imagenet_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for index in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    datamodule = ImageFolderDataModule(root=str(tmp_path), image_size=32, batch_size=4, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.num_classes == 2 and len(datamodule.train_set) == 6
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 32, 32)


def test_synthetic_data_is_learnable_and_reproducible():
    first, second = SyntheticDataModule(seed=3), SyntheticDataModule(seed=3)
    images, labels = first.load_split(train=True)
    assert torch.equal(images, second.load_split(train=True)[0])
    assert images.dtype == torch.uint8 and labels.max() < 10
