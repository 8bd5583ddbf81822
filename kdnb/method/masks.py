"""Causal masks: the teacher's Grad-CAM for the true class, turned into masks for AT/FA.

Grad-CAM (Selvaraju et al., 2017) at stage ``A``: channel weights w_k = mean_{ij} ∂z_c/∂A_k,
cam = ReLU(Σ_k w_k A_k), each image scaled to [0,1] by its maximum (an all-zero cam stays 0).

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

from .models import STAGES

MASK_MODES: tuple[str, ...] = ("gradcam", "none", "random", "random_matched")
# The modes built from the teacher's Grad-CAM (the engine runs the cam's partial backward for them).
CAM_MODES: tuple[str, ...] = ("gradcam", "random_matched")
# Modes whose masks are drawn on the host (from a CPU generator, so runs agree across devices):
# a training step using them cannot be captured as a CUDA graph.
HOST_DRAWN_MASKS: tuple[str, ...] = ("random", "random_matched")
CAM_TYPES: tuple[str, ...] = ("binary", "soft")


def _check_stage(layer: str) -> None:
    if layer not in STAGES:
        raise ValueError(f"unknown stage {layer!r}; allowed: {', '.join(STAGES)}")


def teacher_forward(
    model: nn.Module, x: torch.Tensor, cam_layer: str | None = None, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward of a frozen model returning ``(logits, feats, cam)``, all without a graph.

    With ``cam_layer`` set, the stages after it run with autograd on a detached copy of the
    activation so Grad-CAM for ``target`` (class indices; ``None`` = the model's prediction)
    costs only the backward from the logits to that stage.
    """
    return teacher_forwards(model, x, (cam_layer,), target)[cam_layer]


def teacher_forwards(
    model: nn.Module, x: torch.Tensor, cam_layers: Iterable[str | None], target: torch.Tensor | None = None
) -> dict[str | None, tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]]:
    """:func:`teacher_forward` for several ``cam_layers`` at once (``None``: no cam), sharing the
    graph-free stages they have in common, so a cohort of students pays for one teacher pass.

    Each entry is computed by exactly the operations :func:`teacher_forward` would run for that
    ``cam_layer`` alone (same modules, same grad mode), so its values are the same bit for bit.
    """
    keys = list(dict.fromkeys(cam_layers))
    for k in keys:
        if k is not None:
            _check_stage(k)
    depth = len(STAGES) if None in keys else 1 + max(STAGES.index(k) for k in keys)
    out: dict[str | None, tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]] = {}
    with torch.no_grad():
        prefix = model.run_stages(model.stem(x), STAGES[:depth])
        if None in keys:
            out[None] = (model.head(prefix[STAGES[-1]]), dict(prefix), None)
    for k in keys:
        if k is not None:
            out[k] = _cam_tail(model, prefix, k, target)
    return out


def _cam_tail(model: nn.Module, prefix: dict[str, torch.Tensor], cam_layer: str, target: torch.Tensor | None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The stages after ``cam_layer`` with autograd, the logits, and Grad-CAM at ``cam_layer``."""
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
        weights = grad.float().mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act.float()).sum(dim=1))
        peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
        cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    feats = {k: v.detach() for k, v in feats.items()}
    return logits.detach(), feats, cam


def gradcam(model: nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor | None = None) -> torch.Tensor:
    """Batched Grad-CAM (B,h,w) in [0,1] of ``model`` at stage ``layer`` for classes ``target``."""
    return teacher_forward(model, x, cam_layer=layer, target=target)[2]


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


def make_masks(
    mode: str,
    sizes: dict[str, tuple[int, int]],
    *,
    cam: torch.Tensor | None = None,
    keep: float = 0.5,
    cam_type: str = "binary",
    batch: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor | None]:
    """Masks for each distillation stage (``sizes``: stage → student (h, w)) in one of MASK_MODES.

    ``none`` gives ``None`` (the unmasked loss, identical to an all-ones mask); ``random`` keeps
    exactly ``keep`` of the positions, drawn from ``generator`` so runs stay reproducible;
    ``gradcam`` needs the teacher's ``cam``; ``random_matched`` is the ``gradcam`` mask (of
    ``cam_type``) with its positions shuffled per image (:func:`shuffled`): with ``binary`` it keeps
    exactly as many positions as the Grad-CAM mask it replaces (fewer than ``keep`` where the cam is
    positive on fewer), with ``soft`` the same weights, both at random places.
    """
    if mode == "none":
        return {s: None for s in sizes}
    if mode == "random":
        if batch is None:
            raise ValueError("random masks need the batch size")
        return {s: random_mask(batch, hw, keep, generator, device) for s, hw in sizes.items()}
    if mode in CAM_MODES:
        if cam is None:
            raise ValueError(f"{mode} masks need the teacher's cam")
        masks = {s: causal_mask(cam, keep, cam_type, hw) for s, hw in sizes.items()}
        if mode == "random_matched":
            masks = {s: shuffled(m, generator) for s, m in masks.items()}
        return masks
    raise ValueError(f"unknown mask mode {mode!r}; allowed: {', '.join(MASK_MODES)}")
