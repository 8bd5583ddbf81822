"""Feature alignment inside the causal masks (FitNets hint loss, Romero et al., 2015)."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import Connector, fa_loss
from . import TERMS
from .base import LossTerm, TermContext, TermInputs


@TERMS.register
class FeatureAlignment(LossTerm):
    r"""Per stage, :math:`\sum_{ij} M_{ij}\,\overline{(C(f_s)-f_t)^2}_{ij} / \sum_{ij} M_{ij}` with a
    1×1 conv–BN–ReLU connector :math:`C` (trained with the student, not deployed); mean over stages."""

    name = "fa"
    label = "FA"
    needs_teacher = True
    uses_masks = True

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        if ctx.student_channels is None or ctx.teacher_channels is None:
            raise ValueError("feature alignment needs the student's and teacher's stage channels")
        self.connectors = nn.ModuleDict({s: Connector(ctx.student_channels[s], ctx.teacher_channels[s])
                                         for s in ctx.stages})

    def forward(self, inp: TermInputs) -> torch.Tensor:
        return torch.stack([
            fa_loss(self.connectors[s](inp.student_feats[s]), inp.teacher_feats[s], inp.masks.get(s))
            for s in self.ctx.stages
        ]).mean()
