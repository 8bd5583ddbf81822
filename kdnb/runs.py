"""Run directories: layout, atomic writes and loading finished runs.

Layout: ``<runs_dir>/<profile>/<config>/seed<k>/`` with ``config.json``, ``history.json``,
``checkpoint.pt`` (everything needed to resume, rewritten after each epoch), and when the run
is finished ``best.pt`` (best-by-validation-loss weights) and ``metrics.json`` (written last: its
presence marks a finished run). Every file is written to a temporary name and renamed, so a
kill at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


def run_path(runs_dir: str | os.PathLike, profile: str, config: str, seed: int) -> Path:
    return Path(runs_dir) / profile / config / f"seed{seed}"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    _atomic(Path(path), lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj``."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=False)


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file()
