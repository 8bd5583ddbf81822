"""Exact speed-ups for training steps: BatchNorm folded into a frozen teacher, stage-wise compile.

Why: on a CPU the frozen teacher's forward is most of a distillation step, and at the `cpu`
profile's narrow widths eager PyTorch spends as long in BatchNorm and CBAM's small elementwise
ops as in the convolutions (profiled: BN 10 %, elementwise ``mul`` 12 % of a kd_fa_at step).
Folding eval-mode BN into the preceding convolution is exact up to float rounding, and
compiling each *stage* separately keeps the stage outputs as real tensors, so Grad-CAM can
still take the gradient with respect to one stage's activation.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..method.models import STAGES, ResNet, SpatialGate
from .compile_cache import is_compile_failure, one_line, retry_on_damage


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


# torch 2.11's inductor failed an internal assertion (tiling_utils.get_pw_red_splits, in its
# memory-coalescing analysis) compiling the folded CBAM teacher's stages for CUDA; without that
# analysis it compiles (seen on an H200). Only a tiling heuristic is lost.
CUDA_TEACHER_OPTIONS = {"triton.coalesce_tiling_analysis": False}


# Dynamo keeps one cache per compiled function, and every stage compiled by ``Module.compile``
# shares one such function; each (stage, grad mode, shape) adds an entry. The stem and four
# stages, with and without grad (Grad-CAM differentiates the stages after the cam stage), plus
# evaluation shapes, pass the default limit of 8, past which dynamo silently runs the rest eager
# (seen on an H200: "hit config.recompile_limit (8)" in the benchmark's teacher).
TEACHER_RECOMPILE_LIMIT = 64


def compile_stages(model: ResNet) -> ResNet:
    """``torch.compile`` the stem and each stage separately, in place.

    The stage boundaries stay eager, so :func:`kdnb.method.masks.teacher_forward` can run the stages up
    to the Grad-CAM stage without a graph and differentiate the later ones with respect to that
    stage's activation. (The head, an average pool and one linear layer, stays eager.) Raises
    dynamo's recompile limit to :data:`TEACHER_RECOMPILE_LIMIT` so every stage stays compiled.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, TEACHER_RECOMPILE_LIMIT)
    options = CUDA_TEACHER_OPTIONS if next(model.parameters()).is_cuda else None
    model.stem.compile(options=options)
    for s in STAGES:
        getattr(model, s).compile(options=options)
    return model


def prepare_teacher(teacher: ResNet, compile: bool = False, low_precision: bool = False) -> ResNet:
    """A private copy of a frozen ``teacher`` for training steps: BN folded, channels_last, and
    compiled stage by stage when ``compile`` is on. The caller's teacher is left untouched.

    ``low_precision`` stores the folded weights in bf16 (for CUDA under bf16 autocast): autocast
    re-casts frozen fp32 weights on every forward, since it caches casts only of trainable ones.

    Share one prepared teacher between steppers where possible (the benchmark does): every
    compiled copy adds entries to dynamo's per-function cache, which is bounded
    (``torch._dynamo.config.recompile_limit``); past it, dynamo silently runs eager.
    """
    prepared = fold_batchnorm(copy.deepcopy(teacher)).to(memory_format=torch.channels_last)
    if low_precision:
        prepared = prepared.to(torch.bfloat16)
    return compile_stages(prepared) if compile else prepared


# ---------------------------------------------------------------- bf16 on CPUs
def cpu_bf16_pays() -> bool:
    """Whether bf16 autocast makes training faster on this CPU: only with AMX tiles.

    Measured (``python -m kdnb bench``, cpu profile, compiled, idle 2-core Xeon with AVX512-BF16
    but no AMX): fp32 steps were faster than bf16 (baseline 42.5 vs 50.0 ms, kd 132 vs 147 ms,
    kd_fa_at 156 vs 180 ms); on a machine with AMX bf16 was faster (docs/benchmark.md).
    """
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def _bf16_transpose_probe() -> bool:
    """True when inductor's CPU code for a sum of two channels_last and one contiguous bf16
    tensor into a contiguous fp32 result is right (it read garbage on AVX-512, torch 2.14)."""
    g = torch.Generator().manual_seed(0)
    shape = (16, 64, 16, 16)
    a, b, c = (torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(3))
    a, c = a.contiguous(memory_format=torch.channels_last), c.contiguous(memory_format=torch.channels_last)

    def add3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (a.float() + b.float() + c.float()).contiguous()

    got = torch.compile(add3, dynamic=False)(a, b, c)
    return bool(torch.equal(got, add3(a, b, c)))


class CompilerUnavailable(RuntimeError):
    """The compiler fails on this machine even with a fresh cache (the probe could not compile)."""


@functools.cache
def ensure_compiled_bf16_correct() -> dict[str, object]:
    """Check inductor's bf16 CPU kernels once per process and work around the miscompile.

    Why: with AVX-512 vectors, inductor (torch 2.14) tiles a kernel that reads two channels_last
    and one contiguous bf16 tensor into a contiguous output through 32×32 bf16 transposes, and
    the result is garbage (values up to 1e38 and NaN, different per thread). In the compiled
    CBAM teacher's backward that is a BatchNorm-backward kernel, so every gradient before it was
    NaN and training stopped at step 2. Narrowing inductor's vectors to 256 bits gives correct
    kernels (convolutions and matrix products are oneDNN's and keep their full width).
    Returns what was found, for the run's provenance.
    """
    import torch._inductor.config as inductor_config

    try:
        fine = retry_on_damage(_bf16_transpose_probe)  # the first compile of a process: a damaged cache shows here
    except Exception as exc:
        if not is_compile_failure(exc):
            raise
        raise CompilerUnavailable(one_line(exc)) from None
    if fine:
        return {"inductor_bf16_probe": "ok"}
    inductor_config.cpp.simdlen = 256
    torch._dynamo.reset()
    if _bf16_transpose_probe():
        return {"inductor_bf16_probe": "miscompiled at the default vector width; using simdlen=256"}
    raise RuntimeError("inductor miscompiles bf16 kernels on this CPU even at simdlen=256: "
                       "use --set amp=false or --set compile=false")


def device_name(device: torch.device | str) -> str:
    """Human-readable name of the device used for timing (GPU model or CPU model)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def amp_active(device: torch.device, enabled: bool) -> bool:
    """bf16 autocast is used on CUDA and on CPUs where it is faster (AMX, see :func:`cpu_bf16_pays`);
    elsewhere ``amp`` is a no-op."""
    return enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_pays()))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`amp_active`, else a context that does nothing."""
    if amp_active(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
