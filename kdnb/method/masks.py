"""Causal masks: the teacher's class-activation map (CAM) for the true class, turned into masks for AT/FA.

Grad-CAM (Selvaraju et al., 2017) at stage ``A``: channel weights w_k = mean_{ij} ∂z_c/∂A_k,
cam = ReLU(Σ_k w_k A_k), each image scaled to [0,1] by its maximum (an all-zero cam stays 0).
Other CAM methods (:mod:`kdnb.method.cams`) change only the map's formula from ``A`` and ∂z_c/∂A.

Cost matters because masks are computed every training step: the stages before ``A`` run
without a graph, and the gradient is taken with respect to the *activation* ``A`` only, so the
backward pass covers the stages after ``A`` and never touches parameter ``.grad``.
:func:`teacher_forward` returns the teacher's logits and features from that same forward, so
the KD term needs no second teacher pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .cams import CAM_METHODS
from .models import STAGES

CAM_TYPES: tuple[str, ...] = ("binary", "soft")
DEFAULT_CAM = "gradcam"


def cam_key(stage: str | None, method: str = DEFAULT_CAM) -> tuple[str, str] | None:
    """The key of the cam of ``method`` at ``stage`` (None: no cam)."""
    return None if stage is None else (stage, method)


def _split_key(key) -> tuple[str, str]:
    return (key, DEFAULT_CAM) if isinstance(key, str) else key


def _check_stage(layer: str) -> None:
    if layer not in STAGES:
        raise ValueError(f"unknown stage {layer!r}; allowed: {', '.join(STAGES)}")


def teacher_forward(
    model: nn.Module, x: torch.Tensor, cam_layer: str | None = None, target: torch.Tensor | None = None,
    method: str = DEFAULT_CAM,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward of a frozen model returning ``(logits, feats, cam)``, all without a graph.

    With ``cam_layer`` set, the stages after it run with autograd on a detached copy of the
    activation so the CAM (``method``, Grad-CAM by default) for ``target`` (class indices; ``None``
    = the model's prediction) costs only the backward from the logits to that stage.
    """
    key = cam_key(cam_layer, method)
    return teacher_forwards(model, x, (key,), target)[key]


def teacher_forwards(
    model: nn.Module, x: torch.Tensor, cam_keys: Iterable, target: torch.Tensor | None = None
) -> dict:
    """:func:`teacher_forward` for several cams at once, sharing the graph-free stages they have in
    common, so a cohort of students pays for one teacher pass. A key is ``None`` (no cam), a stage
    (Grad-CAM there) or ``(stage, method)``; cams of several methods at one stage share one backward.

    Each cam entry is computed by exactly the operations :func:`teacher_forward` would run for that
    key alone (same modules), so its values are the same bit for bit. The ``None`` entry (the KD
    term's logits and the features) reuses a cam pass when there is one: the same network on the same
    input in the same precision, the stages after the cam stage run with autograd on, which changes
    no value (tests/test_kd_logits.py), so the teacher's last stages run once, not twice.
    """
    keys = list(dict.fromkeys(cam_keys))
    stages: dict[str, list] = {}
    for k in keys:
        if k is not None:
            stage, method = _split_key(k)
            _check_stage(stage)
            CAM_METHODS[method]  # an unknown method: one line listing the registered ones
            stages.setdefault(stage, []).append(k)
    depth = len(STAGES) if not stages else 1 + max(STAGES.index(s) for s in stages)
    out: dict = {}
    with torch.no_grad():
        prefix = model.run_stages(model.stem(x), STAGES[:depth])
        if None in keys and not stages:
            out[None] = (model.head(prefix[STAGES[-1]]), dict(prefix), None)
    for stage, stage_keys in stages.items():
        logits, feats, cams = _cam_tail(model, prefix, stage, target, [_split_key(k)[1] for k in stage_keys])
        for k, cam in zip(stage_keys, cams):
            out[k] = (logits, feats, cam)
        if None in keys and None not in out:  # the logits and features of a cam pass: no second tail
            out[None] = (logits, feats, None)
    return {k: out[k] for k in keys}


