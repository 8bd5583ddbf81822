"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import TERMS
from .base import LossTerm, Setting, TermContext, TermInputs


@TERMS.register
class DecoupledKD(LossTerm):
    r"""DKD splits Hinton KD at the true class :math:`y`. With :math:`p = \mathrm{softmax}(z/T)`:
    TCKD :math:`= T^2\,\mathrm{KL}([p_t^y, 1-p_t^y]\,\|\,[p_s^y, 1-p_s^y])` (target vs the rest) and
    NCKD :math:`= T^2\,\mathrm{KL}(\hat p_t\,\|\,\hat p_s)`, :math:`\hat p` the softmax over the
    non-target classes only; DKD :math:`= r(e)\,(\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD})`, batch
    mean, ramped in linearly over the first ``dkd_warmup`` of the epochs: :math:`r(e) = \min(e / (w E), 1)`.
    The paper's CIFAR setting is CE 1, α = 1, β = 8, T = 4, warm-up 20 of 240 epochs."""

    name = "dkd"
    label = "DKD"
    needs_teacher = True
    settings = {
        "dkd_alpha": Setting(1.0, "[0, 1e6]", "weight of TCKD (target-class KD)"),
        "dkd_beta": Setting(8.0, "[0, 1e6]", "weight of NCKD (non-target-class KD)"),
        "dkd_warmup": Setting(20 / 240, "[0, 1]", "share of the epochs over which DKD ramps in (20 of 240 in the paper)"),
    }
    presets = {
        "dkd": {"ce": 1.0, "dkd": 1.0},
        "dkd_fa_at": {"ce": 1.0, "dkd": 1.0, "fa": 1.0, "at": 1000.0},  # DKD in place of KD, the same masks
    }

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        self.alpha = float(opts.get("dkd_alpha", self.settings["dkd_alpha"].default))
        self.beta = float(opts.get("dkd_beta", self.settings["dkd_beta"].default))
        self.warmup = float(opts.get("dkd_warmup", self.settings["dkd_warmup"].default))
        # the ramp, a device scalar updated in place (a captured CUDA graph keeps reading it)
        self.register_buffer("ramp", torch.ones(()), persistent=False)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        span = self.warmup * epochs
        self.ramp.fill_(1.0 if span <= 0 else min(epoch / span, 1.0))

    def forward(self, inp: TermInputs) -> torch.Tensor:
        tckd, nckd = dkd_parts(inp.student_logits, inp.teacher_logits, inp.labels, self.ctx.temperature)
        return self.ramp * (self.alpha * tckd + self.beta * nckd)


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)``, each × T² and averaged over the batch, computed in log space: the binary
    probabilities from log-sum-exps over the non-target and all classes, the non-target softmax
    with the target logit masked to −inf."""
    t = temperature
    zs, zt = student_logits.float() / t, teacher_logits.float() / t
    target = F.one_hot(labels, zs.shape[1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:  # log [p_y, 1 - p_y]
        total = z.logsumexp(1)
        return torch.stack([z.gather(1, labels.view(-1, 1)).squeeze(1), z.masked_fill(target, -torch.inf).logsumexp(1)],
                           1) - total.unsqueeze(1)

    def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:  # KL(p ‖ q) per row, 0·log 0 = 0
        terms = log_p.exp() * (log_p - log_q)
        return torch.where(torch.isfinite(log_p), terms, torch.zeros_like(terms)).sum(1)

    tckd = kl(binary_log_probs(zt), binary_log_probs(zs)).mean() * t * t
    ls = F.log_softmax(zs.masked_fill(target, -torch.inf), 1)
    lt = F.log_softmax(zt.masked_fill(target, -torch.inf), 1)
    nckd = kl(lt, ls).mean() * t * t
    return tckd, nckd
