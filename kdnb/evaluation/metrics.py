"""Evaluation helpers for the results notebook: predictions, robustness, agreement, attention.

Models here take normalised float input; images are kept as uint8 (B,3,H,W) and ``normalize``
(e.g. ``kdnb.engine.data.normalize``) is applied batch by batch, so corruptions always act on pixels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import pandas as pd
import torch
from torch import nn

from ..engine.inference import Normalize, batch_slices, batched_logits, eval_mode
from ..method.losses import attention_map
from .corruptions import CIFAR10C_NAMES, CORRUPTIONS, SEVERITIES, corrupt, load_cifar10c

K = TypeVar("K", bound=Hashable)


def predict(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Normalize,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits (N, classes) on the CPU for uint8 ``images``, in eval mode and inference mode."""
    return torch.cat([logits.cpu() for _, logits in batched_logits(model, images, normalize, batch_size, device)]
                     if len(images) else [torch.empty(0)])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} logits but {len(labels)} labels")
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of samples on which student and teacher predict the same top-1 class."""
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"{student_logits.shape[0]} vs {teacher_logits.shape[0]} samples")
    return (student_logits.argmax(1) == teacher_logits.argmax(1).to(student_logits.device)).float().mean().item()


def robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    cifar10c_dir: str | None = None,
    cache: dict | None = None,
) -> pd.DataFrame:
    """Long table (corruption, severity, accuracy, source), with the clean row as ("clean", 0).

    Corruptions are generated from ``images`` with ``seed``; with ``cifar10c_dir`` those that
    exist in CIFAR-10-C are read from the official files instead (``source`` says which).
    Pass the same ``cache`` dict when evaluating several models on the same images: each
    corrupted set is then made once instead of once per model (generation costs more than
    a small model's predictions).
    """
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; choose from {sorted(CORRUPTIONS)}")
    rows = [{"corruption": "clean", "severity": 0, "source": "clean",
             "accuracy": accuracy(predict(model, images, normalize, batch_size, device), labels)}]
    for name in names:
        for severity in severities:
            key = (name, int(severity), seed, cifar10c_dir, id(images))
            if cache is not None and key in cache:
                x, y, source = cache[key]
            elif cifar10c_dir is not None and name in CIFAR10C_NAMES:
                x, y, source = *load_cifar10c(cifar10c_dir, name, severity), "cifar10c"
            else:
                x, y, source = corrupt(images, name, severity, seed), labels, "generated"
            if cache is not None:
                cache[key] = (x, y, source)
            acc = accuracy(predict(model, x, normalize, batch_size, device), y)
            rows.append({"corruption": name, "severity": int(severity), "source": source, "accuracy": acc})
    return pd.DataFrame(rows, columns=["corruption", "severity", "source", "accuracy"])


def robustness_summary(df: pd.DataFrame) -> dict:
    """For one model's :func:`robustness` table: clean accuracy, mean corruption accuracy,
    per-corruption mean over severities and the corruption × severity pivot."""
    corrupted = df[df["corruption"] != "clean"]
    clean = df.loc[df["corruption"] == "clean", "accuracy"]
    order = list(dict.fromkeys(corrupted["corruption"]))
    pivot = corrupted.pivot_table(index="corruption", columns="severity", values="accuracy", aggfunc="mean")
    return {
        "clean": float(clean.mean()) if len(clean) else float("nan"),
        "mean_corruption": float(corrupted["accuracy"].mean()),
        "per_corruption": pivot.mean(axis=1).reindex(order),
        "pivot": pivot.reindex(order),
    }


def _stage_features(model: nn.Module, x: torch.Tensor, stage: str) -> torch.Tensor:
    _, feats = model(x, return_features=True)
    if stage not in feats:
        raise KeyError(f"stage {stage!r} not in the model's features {list(feats)}")
    return feats[stage]


def attention_distances(
    students: Mapping[K, nn.Module],
    teacher: nn.Module,
    images: torch.Tensor,
    normalize: Normalize,
    stage: str = "layer3",
    p: float = 2,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[K, float]:
    """Per student, the mean over images of ‖a_s − a_t‖₂ between normalised attention maps at
    ``stage`` (the teacher's features computed once per batch for all students).

    If the teacher's map is larger, its unnormalised map (channel mean of |f|^p) is adaptively
    average-pooled to the student's size before the L2 normalisation.
    """
    from tqdm.auto import tqdm

    totals = {k: 0.0 for k in students}
    n = 0
    with eval_mode(teacher, *students.values()), torch.inference_mode():
        for sl in tqdm(list(batch_slices(len(images), batch_size)), desc="attention distance", disable=not progress):
            x = normalize(images[sl].to(device))
            ft = _stage_features(teacher, x, stage)
            for key, student in students.items():
                fs = _stage_features(student, x, stage)
                a_s = attention_map(fs, p)
                a_t = attention_map(ft, p, size=tuple(fs.shape[-2:]))
                totals[key] += (a_s.float() - a_t.float()).norm(dim=1).sum().item()
            n += len(x)
    return {k: v / max(n, 1) for k, v in totals.items()}


def attention_distance(student: nn.Module, teacher: nn.Module, images: torch.Tensor, normalize: Normalize,
                       stage: str = "layer3", p: float = 2, batch_size: int = 256,
                       device: torch.device | str = "cpu") -> float:
    """:func:`attention_distances` of one student."""
    return attention_distances({0: student}, teacher, images, normalize, stage, p, batch_size, device)[0]
