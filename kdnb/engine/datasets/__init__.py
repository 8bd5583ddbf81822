"""Datasets, one file each (``--set dataset=<name>``): classes, mean/std and on-disk formats.

To add one, write ``kdnb/engine/datasets/<name>.py`` registering a :class:`~.base.DatasetSpec` and
import it below.
"""

from __future__ import annotations

from ...method.registry import Registry
from .base import DatasetSpec

DATASETS: Registry[DatasetSpec] = Registry("dataset")

from . import cifar10  # noqa: E402,F401,I001
from . import cifar100  # noqa: E402,F401,I001

__all__ = ["DATASETS", "DatasetSpec"]
