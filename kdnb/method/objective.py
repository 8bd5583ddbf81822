"""One objective for every configuration: ``Σ_term w_term · term`` over the registered loss terms.

Configurations differ only in their weights (see :data:`kdnb.engine.config.PRESETS`); a term with
weight 0 is not built or computed (except CE, always logged). The terms live in
:mod:`kdnb.method.terms`, one file each. Their parameters (the FA connectors) are the objective's
only parameters: trained with the student, not part of the deployed student.
"""

from __future__ import annotations

import torch
from torch import nn

from .terms import TERMS, TermContext, TermInputs

ALWAYS = "ce"  # computed and logged whatever its weight


def term_names() -> tuple[str, ...]:
    """Every registered term, in registration order (the order of histories, tables and plots)."""
    return TERMS.names()


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
        options: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        for t in weights:
            TERMS[t]  # an unknown term: one line listing the registered ones
        self.weights = {t: float(weights.get(t, 0.0)) for t in TERMS}
        self.temperature = temperature
        self.stages = list(stages)
        self.at_p = at_p
        ctx = TermContext(self.stages, temperature, at_p, student_channels, teacher_channels, dict(options or {}))
        self.terms = nn.ModuleDict({t: TERMS[t](ctx) for t in TERMS if t == ALWAYS or self.weights[t] > 0})
        # Checkpoints written before the terms had modules of their own keep the FA connectors
        # under "connectors."; they load unchanged.
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    @property
    def active(self) -> list[str]:
        return list(self.terms)

    @property
    def connectors(self) -> nn.ModuleDict:
        """The FA connectors (empty without FA)."""
        fa = self.terms["fa"] if "fa" in self.terms else None
        return fa.connectors if fa is not None else nn.ModuleDict()

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Let terms with a schedule (a warm-up ramp) set it for training epoch ``epoch`` (1-based)."""
        for term in self.terms.values():
            term.start_epoch(epoch, epochs)

    def forward(
        self,
        student_logits: torch.Tensor,
        student_feats: dict[str, torch.Tensor],
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        teacher_feats: dict[str, torch.Tensor] | None = None,
        masks: dict[str, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inp = TermInputs(student_logits, student_feats, labels, teacher_logits, teacher_feats, masks or {})
        terms = {t: term(inp) for t, term in self.terms.items()}
        w = self.weights
        total = sum(w[t] * v for t, v in terms.items() if w[t] > 0)
        return total, terms


def _rename_legacy_keys(state_dict, prefix, *_args) -> None:
    old = prefix + "connectors."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "terms.fa.connectors." + key[len(old):]] = state_dict.pop(key)
