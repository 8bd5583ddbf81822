"""One objective for every configuration: ``w_ce·CE + w_kd·KD + w_fa·FA + w_at·AT``.

Configurations differ only in their weights (see :data:`kdnb.engine.config.PRESETS`); a term with
weight 0 is not computed (except CE, always logged). FA and AT are averaged over the
distillation stages. The FA connectors are the objective's only parameters: they are trained
with the student and are not part of the deployed student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import Connector, at_loss, fa_loss, kd_loss

TERMS: tuple[str, ...] = ("ce", "kd", "fa", "at")


class Objective(nn.Module):
    """Weighted sum of the loss terms; returns ``(total, {term: value})``."""

    def __init__(
        self,
        weights: dict[str, float],
        *,
        temperature: float = 4.0,
        stages: list[str] | tuple[str, ...] = ("layer3",),
        at_p: float = 2.0,
        student_channels: dict[str, int] | None = None,
        teacher_channels: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.weights = {t: float(weights.get(t, 0.0)) for t in TERMS}
        self.temperature = temperature
        self.stages = list(stages)
        self.at_p = at_p
        self.connectors = nn.ModuleDict()
        if self.weights["fa"] > 0:
            if student_channels is None or teacher_channels is None:
                raise ValueError("feature alignment needs the student's and teacher's stage channels")
            for s in self.stages:
                self.connectors[s] = Connector(student_channels[s], teacher_channels[s])

    @property
    def active(self) -> list[str]:
        return [t for t in TERMS if t == "ce" or self.weights[t] > 0]

    def forward(
        self,
        student_logits: torch.Tensor,
        student_feats: dict[str, torch.Tensor],
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        teacher_feats: dict[str, torch.Tensor] | None = None,
        masks: dict[str, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        masks = masks or {}
        terms = {"ce": F.cross_entropy(student_logits.float(), labels)}
        if w["kd"] > 0:
            terms["kd"] = kd_loss(student_logits, teacher_logits, self.temperature)
        if w["fa"] > 0:
            terms["fa"] = torch.stack([
                fa_loss(self.connectors[s](student_feats[s]), teacher_feats[s], masks.get(s)) for s in self.stages
            ]).mean()
        if w["at"] > 0:
            terms["at"] = torch.stack([
                at_loss(student_feats[s], teacher_feats[s], masks.get(s), self.at_p) for s in self.stages
            ]).mean()
        total = sum(w[t] * v for t, v in terms.items() if w[t] > 0)
        return total, terms
