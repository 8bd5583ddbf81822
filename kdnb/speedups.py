"""Exact speed-ups for training steps: BatchNorm folded into a frozen teacher, stage-wise compile.

Why: on a CPU the frozen teacher's forward is most of a distillation step, and at the `cpu`
profile's narrow widths eager PyTorch spends as long in BatchNorm and CBAM's small elementwise
ops as in the convolutions (profiled: BN 10 %, elementwise ``mul`` 12 % of a kd_fa_at step).
Folding eval-mode BN into the preceding convolution is exact up to float rounding, and
compiling each *stage* separately keeps the stage outputs as real tensors, so Grad-CAM can
still take the gradient with respect to one stage's activation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

from .models import STAGES, ResNet, SpatialGate


def _fold_pair(owner: nn.Module, conv_name: str, bn_owner: nn.Module, bn_name: str) -> None:
    conv, bn = getattr(owner, conv_name), getattr(bn_owner, bn_name)
    if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
        setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(bn_owner, bn_name, nn.Identity())


def fold_batchnorm(model: ResNet) -> ResNet:
    """Fold every BatchNorm of an eval-mode ``model`` into the convolution before it, in place.

    Only for frozen models (the teacher): the folded model has no BN statistics to update.
    Handles the stem, every block's convolutions (including a BN wrapped with CBAM as
    ``Sequential(bn, CBAM)``), the downsample branches and CBAM's spatial-gate convolution.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (a frozen teacher)")
    _fold_pair(model.stem, "0", model.stem, "1")
    for stage in (getattr(model, s) for s in STAGES):
        for block in stage:
            n_convs = 3 if isinstance(block, Bottleneck) else 2
            assert isinstance(block, (BasicBlock, Bottleneck))
            for i in range(1, n_convs + 1):
                bn = getattr(block, f"bn{i}")
                if isinstance(bn, nn.Sequential):  # Sequential(bn, CBAM)
                    _fold_pair(block, f"conv{i}", bn, "0")
                else:
                    _fold_pair(block, f"conv{i}", block, f"bn{i}")
            if block.downsample is not None:
                _fold_pair(block.downsample, "0", block.downsample, "1")
    for m in model.modules():
        if isinstance(m, SpatialGate):
            _fold_pair(m, "conv", m, "bn")
    return model


def compile_stages(model: ResNet) -> ResNet:
    """``torch.compile`` the stem and each stage separately, in place.

    The stage boundaries stay eager, so :func:`kdnb.masks.teacher_forward` can run the stages up
    to the Grad-CAM stage without a graph and differentiate the later ones with respect to that
    stage's activation. (The head, an average pool and one linear layer, stays eager.)
    """
    model.stem.compile()
    for s in STAGES:
        getattr(model, s).compile()
    return model


def prepare_teacher(teacher: ResNet, compile: bool = False) -> ResNet:
    """A private copy of a frozen ``teacher`` for training steps: BN folded, channels_last, and
    compiled stage by stage when ``compile`` is on. The caller's teacher is left untouched.

    Share one prepared teacher between steppers where possible (the benchmark does): every
    compiled copy adds entries to dynamo's per-function cache, which is bounded
    (``torch._dynamo.config.recompile_limit``); past it, dynamo silently runs eager.
    """
    prepared = fold_batchnorm(copy.deepcopy(teacher)).to(memory_format=torch.channels_last)
    return compile_stages(prepared) if compile else prepared
