"""Cost of a model: parameters, FLOPs/MACs per image, inference latency, training-time ratio.

Distillation buys accuracy with extra training compute (a teacher forward per step) while the
student's inference cost stays that of its architecture; these helpers measure both sides.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..engine.speedups import device_name
from ..method.models import count_parameters as count_parameters  # re-exported: the deployed size


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def flops_per_image(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> int:
    """FLOPs of one forward pass on one image, from ``torch.utils.flop_counter.FlopCounterMode``.

    The counter reports FLOPs = 2 × multiply-accumulates and only counts matmul/convolution-like
    ops (BatchNorm, ReLU, pooling and additions are not counted), the usual convention for
    "ResNet-18 ≈ 0.56 GMACs on CIFAR". Runs in eval mode; the model's mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size, device=_device_of(model))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def macs_per_image(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass on one image (FLOPs / 2)."""
    return flops_per_image(model, input_size) // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    batch_size: int,
    device: torch.device | str = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    input_size: Sequence[int] = (3, 32, 32),
) -> dict:
    """Median wall time of a forward pass on a random batch, after ``warmup`` untimed passes.

    Eval mode and ``torch.inference_mode``; CUDA is synchronised around each timed pass so the
    time covers the kernels, not just their launch. The model is moved to ``device`` for the
    measurement and back afterwards, with its train/eval mode restored.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("need batch_size >= 1, repeats >= 1 and warmup >= 0")
    device = torch.device(device)
    home, was_training = _device_of(model), model.training
    model.to(device).eval()
    try:
        x = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
        times = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(device)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                _sync(device)
                times.append(time.perf_counter() - start)
    finally:
        model.to(home).train(was_training)
    median_ms = 1000.0 * statistics.median(times)
    return {
        "median_ms_per_batch": median_ms,
        "median_ms_per_sample": median_ms / batch_size,
        "device": device_name(device),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }


def training_cost_ratio(histories: dict[str, list], reference: str = "baseline") -> pd.DataFrame:
    """Median seconds per epoch per config and its ratio to ``reference``'s.

    ``histories`` maps a config to its per-epoch history dicts (each with a ``"seconds"`` key),
    or to a list of such lists (one per seed; epochs are pooled). The median ignores the slower
    first epoch and other outliers. Columns: epochs, median_seconds_per_epoch, ratio.
    """
    if reference not in histories:
        raise KeyError(f"reference {reference!r} not in histories ({list(histories)})")
    rows = {}
    for cfg, hist in histories.items():
        epochs = [e for h in hist for e in h] if hist and isinstance(hist[0], list) else list(hist)
        missing = [i for i, e in enumerate(epochs) if "seconds" not in e]
        if not epochs or missing:
            raise KeyError(f"{cfg}: every epoch needs a 'seconds' entry (missing at {missing or 'all'})")
        rows[cfg] = {
            "epochs": len(epochs),
            "median_seconds_per_epoch": statistics.median(float(e["seconds"]) for e in epochs),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "config"
    table["ratio"] = table["median_seconds_per_epoch"] / table.loc[reference, "median_seconds_per_epoch"]
    return table
