"""Datasets: verified loaders for MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-10 (JPEG copy), held in memory."""

from shrinkage.data.checksums import KNOWN_FILES, KNOWN_SHA256, Checksum, Sha256, verify_file, verify_file_sha256
from shrinkage.data.cifar import load_cifar10
from shrinkage.data.cifar_jpeg import load_cifar10_jpeg, random_crop_flip, read_cifar10_jpeg
from shrinkage.data.dataset import ImageDataset, batches
from shrinkage.data.mnist import DATA_DIR_ENV, load_mnist
from shrinkage.data.registry import DATASETS, BatchAugment, DatasetSpec, get_dataset_spec

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "KNOWN_FILES",
    "KNOWN_SHA256",
    "BatchAugment",
    "Checksum",
    "DatasetSpec",
    "ImageDataset",
    "Sha256",
    "batches",
    "get_dataset_spec",
    "load_cifar10",
    "load_cifar10_jpeg",
    "load_mnist",
    "random_crop_flip",
    "read_cifar10_jpeg",
    "verify_file",
    "verify_file_sha256",
]
