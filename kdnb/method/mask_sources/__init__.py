"""Mask sources, one file each (``--set mask_mode=<name>``): where FA and AT act.

To add one, write ``kdnb/method/mask_sources/<name>.py`` (a :class:`~.base.MaskSource` decorated
with ``@MASK_SOURCES.register``) and import it below.
"""

from __future__ import annotations

import torch

from ..registry import Registry
from .base import MaskSource

MASK_SOURCES: Registry[type[MaskSource]] = Registry("mask source")

from . import gradcam, none, random, random_matched  # noqa: E402,F401,I001


def make_masks(
    mode: str,
    sizes: dict[str, tuple[int, int]],
    *,
    cam: torch.Tensor | None = None,
    keep: float = 0.5,
    cam_type: str = "binary",
    batch: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor | None]:
    """Masks for each distillation stage (``sizes``: stage → student (h, w)) from the source ``mode``.

    ``none`` gives ``None`` (the unmasked loss); ``random`` keeps exactly ``keep`` of the positions,
    drawn from ``generator``; ``gradcam`` needs the teacher's ``cam``; ``random_matched`` is that
    mask with its positions shuffled per image (see :func:`kdnb.method.masks.shuffled`).
    """
    return MASK_SOURCES[mode].make(sizes, cam=cam, keep=keep, cam_type=cam_type, batch=batch,
                                   generator=generator, device=device)


# Views the engine and reports read (derived, never listed by hand).
MASK_MODES: tuple[str, ...] = MASK_SOURCES.names()
CAM_MODES: tuple[str, ...] = tuple(n for n, s in MASK_SOURCES.items() if s.uses_cam)
HOST_DRAWN_MASKS: tuple[str, ...] = tuple(n for n, s in MASK_SOURCES.items() if s.host_drawn)

__all__ = ["MASK_SOURCES", "MaskSource", "make_masks", "MASK_MODES", "CAM_MODES", "HOST_DRAWN_MASKS"]
