"""Cross-entropy with the true labels (always computed, logged even at weight 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import TERMS
from .base import LossTerm, TermInputs


@TERMS.register
class CrossEntropy(LossTerm):
    r""":math:`\mathrm{CE}(z_s, y)`, batch mean."""

    name = "ce"
    label = "CE"

    def forward(self, inp: TermInputs) -> torch.Tensor:
        return F.cross_entropy(inp.student_logits.float(), inp.labels)
