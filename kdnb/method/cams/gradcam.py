"""Grad-CAM (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import CAM_METHODS
from .base import CamMethod


@CAM_METHODS.register
class GradCAM(CamMethod):
    r"""Channel weights :math:`w_k = \mathrm{mean}_{ij}\,\partial y^c/\partial A^k_{ij}`;
    map :math:`\mathrm{ReLU}(\sum_k w_k A^k)`."""

    name = "gradcam"
    label = "Grad-CAM"

    @staticmethod
    def raw(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        weights = grad.float().mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * act.float()).sum(dim=1))
