"""Networks, one file each (``--set arch=<name>``), all exposing the same four named stages.

To add one, write ``kdnb/method/networks/<name>.py`` (a :class:`~.base.StagedNetwork` and a
:class:`~.base.NetworkSpec` registered in :data:`NETWORKS`) and import it below.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .base import STAGES, NetworkSpec, StagedNetwork

NETWORKS: Registry[NetworkSpec] = Registry("network")

from . import resnet  # noqa: E402,F401,I001
from . import mobilenetv2  # noqa: E402,F401,I001
from .resnet import MIN_CHANNELS, MIN_WIDTH, STEMS, stage_planes, width_problem  # noqa: E402


def build_model(arch: str, num_classes: int = 10, *, cbam: bool = False, stem: str = "cifar",
                width: float = 1.0) -> StagedNetwork:
    """Build a registered network: ``resnet18`` (BasicBlock 2-2-2-2), ``resnet50`` (Bottleneck 3-4-6-3), …

    ``width`` scales every channel count (0.125–0.5 make CPU-sized runs); ``stem="cifar"`` keeps
    32/16/8/4-pixel stages for 32×32 inputs, ``stem="torchvision"`` reproduces the 7×7/2 + max-pool
    stem of the paper's released code (8/4/2/1 pixels).
    """
    spec = NETWORKS[arch]
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return spec.build(num_classes, cbam=cbam, stem=stem, width=width)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (the deployed size; connectors live outside the model)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


ARCHS = NETWORKS  # the registered names (``arch in ARCHS``, ``tuple(ARCHS)``)

__all__ = ["NETWORKS", "NetworkSpec", "StagedNetwork", "STAGES", "STEMS", "ARCHS", "MIN_CHANNELS", "MIN_WIDTH",
           "build_model", "count_parameters", "stage_planes", "width_problem"]
