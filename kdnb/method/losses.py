r"""Distillation losses: Hinton KD, attention transfer (AT) and feature alignment (FA).

All functions are pure (no module state) so tests can compare them with independent formulas.

* KD (Hinton et al., 2015): :math:`T^2\,\mathrm{KL}(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T))`,
  averaged over the batch.
* AT (Zagoruyko & Komodakis, 2017): attention map :math:`a = \mathrm{vec}(\mathrm{mean}_c |f_c|^p)
  / \|\cdot\|_2`; loss = squared difference of student and teacher maps, averaged over positions.
* FA (FitNets, Romero et al., 2015): a 1×1 conv–BN–ReLU connector maps student channels to the
  teacher's; loss = per-position channel-mean squared error.

AT and FA accept a causal ``mask`` (B,H,W) in [0,1]: each position's error is weighted by the
mask and the sum is divided by the mask's total weight, so an all-ones mask equals no mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(teacher ‖ student) on temperature-softened logits, batch mean, × T²."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def _spatial_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    """Unnormalised attention map (B,H,W): channel mean of |f|^p."""
    return feat.float().abs().pow(p).mean(dim=1)


def attention_map(feat: torch.Tensor, p: float = 2, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko–Komodakis attention map, flattened (B, H*W) and L2-normalised over all positions.

    ``size`` brings the map to another spatial size by adaptive average pooling *before* the
    normalisation (used when the teacher's stage is larger than the student's).
    """
    am = _spatial_map(feat, p)
    if size is not None and tuple(am.shape[-2:]) != tuple(size):
        am = F.adaptive_avg_pool2d(am.unsqueeze(1), size).squeeze(1)
    return F.normalize(am.flatten(1), dim=1)


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-position error (B,H,W); with a mask, Σ mask·err / Σ mask.

    An all-zero mask has no region to transfer: the loss is 0 (not NaN).
    """
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    if mask.shape != err.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the loss map {tuple(err.shape)}")
    # eps, not tiny: the backward divides the (weighted) upstream gradient by this, and with
    # weight 1000 / tiny the quotient overflows to inf and inf × 0 gives NaN for an empty mask.
    return (err * mask).sum() / mask.sum().clamp_min(torch.finfo(err.dtype).eps)


def at_loss(
    s_feat: torch.Tensor, t_feat: torch.Tensor, mask: torch.Tensor | None = None, p: float = 2
) -> torch.Tensor:
    """Attention-transfer loss between one student and one teacher stage output."""
    h, w = s_feat.shape[-2:]
    a_s = attention_map(s_feat, p)
    a_t = attention_map(t_feat, p, size=(h, w))
    err = (a_s - a_t).pow(2).view(-1, h, w)
    return masked_mean(err, mask)


def fa_loss(s_proj: torch.Tensor, t_feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Feature-alignment loss: per-position mean over channels of (connector(s) − t)², masked."""
    t_feat = t_feat.float()
    if s_proj.shape[-2:] != t_feat.shape[-2:]:
        t_feat = F.adaptive_avg_pool2d(t_feat, s_proj.shape[-2:])
    if s_proj.shape[1] != t_feat.shape[1]:
        raise ValueError(
            f"fa_loss needs matching channels: connector gives {s_proj.shape[1]}, teacher has {t_feat.shape[1]}"
        )
    err = (s_proj.float() - t_feat).pow(2).mean(dim=1)
    return masked_mean(err, mask)


class Connector(nn.Sequential):
    """FitNets-style regressor: 1×1 conv + BN + ReLU from student to teacher channels.

    Trained with the student, never part of the deployed student (not counted in its size).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