def _cam_tail(model: nn.Module, prefix: dict[str, torch.Tensor], cam_layer: str, target: torch.Tensor | None,
              methods: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
    """The stages after ``cam_layer`` with autograd, the logits, and each CAM ``methods`` names at
    ``cam_layer`` (one backward serves them all)."""
    feats = {name: prefix[name] for name in STAGES[: STAGES.index(cam_layer) + 1]}
    act = prefix[cam_layer].detach().requires_grad_(True)
    with torch.enable_grad():
        tail = model.run_stages(act, STAGES[STAGES.index(cam_layer) + 1 :])
        feats.update(tail)
        logits = model.head(tail[STAGES[-1]] if tail else act)
        if target is None:
            target = logits.argmax(dim=1)
        if target.device != logits.device:  # (no copy, and no host sync, when already there)
            target = target.to(logits.device)
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, act)
    with torch.no_grad():
        cams = [_unit_peak(CAM_METHODS[m].raw(act, grad)) for m in methods]
    feats = {k: v.detach() for k, v in feats.items()}
    return logits.detach(), feats, cams


def _unit_peak(cam: torch.Tensor) -> torch.Tensor:
    """Each image's map divided by its maximum (an all-zero map stays 0)."""
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))


def gradcam(model: nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor | None = None,
            method: str = DEFAULT_CAM) -> torch.Tensor:
    """Batched CAM (B,h,w) in [0,1] of ``model`` at stage ``layer`` for classes ``target``: Grad-CAM,
    or another registered ``method``."""
    return teacher_forward(model, x, cam_layer=layer, target=target, method=method)[2]


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (B,h,w) map; identity when the size already matches."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def keep_count(n: int, keep: float) -> int:
    """Positions a ``keep`` fraction of ``n`` asks for (at least one): what a binary mask keeps
    when the cam is positive on at least that many positions."""
    return min(n, max(1, math.ceil(keep * n - 1e-9)))


def _top_fraction(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Binary (B,h,w) mask of the ``keep`` fraction of highest-scoring positions per image.

    Ties go to the lower flat index (stable sort), so the result is deterministic.
    """
    b, h, w = scores.shape
    n = h * w
    k = keep_count(n, keep)
    order = torch.sort(scores.reshape(b, n), dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros(b, n, device=scores.device, dtype=torch.float32)
    mask.scatter_(1, order, 1.0)
    return mask.view(b, h, w)


def causal_mask(
    cam: torch.Tensor, keep: float = 0.5, mode: str = "binary", size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Mask from a Grad-CAM: ``binary`` keeps the top ``keep`` fraction of the positions with a
    positive cam, ``soft`` is the cam itself.

    ``size`` resizes the cam (bilinear) to the student's feature size *before* thresholding, so a
    binary mask keeps exactly the requested fraction at the student's resolution.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if size is not None:
        cam = resize_map(cam, size)
    if mode == "binary":
        # Only positions the cam marks at all can be causal: an all-zero cam (no evidence for the
        # class at this stage) gives an empty mask, not the top-left corner by tie-breaking.
        return _top_fraction(cam, keep) * (cam > 0)
    if mode == "soft":
        return cam.float()
    raise ValueError(f"unknown cam mask type {mode!r}; allowed: {', '.join(CAM_TYPES)}")


def cam_short(cam: torch.Tensor, keep: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per image (B,) bool: the cam (at ``size``) is positive on fewer positions than ``keep`` asks
    for, so its binary mask keeps less than ``keep`` (an empty cam counts: it keeps nothing)."""
    if size is not None:
        cam = resize_map(cam, size)
    positive = (cam > 0).flatten(1).sum(1)
    return positive < keep_count(cam.shape[-2] * cam.shape[-1], keep)


def _to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move host-drawn mask randomness to ``device``; to CUDA from pinned memory without blocking,
    so the step never waits for the copy."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_mask(
    batch: int, size: tuple[int, int], keep: float, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Control mask: the same fraction of positions as a binary causal mask asks for (exactly
    ``keep``, whatever the cam), chosen at random."""
    scores = torch.rand(batch, *size, generator=generator)
    return _to_device(_top_fraction(scores, keep), device)


def shuffled(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``mask`` (B,h,w) with its positions permuted uniformly at random per image (a fresh
    permutation per image, drawn on the host from ``generator`` so it is the same on every device).

    A permuted binary mask keeps exactly as many positions, at random places: the size-matched
    control of a Grad-CAM mask. A permuted soft mask keeps the same weights, at random places."""
    b, h, w = mask.shape
    perm = torch.rand(b, h * w, generator=generator).argsort(dim=1)
    return mask.reshape(b, h * w).gather(1, _to_device(perm, mask.device)).view(b, h, w)
