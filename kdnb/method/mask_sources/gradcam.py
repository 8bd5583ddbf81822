"""The causal mask: the teacher's CAM for the true class (method ``cam``, Grad-CAM by default;
the source keeps its historical name), binary top-``keep`` of its positive positions or soft."""

from __future__ import annotations

from ..masks import causal_mask
from . import MASK_SOURCES
from .base import MaskSource


@MASK_SOURCES.register
class CausalMask(MaskSource):
    name = "gradcam"
    uses_cam = True

    @staticmethod
    def make(sizes, *, cam, keep, cam_type, **_):
        if cam is None:
            raise ValueError("gradcam masks need the teacher's cam")
        return {s: causal_mask(cam, keep, cam_type, hw) for s, hw in sizes.items()}
