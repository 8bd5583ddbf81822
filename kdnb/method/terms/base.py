"""What a loss term is: a named module that reads what it needs from one step's tensors.

A term declares its inputs (``needs_teacher``: the teacher's logits/features; ``uses_masks``: it acts
inside the causal masks, so the engine computes them), its default weight, any settings of its
own (``settings``: become ``--set <name>=…`` run settings, validated by their range) and any
configurations it brings (``presets``: become ``--config <name>``). Its formula
is in its class docstring, the same text the notebooks show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class Setting:
    """A run setting a component adds: its default and working range (interval text, e.g. ``"[0, 1e6]"``)."""

    default: float
    range: str
    help: str = ""


@dataclass
class TermContext:
    """What a term may need to build itself: the distillation stages, their channels and the run's
    settings (the shared ones such as ``temperature`` and the term's own ``settings``)."""

    stages: list[str]
    temperature: float = 4.0
    at_p: float = 2.0
    student_channels: dict[str, int] | None = None
    teacher_channels: dict[str, int] | None = None
    options: dict[str, float] = field(default_factory=dict)


@dataclass
class TermInputs:
    """One step's tensors, as the objective hands them to every term."""

    student_logits: torch.Tensor
    student_feats: dict[str, torch.Tensor]
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    teacher_feats: dict[str, torch.Tensor] | None = None
    masks: dict[str, torch.Tensor | None] = field(default_factory=dict)


class LossTerm(nn.Module):
    """Base of every loss term. Subclasses set the class attributes and implement :meth:`forward`."""

    name: ClassVar[str]
    label: ClassVar[str]  # how tables and plots name it
    needs_teacher: ClassVar[bool] = False
    uses_masks: ClassVar[bool] = False
    default_weight: ClassVar[float] = 1.0
    settings: ClassVar[dict[str, Setting]] = {}
    # configurations this term brings (``--config <name>``): name → {term: weight}
    presets: ClassVar[dict[str, dict[str, float]]] = {}

    def __init__(self, ctx: TermContext) -> None:
        super().__init__()
        self.ctx = ctx

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (1-based); terms with a schedule update it in place here."""

    def forward(self, inp: TermInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
