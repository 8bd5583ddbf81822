"""Control: exactly ``keep`` of the positions, at random (drawn on the host, reproducible)."""

from __future__ import annotations

from ..masks import random_mask
from . import MASK_SOURCES
from .base import MaskSource


@MASK_SOURCES.register
class RandomMask(MaskSource):
    name = "random"
    host_drawn = True

    @staticmethod
    def make(sizes, *, keep, batch, generator, device, **_):
        if batch is None:
            raise ValueError("random masks need the batch size")
        return {s: random_mask(batch, hw, keep, generator, device) for s, hw in sizes.items()}
