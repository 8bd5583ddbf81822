"""MobileNetV2 (Sandler et al., CVPR 2018) for 32×32 images, as a student.

Built from torchvision's ``InvertedResidual`` blocks. The CIFAR variant keeps the first downsampling
out: a 3×3 stride-1 stem and stride 1 in the second block group, so the four stages run at 32/16/8/4
pixels like the ResNets' with the CIFAR stem, and FA and AT meet the teacher's stages at the same
resolution (where they do not — another stem — the AT and FA losses pool the teacher's map to the
student's size first, see :mod:`kdnb.method.losses`). The stages group the seven block groups (t, c, n, s):

- layer1: stem, (1, 16, 1, 1), (6, 24, 2, 1) → 24 channels at 32×32
- layer2: (6, 32, 3, 2) → 32 at 16×16
- layer3: (6, 64, 4, 2), (6, 96, 3, 1) → 96 at 8×8
- layer4: (6, 160, 3, 2), (6, 320, 1, 1), the 1×1 conv to 1280 → 1280 at 4×4

``width`` scales every channel count (rounded to a multiple of 4, at least 4) like the ResNets'.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from . import NETWORKS
from .base import NetworkSpec, StagedNetwork

# (expansion t, channels c, blocks n, first stride s) per stage
STAGE_GROUPS: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
    ((1, 16, 1, 1), (6, 24, 2, 1)),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)
STEM_CHANNELS, LAST_CHANNELS = 32, 1280


def _width(c: int, width: float) -> int:
    return max(4, int(round(c * width / 4)) * 4)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


class MobileNetV2(StagedNetwork):
    """MobileNetV2 with the four named stages kdnb distils at."""

    def __init__(self, num_classes: int = 10, *, cbam: bool = False, stem: str = "cifar", width: float = 1.0) -> None:
        super().__init__()
        if cbam:
            raise ValueError("mobilenetv2 has no CBAM variant in kdnb: set cbam=false")
        if stem != "cifar":
            raise ValueError(f"mobilenetv2 has only the cifar stem (stride 1), not {stem!r}")
        cin = _width(STEM_CHANNELS, width)
        self.stem = _conv_bn(3, cin, 3)
        self.stage_channels = {}
        for i, groups in enumerate(STAGE_GROUPS, 1):
            blocks: list[nn.Module] = []
            for t, c, n, s in groups:
                cout = _width(c, width)
                for j in range(n):
                    blocks.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                    cin = cout
            if i == len(STAGE_GROUPS):
                cout = _width(LAST_CHANNELS, width)
                blocks.append(_conv_bn(cin, cout, 1))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            self.stage_channels[f"layer{i}"] = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's MobileNetV2 initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


NETWORKS.register(NetworkSpec("mobilenetv2", "MobileNetV2", MobileNetV2,
                              "stages at 32/16/8/4 pixels: 24, 32, 96 and 1280 channels at width 1", cbam=False))
