"""The default (`cpu`) profile's engine path, at small scale: compile + bf16 autocast + channels_last
+ the BN-folded frozen teacher, for the teacher and every student configuration.

Why this exists: CI once ran only the eager fp32 `smoke` path, while the default profile's
compiled bf16 teacher turned NaN at step 2 (inductor miscompiled a bf16 kernel of its backward on
AVX-512, see :func:`kdnb.engine.speedups.ensure_compiled_bf16_correct`). bf16 autocast is only *used* on
CPUs where it pays (AMX), so these tests switch it on whatever the CPU, as an AMX machine would.
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
import torch.nn.functional as F

import kdnb.engine.speedups as speedups
from kdnb.engine.config import STUDENT_CONFIGS, TEACHER, make_config
from kdnb.engine.data import make_synthetic
from kdnb.engine.speedups import fold_batchnorm
from kdnb.engine.step import build_stepper, prepare_teacher_for
from kdnb.method.masks import teacher_forward
from kdnb.method.models import STAGES, build_model

BATCH = 16
STEPS = 6


@pytest.fixture(scope="module")
def batch():
    d = make_synthetic(BATCH, 10)
    # identity crop, no flip: the same images every step, so the loss must fall
    draws = (torch.full((BATCH, 2), 4, dtype=torch.long), torch.zeros(BATCH, dtype=torch.bool))
    return d.train_x, d.train_y, draws


@pytest.fixture(scope="module")
def bf16_cpu():
    """bf16 autocast on this CPU, as on one with AMX (the profile's default there)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(speedups, "cpu_bf16_pays", lambda: True)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def teachers(bf16_cpu):
    """A randomly initialised cpu-profile teacher, raw and prepared as training prepares it."""
    tcfg = make_config(TEACHER, "cpu", 0)
    torch.manual_seed(0)
    raw = build_model(tcfg.arch, cbam=tcfg.cbam, stem=tcfg.stem, width=tcfg.width).eval().requires_grad_(False)
    cfg = make_config("kd_fa_at", "cpu", 0)
    assert cfg.compile and cfg.amp, "the cpu profile compiles under bf16 autocast"
    return raw, prepare_teacher_for(cfg, raw, torch.device("cpu"))


def _stepper(config: str, teachers, *, compiled: bool):
    overrides = {} if compiled else {"compile": False, "amp": False}
    cfg = make_config(config, "cpu", 0, overrides)
    raw, prepared = teachers
    teacher = None if not cfg.needs_teacher else (prepared if compiled else raw)
    return cfg, build_stepper(cfg, teacher, torch.device("cpu"), steps_per_epoch=10,
                              teacher_prepared=compiled)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.replace("_orig_mod.", ""): p.grad.detach().float().clone()
            for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("config", (TEACHER, *STUDENT_CONFIGS))
def test_compiled_bf16_steps_learn_like_eager_fp32(config, batch, teachers, bf16_cpu):
    x, y, draws = batch
    cfg, fast = _stepper(config, teachers, compiled=True)
    _, ref = _stepper(config, teachers, compiled=False)
    assert speedups.amp_active(torch.device("cpu"), cfg.amp) and cfg.compile

    losses = []
    for step in range(STEPS):
        total, terms, _ = fast(x, y, draws)
        assert all(torch.isfinite(v).all() for v in terms.values()), f"{config} step {step + 1}: {terms}"
        losses.append(float(total))
        if step == 0:  # same weights, same batch: compare with eager fp32 before the updates diverge
            got = _grads(fast.student)
            ref(x, y, draws)
            want = _grads(ref.student)
    assert losses[-1] < losses[0], f"{config}: loss did not fall over {STEPS} steps on one batch: {losses}"

    # Every stage of the network receives finite, non-zero gradients.
    for part in ("stem", *STAGES, "fc"):
        grads = [g for n, g in got.items() if n.startswith(part + ".")]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"{config}: non-finite gradient in {part}"
        assert any(g.abs().sum() > 0 for g in grads), f"{config}: all-zero gradients in {part}"

    # Tolerance: bf16 keeps 8 mantissa bits, and at initialisation small gradients (BN biases,
    # CBAM's MLPs) come out of long sums with cancellation. Eager bf16 against eager fp32 on this
    # teacher and batch gave a median cosine of 0.93 over parameter tensors, 10th percentile 0.86,
    # a few tensors near 0 or negative. A miscompile gives NaN, zeros or garbage (cosine ~0)
    # everywhere, so: the median at least 0.85 and 80 % of the tensors at least 0.5.
    cos = [F.cosine_similarity(got[n].flatten(), want[n].flatten(), dim=0).item()
           for n in want if want[n].norm() > 0 and n in got]
    assert len(cos) >= 0.9 * len(want)
    assert statistics.median(cos) >= 0.85, f"{config}: median cosine {statistics.median(cos):.3f}"
    assert sum(c >= 0.5 for c in cos) >= 0.8 * len(cos), f"{config}: cosines {sorted(cos)[:10]}"


@pytest.mark.slow
def test_the_compiled_bf16_teacher_keeps_gradcam(batch, teachers, bf16_cpu):
    """The teacher as the cpu profile runs it (BN folded, every stage compiled, bf16 autocast) gives
    the eager teacher's logits, features and Grad-CAM, differentiating through the compiled stages
    after the cam stage (whose CBAM once gave NaN gradients in bf16). The compiled graphs are the
    ones the distilling steps above use (same teacher, batch and cam stage): nothing compiles twice.
    tests/test_speedups.py checks the same in fp32 (the profile on CPUs without AMX)."""
    xb, y, draws = batch
    raw, prepared = teachers
    cfg, stepper = _stepper("kd_fa_at", teachers, compiled=True)
    x, stage = stepper.prepare(xb, draws), cfg.cam_stage  # the input and stage of the distilling steps
    eager = fold_batchnorm(copy.deepcopy(raw))
    with speedups.autocast(torch.device("cpu"), True):
        want_logits, want_feats, want_cam = teacher_forward(eager, x, stage, y)
        logits, feats, cam = teacher_forward(prepared, x, stage, y)
    assert float(want_cam.amax()) == 1.0  # a real cam, so the comparison is not vacuous
    torch.testing.assert_close(logits, want_logits, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(feats[stage], want_feats[stage], rtol=5e-2, atol=5e-2)
    # bf16 rounding moves single positions, and an image whose cam is ~0 everywhere can flip to
    # empty; the rest must agree image by image
    live = (want_cam.flatten(1).amax(1) > 0) & (cam.flatten(1).amax(1) > 0)
    assert live.sum() >= 0.75 * len(y), f"only {int(live.sum())} of {len(y)} images have a cam in both"
    cos = F.cosine_similarity(cam.flatten(1)[live], want_cam.flatten(1)[live])
    assert cos.min() > 0.98, cos
