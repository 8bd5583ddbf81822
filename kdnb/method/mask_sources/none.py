"""No mask: FA and AT over every position (identical to an all-ones mask)."""

from __future__ import annotations

from . import MASK_SOURCES
from .base import MaskSource


@MASK_SOURCES.register
class NoMask(MaskSource):
    name = "none"

    @staticmethod
    def make(sizes, **_):
        return {s: None for s in sizes}
