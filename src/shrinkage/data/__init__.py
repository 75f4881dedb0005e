"""Datasets: verified loaders for MNIST, Fashion-MNIST and CIFAR-10, held in memory."""

from shrinkage.data.checksums import KNOWN_FILES, Checksum, verify_file
from shrinkage.data.cifar import load_cifar10
from shrinkage.data.dataset import ImageDataset, batches
from shrinkage.data.mnist import DATA_DIR_ENV, load_mnist
from shrinkage.data.registry import DATASETS, DatasetSpec, get_dataset_spec

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "KNOWN_FILES",
    "Checksum",
    "DatasetSpec",
    "ImageDataset",
    "batches",
    "get_dataset_spec",
    "load_cifar10",
    "load_mnist",
    "verify_file",
]
