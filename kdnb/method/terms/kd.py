"""Hinton knowledge distillation (Hinton et al., 2015)."""

from __future__ import annotations

import torch

from ..losses import kd_loss
from . import TERMS
from .base import LossTerm, TermInputs


@TERMS.register
class HintonKD(LossTerm):
    r""":math:`T^2\,\mathrm{KL}(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T))`, batch mean."""

    name = "kd"
    label = "KD"
    needs_teacher = True

    def forward(self, inp: TermInputs) -> torch.Tensor:
        return kd_loss(inp.student_logits, inp.teacher_logits, self.ctx.temperature)
