"""Size-matched control: the causal mask with its positions shuffled per image (as many kept
positions, or the same soft weights, at random places)."""

from __future__ import annotations

from ..masks import shuffled
from . import MASK_SOURCES
from .base import MaskSource
from .gradcam import CausalMask


@MASK_SOURCES.register
class RandomMatchedMask(MaskSource):
    name = "random_matched"
    uses_cam = True
    host_drawn = True

    @staticmethod
    def make(sizes, *, cam, keep, cam_type, generator, **kw):
        if cam is None:
            raise ValueError("random_matched masks need the teacher's cam")
        masks = CausalMask.make(sizes, cam=cam, keep=keep, cam_type=cam_type)
        return {s: shuffled(m, generator) for s, m in masks.items()}
