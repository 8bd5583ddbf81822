"""Cost of a model: parameters, FLOPs/MACs per image, inference latency, training-time ratio.

Distillation buys accuracy with extra training compute (a teacher forward per step) while the
student's inference cost stays that of its architecture; these helpers measure both sides.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence

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


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3) of ``values`` (inclusive method, as numpy's default; one value: itself thrice)."""
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return q1, med, q3


def measure_latencies(
    models: Mapping[str, nn.Module],
    batch_size: int,
    device: torch.device | str = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    input_size: Sequence[int] = (3, 32, 32),
) -> dict[str, dict]:
    """Latency of a forward pass of each model, with its spread: ``rounds`` rounds, in each of which
    every model in turn takes ``repeats`` timed passes (after ``warmup`` untimed ones); a round's
    value is the median of its passes.

    The rounds alternate between the models, so a slow spell of a shared machine hits all of them
    alike; the result per model is the median over rounds and the interquartile range (IQR) of the
    rounds, the run-to-run spread a difference between two models must exceed to be measurable
    (:func:`latency_difference`). Eval mode and ``torch.inference_mode``; CUDA is synchronised around
    each timed pass; each model goes back to its device and train/eval mode afterwards.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or rounds < 1:
        raise ValueError("need batch_size >= 1, repeats >= 1, rounds >= 1 and warmup >= 0")
    device = torch.device(device)
    x = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    homes = {k: (_device_of(m), m.training) for k, m in models.items()}
    per_round: dict[str, list[float]] = {k: [] for k in models}
    try:
        for m in models.values():
            m.to(device).eval()
        with torch.inference_mode():
            for _ in range(rounds):
                for key, model in models.items():
                    for _ in range(warmup):
                        model(x)
                    _sync(device)
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        model(x)
                        _sync(device)
                        times.append(time.perf_counter() - start)
                    per_round[key].append(1000.0 * statistics.median(times))
    finally:
        for key, model in models.items():
            model.to(homes[key][0]).train(homes[key][1])
    out = {}
    for key, values in per_round.items():
        q1, med, q3 = quartiles(values)
        out[key] = {
            "median_ms_per_batch": med,
            "median_ms_per_sample": med / batch_size,
            "q1_ms_per_sample": q1 / batch_size,
            "q3_ms_per_sample": q3 / batch_size,
            "iqr_ms_per_sample": (q3 - q1) / batch_size,
            "rounds_ms_per_batch": values,
            "rounds": rounds,
            "repeats": repeats,
            "device": device_name(device),
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
        }
    return out


def measure_latency(
    model: nn.Module,
    batch_size: int,
    device: torch.device | str = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    input_size: Sequence[int] = (3, 32, 32),
) -> dict:
    """:func:`measure_latencies` of one model: median over ``rounds`` and the IQR of the rounds."""
    return measure_latencies({"model": model}, batch_size, device, warmup, repeats, rounds, input_size)["model"]


NO_MEASURABLE_DIFFERENCE = "no measurable difference"


def latency_difference(a: Mapping[str, float], b: Mapping[str, float]) -> str:
    """``a`` against ``b`` (two :func:`measure_latencies` results): "no measurable difference" when
    their interquartile ranges overlap (the difference is inside the run-to-run spread), else how
    many times slower or faster ``a`` is."""
    if a["q1_ms_per_sample"] <= b["q3_ms_per_sample"] and b["q1_ms_per_sample"] <= a["q3_ms_per_sample"]:
        return NO_MEASURABLE_DIFFERENCE
    ratio = a["median_ms_per_sample"] / b["median_ms_per_sample"]
    return f"{ratio:.2f}× slower" if ratio > 1 else f"{1 / ratio:.2f}× faster"


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


def _per_step(history: Sequence[Mapping], key: str) -> dict[tuple, float]:
    """Milliseconds per step of ``key`` in each epoch that recorded it (None/NaN: not recorded), over
    the epoch's ``timed_steps`` (the cohort's first step is a warm-up, not timed), else its ``steps``;
    keyed by (seed, teacher seed, epoch) where the seed is recorded, else by the epoch's position (so
    that pooled histories without seeds neither collide nor lose epochs)."""
    out = {}
    for i, h in enumerate(history):
        value, steps = h.get(key), h.get("timed_steps")
        if steps is None or steps != steps:  # not recorded (None, or NaN in a DataFrame's row)
            steps = h.get("steps")
        if value is not None and steps and math.isfinite(float(value)) and math.isfinite(float(steps)):
            where = (h["seed"], h.get("teacher_seed"), h.get("epoch")) if h.get("seed") is not None else ("position", i)
            out[where] = 1000.0 * float(value) / float(steps)
    return out


def training_cost(histories: Mapping[str, Sequence[Mapping]], reference: str = "baseline") -> pd.DataFrame:
    """Per config, from its runs' per-epoch histories (pooled over seeds): the milliseconds per
    training step the config spent on its own work (its forward, backward and update:
    ``own_seconds / timed_steps``) as median and IQR over epochs; its ratio to ``reference``'s,
    paired by epoch (median and IQR of the per-epoch ratios over the epochs both ran in the same
    cohort: the machine's load, which moves both, cancels); and the milliseconds per step of the
    shared part its cohort paid once for all its members (the batch with its augmentation, the
    teacher pass and its Grad-CAM).

    A cohort's wall time per epoch is the same for every member, so it cannot tell what a
    configuration costs; its own share can. Epochs without the split (histories written before
    kdnb measured it, steps replayed as one CUDA graph) are left out; a config with none has NaN.
    """
    nan = float("nan")
    own = {cfg: _per_step(hist, "own_seconds") for cfg, hist in histories.items()}
    ref = own.get(reference, {})
    rows = {}
    for cfg, hist in histories.items():
        shared = list(_per_step(hist, "shared_seconds").values())
        q1, med, q3 = quartiles(list(own[cfg].values())) if own[cfg] else (nan,) * 3
        ratios = [v / ref[k] for k, v in own[cfg].items() if ref.get(k)]
        r1, rmed, r3 = quartiles(ratios) if ratios else (nan,) * 3
        rows[cfg] = {"epochs": len(own[cfg]), "own_ms_per_step": med, "own_ms_per_step_iqr": q3 - q1,
                     "own_vs_reference": rmed, "own_vs_reference_iqr": r3 - r1, "paired_epochs": len(ratios),
                     "shared_ms_per_step": statistics.median(shared) if shared else nan}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "config"
    return table
