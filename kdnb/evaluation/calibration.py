"""Calibration of top-1 confidence: expected calibration error and reliability diagrams.

Distillation transfers the teacher's soft targets, which can change how well the student's
confidence tracks its accuracy; ECE (Guo et al., 2017) with equal-width bins measures that.
Bins are right-closed, ``(lower, upper]``, with the first one also holding confidence 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _probabilities(scores: ArrayLike, from_logits: bool | None) -> np.ndarray:
    """Class probabilities (N,K); ``from_logits=None`` treats rows in [0,1] summing to 1 as probabilities."""
    s = _as_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"expected scores of shape (N, num_classes), got {s.shape}")
    if from_logits is None:
        from_logits = not (s.min() >= 0 and s.max() <= 1 and np.allclose(s.sum(1), 1.0, atol=1e-4))
    if from_logits:
        s = np.exp(s - s.max(1, keepdims=True))
        s = s / s.sum(1, keepdims=True)
    return s


def confidences_and_correct(
    scores: ArrayLike, labels: ArrayLike, from_logits: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence and whether the top-1 prediction is right, per sample."""
    p = _probabilities(scores, from_logits)
    y = _as_numpy(labels).astype(np.int64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(p)} score rows but {len(y)} labels")
    return p.max(1), (p.argmax(1) == y).astype(np.float64)


def reliability_table(
    scores: ArrayLike, labels: ArrayLike, n_bins: int = 15, from_logits: bool | None = None
) -> pd.DataFrame:
    """Per confidence bin: bin index, edges, count, mean confidence and accuracy (NaN when empty)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = confidences_and_correct(scores, labels, from_logits)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "confidence": mean_conf,
            "accuracy": acc,
        }
    )


def ece_from_table(table: pd.DataFrame) -> float:
    """Σ_bins (count/N)·|accuracy − confidence| over non-empty bins."""
    filled = table[table["count"] > 0]
    weights = filled["count"] / filled["count"].sum()
    return float((weights * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def expected_calibration_error(
    scores: ArrayLike, labels: ArrayLike, n_bins: int = 15, from_logits: bool | None = None
) -> float:
    """ECE with ``n_bins`` equal-width confidence bins; ``scores`` are logits or probabilities (N,K)."""
    return ece_from_table(reliability_table(scores, labels, n_bins, from_logits))
