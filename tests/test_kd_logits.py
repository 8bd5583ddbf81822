"""The KD term's teacher logits are the Grad-CAM pass's: one teacher pass per batch, whose logits
equal a plain forward of the same network on the same input under the same precision."""

from __future__ import annotations

import torch

from kdnb.engine.config import TEACHER, make_config
from kdnb.engine.data import make_synthetic, plan_epoch
from kdnb.engine.speedups import autocast
from kdnb.engine.step import CohortStep, build_stepper, prepare_teacher_for
from kdnb.method.masks import teacher_forwards
from kdnb.method.models import build_model

CPU = torch.device("cpu")


def _teacher(cfg):
    torch.manual_seed(0)
    tcfg = make_config(TEACHER, "smoke", 0)
    teacher = build_model(tcfg.arch, cbam=True, width=tcfg.width).eval().requires_grad_(False)
    return prepare_teacher_for(cfg, teacher, CPU)


def test_grad_cam_pass_logits_equal_a_plain_teacher_forward():
    cfg = make_config("kd_fa_at", "smoke", 0)
    teacher = _teacher(cfg)
    data = make_synthetic(32, 10)
    x = data.normalize(data.train_x[:16]).contiguous(memory_format=torch.channels_last)
    y = data.train_y[:16]
    key = ("layer3", "gradcam")
    with autocast(CPU, cfg.amp):
        logits, _, cam = teacher_forwards(teacher, x, [key], y)[key]
        with torch.no_grad():
            plain = teacher(x)
    assert cam is not None
    assert logits.dtype == plain.dtype and torch.equal(logits, plain)


def test_a_cohort_step_runs_the_teacher_once_for_kd_and_the_masks():
    """kd and kd_fa_at in one cohort: the teacher's stem runs once per step (the Grad-CAM pass),
    and the KD term receives exactly the logits that pass computed."""
    cfgs = [make_config(c, "smoke", 0, {"batch_size": 16}) for c in ("kd", "kd_fa_at")]
    teacher = _teacher(cfgs[0])
    steppers = [build_stepper(c, teacher, CPU, steps_per_epoch=2, teacher_prepared=True) for c in cfgs]
    data = make_synthetic(32, 10)
    step = CohortStep(steppers, teacher, data.train_x, data.train_y, CPU)
    stems, seen = [], []
    hook = teacher.stem.register_forward_hook(lambda *a: stems.append(1))
    for s in steppers:
        real = s.loss

        def spy(s_logits, s_feats, y, t_logits, *rest, _real=real):
            seen.append(t_logits)
            return _real(s_logits, s_feats, y, t_logits, *rest)

        s.loss = spy
    step.start_epoch(plan_epoch(32, 16, torch.Generator().manual_seed(0)))
    step()
    hook.remove()
    assert len(stems) == 1  # one teacher pass for both members, KD and masks alike
    assert seen[0] is seen[1]  # both KD terms read the logits of the one (Grad-CAM) pass


def test_the_no_cam_entry_equals_a_pass_of_its_own():
    """The ``None`` entry reused from a cam pass equals, bit for bit, the one a pass without cams
    computes (logits and every stage's features), in the run's precision and in fp32."""
    cfg = make_config("kd_fa_at", "smoke", 0)
    teacher = _teacher(cfg)
    data = make_synthetic(32, 10)
    x = data.normalize(data.train_x[:16]).contiguous(memory_format=torch.channels_last)
    y = data.train_y[:16]
    for amp in (cfg.amp, False):
        with autocast(CPU, amp):
            alone = teacher_forwards(teacher, x, [None], y)[None]
            for stage in ("layer2", "layer3"):
                shared = teacher_forwards(teacher, x, [None, (stage, "gradcam")], y)[None]
                assert torch.equal(alone[0], shared[0]), (amp, stage)
                assert alone[1].keys() == shared[1].keys() and shared[2] is None
                assert all(torch.equal(alone[1][k], shared[1][k]) for k in alone[1]), (amp, stage)
