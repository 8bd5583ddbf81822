"""What a mask source is: where the masks FA and AT act inside come from, per step and stage."""

from __future__ import annotations

from typing import ClassVar

import torch


class MaskSource:
    """Base of every mask source. ``make`` returns ``{stage: mask (B,h,w) or None}`` (None: every
    position, the unmasked loss)."""

    name: ClassVar[str]
    uses_cam: ClassVar[bool] = False  # built from the teacher's CAM: the engine runs its partial backward
    host_drawn: ClassVar[bool] = False  # drawn from a CPU generator: a step using it is not CUDA-graph safe

    @staticmethod
    def make(sizes: dict[str, tuple[int, int]], *, cam: torch.Tensor | None, keep: float, cam_type: str,
             batch: int | None, generator: torch.Generator | None, device: torch.device | str
             ) -> dict[str, torch.Tensor | None]:  # pragma: no cover - abstract
        raise NotImplementedError
