"""A four-conv network registered as ``tiny``, for tests whose subject is not the network.

A compiled ResNet-18 training step is ~60 s of C++ compiles on this project's 2-core CPU; this
network's, in fp32, about 15 s (26 small kernels), so a test of what happens *around* a compile (a
damaged compile cache) can afford real ``kdnb`` processes. A subprocess registers it by importing
this file before the command line runs (:data:`LAUNCH`): the configuration reads the registries when
it checks a setting, so a network registered from outside kdnb is a valid ``arch``.
"""

from __future__ import annotations

from torch import nn

from kdnb.method.networks import NETWORKS, NetworkSpec, StagedNetwork

NAME = "tiny"
# ``python -c LAUNCH <kdnb arguments>``: register ``tiny``, then run kdnb's command line
LAUNCH = ("import runpy, sys; sys.path.insert(0, {tests!r}); import tiny_network; "
          "sys.argv[0] = 'kdnb'; runpy.run_module('kdnb', run_name='__main__')")


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Tiny(StagedNetwork):
    """Stem and four one-conv stages at 32/16/8/4 pixels (8, 8, 16, 16, 32 channels)."""

    def __init__(self, num_classes: int = 10, *, cbam: bool = False, stem: str = "cifar", width: float = 1.0) -> None:
        super().__init__()
        if cbam:
            raise ValueError("tiny has no CBAM variant")
        self.stem = _conv(3, 8, 1)
        channels = {"layer1": (8, 8, 1), "layer2": (8, 16, 2), "layer3": (16, 16, 2), "layer4": (16, 32, 2)}
        for name, (cin, cout, stride) in channels.items():
            setattr(self, name, _conv(cin, cout, stride))
        self.stage_channels = {name: c[1] for name, c in channels.items()}
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)


if NAME not in NETWORKS:
    NETWORKS.register(NetworkSpec(NAME, "Tiny", Tiny, "four 3x3 convs at 32/16/8/4 pixels", cbam=False))
