"""Grad-CAM++ (Chattopadhay et al., WACV 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import CAM_METHODS
from .base import CamMethod


@CAM_METHODS.register
class GradCAMPlusPlus(CamMethod):
    r"""Pixel weights :math:`\alpha^k_{ij} = g^2 / (2 g^2 + \sum_{ab} A^k_{ab}\, g^3)` with
    :math:`g = \partial y^c/\partial A^k_{ij}` (the paper's closed form, eq. 19, for an exponential
    score; 0 where :math:`g = 0`), channel weights :math:`w_k = \sum_{ij} \alpha^k_{ij}\,\mathrm{ReLU}(g)`,
    map :math:`\mathrm{ReLU}(\sum_k w_k A^k)`."""

    name = "gradcampp"
    label = "Grad-CAM++"
    EPS = 1e-6  # keeps the denominator away from 0, as in pytorch-grad-cam

    @staticmethod
    def raw(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        a, g = act.float(), grad.float()
        g2 = g * g
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + GradCAMPlusPlus.EPS
        alpha = torch.where(g != 0, g2 / denom, torch.zeros_like(g))
        weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
        return F.relu((weights * a).sum(dim=1))
