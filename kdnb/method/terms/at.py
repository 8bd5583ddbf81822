"""Attention transfer inside the causal masks (Zagoruyko & Komodakis, 2017)."""

from __future__ import annotations

import torch

from ..losses import at_loss
from . import TERMS
from .base import LossTerm, TermInputs


@TERMS.register
class AttentionTransfer(LossTerm):
    r"""Per stage, the masked mean of :math:`(a_s - a_t)^2` with :math:`a = \mathrm{vec}(\mathrm{mean}_c|f_c|^p)/\|\cdot\|_2`
    (the teacher's map pooled to the student's size first); mean over stages."""

    name = "at"
    label = "AT"
    needs_teacher = True
    uses_masks = True

    def forward(self, inp: TermInputs) -> torch.Tensor:
        return torch.stack([
            at_loss(inp.student_feats[s], inp.teacher_feats[s], inp.masks.get(s), self.ctx.at_p)
            for s in self.ctx.stages
        ]).mean()
