"""What a CAM method is: a class-activation map computed from one stage's activation and the
gradient of the target class's score with respect to it.

Every method shares the engine's partial backward (the stages after the CAM stage only, gradient
with respect to the activation, never the parameters), so a method is only its map formula. The
engine then scales each image's map to [0, 1] by its maximum, as pytorch-grad-cam does.
"""

from __future__ import annotations

from typing import ClassVar

import torch


class CamMethod:
    """Base of every CAM method: ``raw(act, grad)`` → a non-negative (B,h,w) float map."""

    name: ClassVar[str]
    label: ClassVar[str]

    @staticmethod
    def raw(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
