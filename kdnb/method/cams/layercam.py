"""LayerCAM (Jiang et al., IEEE TIP 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import CAM_METHODS
from .base import CamMethod


@CAM_METHODS.register
class LayerCAM(CamMethod):
    r"""Each position weighted by its own positive gradient:
    :math:`\mathrm{ReLU}(\sum_k \mathrm{ReLU}(\partial y^c/\partial A^k_{ij})\,A^k_{ij})`."""

    name = "layercam"
    label = "LayerCAM"

    @staticmethod
    def raw(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return F.relu((F.relu(grad.float()) * act.float()).sum(dim=1))
