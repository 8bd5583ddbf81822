"""A run's training state between epochs: where it is, its history, its best epoch and early stopping.

Checkpoints store it as a plain dict (:meth:`TrainingState.to_dict`), so a checkpoint holds only
tensors and built-in types and stays readable whatever kdnb's classes become."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class TrainingState:
    """Epochs done, per-epoch records, and the best-by-validation-loss weights (on the CPU)."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best: dict[str, dict[str, torch.Tensor]] | None = None  # {"model": state dict, "objective": state dict}
    bad_epochs: int = 0
    stopped_early: bool = False

    def done(self, max_epochs: int) -> bool:
        return self.epoch >= max_epochs or self.stopped_early

    def end_epoch(self, record: dict[str, Any], patience: int, weights) -> None:
        """Append epoch ``record`` (with its ``val_loss``); keep ``weights()`` (CPU state dicts) when the
        validation loss improved, else count the epoch towards early stopping after ``patience``."""
        self.history.append(record)
        self.epoch = record["epoch"]
        if record["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = record["val_loss"], self.epoch, 0
            self.best = weights()
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= patience:
                self.stopped_early = True

    @property
    def best_record(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no deep copy of the weights

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingState:
        return cls(**d)
