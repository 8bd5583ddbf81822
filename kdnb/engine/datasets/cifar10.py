"""CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test images of 10 classes."""

from __future__ import annotations

from . import DATASETS
from .base import DatasetSpec

DATASETS.register(DatasetSpec(
    name="cifar10",
    label="CIFAR-10",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    pickle_dir="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
))
