"""What a dataset is to kdnb: its classes, its normalisation and how its canonical pickle files read.

Every dataset is also read from an image folder (``train/<class>/*``, ``test/<class>/*``) and has a
synthetic stand-in of its class count; those readers are shared (:mod:`kdnb.engine.data`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset. ``pickle_dir``: the folder name of its canonical Python-pickle release;
    ``train_files``/``test_files``: the pickle files in it; ``label_key``: the labels' key there
    (bytes keys are decoded as latin-1)."""

    name: str
    label: str
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pickle_dir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    image_size: int = 32

    @property
    def num_classes(self) -> int:
        return len(self.classes)
