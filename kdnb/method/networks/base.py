"""What a network is to kdnb: a stem, four named stages and a head, so distillation can read (and
Grad-CAM can split the forward at) any stage, whatever the architecture."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


class StagedNetwork(nn.Module):
    """Base of every network: subclasses build ``stem``, ``layer1``..``layer4``, ``avgpool``, ``fc``
    and set ``stage_channels`` (stage → output channels).

    ``model(x)`` returns logits; ``model(x, return_features=True)`` returns ``(logits, feats)``, the
    stage outputs *with their autograd graph*: distillation losses on them must reach the student's
    weights (the paper's released notebook stored ``output.detach()`` in hooks, which silently
    zeroed every auxiliary gradient)."""

    stage_channels: dict[str, int]

    def stages(self) -> Iterator[nn.Module]:
        return (getattr(self, s) for s in STAGES)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Global average pool + linear classifier on the layer4 output."""
        return self.fc(torch.flatten(self.avgpool(h), 1))

    def run_stages(self, h: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The stages ``names`` (consecutive, in order) applied to ``h``: each stage's output by name.
        Grad-CAM runs the network in two parts through this (:func:`kdnb.method.masks.teacher_forwards`)."""
        feats: dict[str, torch.Tensor] = {}
        for name in names:
            h = feats[name] = getattr(self, name)(h)
        return feats

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.run_stages(self.stem(x), STAGES)
        logits = self.head(feats[STAGES[-1]])
        return (logits, feats) if return_features else logits


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network: ``build(num_classes, cbam=, stem=, width=)`` → a :class:`StagedNetwork`.
    ``stages`` says which blocks form layer1..layer4 (and so what FA and AT align)."""

    name: str
    label: str
    build: Callable[..., StagedNetwork]
    stages: str
    cbam: bool = True  # accepts cbam=True
