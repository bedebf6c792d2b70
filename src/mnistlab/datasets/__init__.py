"""``mnistlab.datasets``: load a dataset by name (or a folder of IDX files) as uint8 numpy arrays.

    >>> from mnistlab import datasets
    >>> mnist = datasets.load("mnist")          # bundled, SHA-256 verified
    >>> mnist.train.images.shape, mnist.train.images.dtype
    ((60000, 28, 28), dtype('uint8'))

This folder also holds the bundled MNIST files themselves (``mnist/*.gz`` and their ``SHA256SUMS``).
"""

from __future__ import annotations

import os

from mnistlab.data import DATASET_NAMES, Dataset, Split, SplitName, dataset_info, load_dataset

__all__ = ["NAMES", "Dataset", "Split", "info", "load"]

NAMES = DATASET_NAMES


def load(name: str = "mnist", *, data_dir: str | os.PathLike[str] | None = None,
         splits: tuple[SplitName, ...] = ("train", "test")) -> Dataset:
    """The dataset ``name`` (``mnist``, ``fashion-mnist``), or the four IDX files in ``data_dir``, verified.

    ``.train`` and ``.test`` each hold ``.images`` (N x 28 x 28 uint8, read-only) and ``.labels`` (N uint8).
    """
    return load_dataset(name, data_dir=data_dir, splits=splits)


def info(dataset: Dataset) -> dict[str, object]:
    """Shapes, dtypes, value ranges, label counts and checksum status of a loaded dataset."""
    return dataset_info(dataset)
