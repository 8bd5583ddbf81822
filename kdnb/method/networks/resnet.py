"""ResNets for 32×32 images, optionally with CBAM: the paper's teacher (ResNet-50 + CBAM) and student
(ResNet-18).

Built from torchvision's ``BasicBlock`` and ``Bottleneck`` so the residual blocks are the
maintained ones; kdnb only chooses the stem, the widths and where CBAM goes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from . import NETWORKS
from .base import STAGES, NetworkSpec, StagedNetwork

BLOCKS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
STEMS: tuple[str, ...] = ("cifar", "torchvision")

BASE_CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)  # the stages' planes at width 1
# The narrowest layer (the stem and layer1: 64 x width) must keep this many channels: below it the
# network is not a ResNet worth distilling into (a 1-channel layer trains without a word and learns
# nothing), and attention maps and Grad-CAM over so few channels mean nothing.
MIN_CHANNELS = 4
MIN_WIDTH = MIN_CHANNELS / BASE_CHANNELS[0]  # 0.0625


def stage_planes(width: float) -> list[int]:
    """The planes of the four stages at ``width`` (at least 1 each)."""
    return [max(1, int(round(c * width))) for c in BASE_CHANNELS]


def width_problem(width: float) -> str | None:
    """Why ``width`` makes a layer narrower than :data:`MIN_CHANNELS`, with the smallest allowed
    width; None when it does not."""
    if width >= MIN_WIDTH:
        return None
    return (f"makes the narrowest layers (the stem and layer1) {BASE_CHANNELS[0]} x {width:g} = "
            f"{BASE_CHANNELS[0] * width:.3g} channels wide, below the minimum of {MIN_CHANNELS} channels: "
            f"use width >= {MIN_WIDTH:g}")



class ChannelGate(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through one shared MLP, summed."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3)))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1).flatten(1))  # not amax: see SpatialGate.forward
        return x * torch.sigmoid(avg + mx)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial attention: [max_c, mean_c] → 7×7 conv → BN → sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        # The reference implementation uses BN momentum 0.01 here.
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max(...).values, not amax: the same forward, but the backward routes the gradient by the
        # saved index. amax's backward finds the maximum again by comparing values; compiled under
        # bf16 autocast (torch 2.14, CPU) that comparison matched nothing and gave NaN input
        # gradients, so every Grad-CAM through a compiled CBAM came out empty. Eager, the
        # index-based backward is also cheaper (amax's was 8 % of a masked step).
        pooled = torch.cat([x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_gate(self.channel_gate(x))


def _last_bn_name(block: nn.Module) -> str:
    return "bn3" if isinstance(block, Bottleneck) else "bn2"


def _attach_cbam(block: nn.Module) -> None:
    """Put CBAM on the residual branch, after its last BN and before the identity addition.

    torchvision's block computes ``out = bnK(convK(...)); out += identity``; wrapping ``bnK``
    as ``Sequential(bnK, CBAM)`` is exactly the reference placement without rewriting forward.
    """
    name = _last_bn_name(block)
    bn = getattr(block, name)
    setattr(block, name, nn.Sequential(bn, CBAM(bn.num_features)))


class ResNet(StagedNetwork):
    """A CIFAR-style (or torchvision-style) ResNet exposing its four stage outputs."""

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, int, int, int],
        num_classes: int = 10,
        *,
        cbam: bool = False,
        stem: str = "cifar",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        planes = stage_planes(width)
        self.inplanes = planes[0]
        if stem == "cifar":
            conv = nn.Conv2d(3, planes[0], 3, stride=1, padding=1, bias=False)
            pool: nn.Module = nn.Identity()
        elif stem == "torchvision":
            conv = nn.Conv2d(3, planes[0], 7, stride=2, padding=3, bias=False)
            pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True), pool)
        self.layer1 = self._make_layer(block, planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        self.stage_channels = {s: p * block.expansion for s, p in zip(STAGES, planes)}
        self._init_weights()
        if cbam:
            for stage in self.stages():
                for blk in stage:
                    _attach_cbam(blk)
            self._init_cbam()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _init_cbam(self) -> None:
        # Reference CBAM init: convs kaiming fan_out, BN weight 1 except the spatial gate's BN,
        # whose weight starts at 0 so each spatial gate begins as a constant ×0.5; all biases 0.
        for m in self.modules():
            if isinstance(m, ChannelGate):
                for lin in (m.mlp[1], m.mlp[3]):
                    nn.init.zeros_(lin.bias)
            if isinstance(m, SpatialGate):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out")
                nn.init.zeros_(m.bn.weight)
                nn.init.zeros_(m.bn.bias)


def _builder(arch: str):
    block, layers = BLOCKS[arch]

    def build(num_classes: int = 10, *, cbam: bool = False, stem: str = "cifar", width: float = 1.0) -> ResNet:
        if width_problem(width):
            raise ValueError(f"width={width:g} {width_problem(width)}")
        return ResNet(block, layers, num_classes, cbam=cbam, stem=stem, width=width)
    return build


NETWORKS.register(NetworkSpec("resnet18", "ResNet-18", _builder("resnet18"),
                              "the four residual stages (2-2-2-2 BasicBlocks), 32/16/8/4 pixels with the CIFAR stem"))
NETWORKS.register(NetworkSpec("resnet50", "ResNet-50", _builder("resnet50"),
                              "the four residual stages (3-4-6-3 Bottlenecks), 32/16/8/4 pixels with the CIFAR stem"))
