"""Datamodules: Fashion-MNIST (the default), CIFAR-10/100, ImageFolder, and synthetic data for tests."""
from lightning_edge.data.base import ImageClassificationDataModule, TensorImageDataset
from lightning_edge.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_edge.data.errors import DataNotFoundError
from lightning_edge.data.fashion_mnist import FashionMNISTDataModule
from lightning_edge.data.idx import read_idx
from lightning_edge.data.imagefolder import ImageFolderDataModule
from lightning_edge.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataNotFoundError",
    "FashionMNISTDataModule",
    "ImageClassificationDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "TensorImageDataset",
    "read_idx",
]
