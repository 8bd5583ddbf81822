"""The networks kdnb trains, by their stable import path: see :mod:`kdnb.method.networks` (one file
per network, a registry of names) and :mod:`kdnb.method.networks.resnet` (the paper's ResNets)."""

from __future__ import annotations

from .networks import (  # noqa: F401
    ARCHS,
    MIN_CHANNELS,
    MIN_WIDTH,
    NETWORKS,
    STAGES,
    STEMS,
    NetworkSpec,
    StagedNetwork,
    build_model,
    count_parameters,
    stage_planes,
    width_problem,
)
from .networks.resnet import BASE_CHANNELS, CBAM, ChannelGate, ResNet, SpatialGate  # noqa: F401
