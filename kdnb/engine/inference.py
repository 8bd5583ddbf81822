"""Batched inference on uint8 images: the one loop behind the engine's validation and test numbers
and the evaluation notebooks' predictions, so a model has one test accuracy wherever it is measured."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from .speedups import autocast

Normalize = Callable[[torch.Tensor], torch.Tensor]


class eval_mode:
    """Eval mode inside, each model's previous train/eval mode restored afterwards."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models
        self.modes = [m.training for m in models]

    def __enter__(self) -> None:
        for m in self.models:
            m.eval()

    def __exit__(self, *exc) -> None:
        for m, mode in zip(self.models, self.modes):
            m.train(mode)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def batched_logits(model: nn.Module, images: torch.Tensor, normalize: Normalize, batch_size: int,
                   device: torch.device | str | None = None, amp: bool = False) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(slice, float logits on the model's device)`` per batch of uint8 ``images``, in eval and
    inference mode; bf16 autocast where ``amp`` is on and pays (:func:`kdnb.engine.speedups.amp_active`).
    No host read: callers accumulate on the device."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with eval_mode(model), torch.inference_mode():
        for sl in batch_slices(len(images), batch_size):
            xb = normalize(images[sl].to(device, non_blocking=True))
            with autocast(device, amp):
                logits = model(xb).float()
            yield sl, logits
