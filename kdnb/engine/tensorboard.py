"""TensorBoard event files of a run, in ``<run>/tb/``: watch many runs live with
``tensorboard --logdir runs/``.

The training loop calls :meth:`RunLog.epoch` once per finished epoch *before* it commits the
epoch's checkpoint, and opens the log with ``purge_step`` at the first epoch it will train. So a
resumed run appends to the same folder, every committed epoch is logged, and an epoch logged by a
process killed before its checkpoint is hidden by TensorBoard (purged) when the resumed run logs
it again: no epoch shows twice. Without the ``tensorboard`` package nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TB_DIR = "tb"
# history keys that are not a per-epoch value to plot
_SKIP = ("epoch",)


def available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (it needs the ``tensorboard`` package)."""
    try:
        import importlib

        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        return False
    return os.environ.get("KDNB_TENSORBOARD", "1") != "0"


class RunLog:
    """The event writer of one run; opened lazily at the first epoch, so a run that fails before
    training leaves no ``tb/`` folder behind."""

    def __init__(self, run_dir: str | os.PathLike, first_epoch: int):
        self.dir = Path(run_dir) / TB_DIR
        self.first_epoch = first_epoch
        self._writer = None
        self._on = available()

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.dir), purge_step=self.first_epoch)
        return self._writer

    def epoch(self, record: dict[str, Any]) -> None:
        """Log one epoch's history record (every objective term, accuracies, lr, mask share,
        images/s) and flush, so the events are on disk before the epoch is committed."""
        if not self._on:
            return
        w, step = self._open(), int(record["epoch"])
        for key, value in record.items():
            if key not in _SKIP and isinstance(value, (int, float)):
                group = "accuracy" if key.endswith("_acc") else "loss" if key.startswith(("train_", "val_")) \
                    else "engine"
                w.add_scalar(f"{group}/{key}", value, step)
        w.flush()

    def finish(self, settings: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The run's settings as hparams, with its final metrics, then close."""
        if not self._on:
            return
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings.items()}
        final = {f"hparam/{k}": float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._open().add_hparams(hparams, final, run_name=".")
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
