"""The benchmark command keeps working, and the training step's Grad-CAM is the real Grad-CAM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdnb.bench import VARIANTS
from kdnb.engine.config import make_config
from kdnb.engine.data import make_synthetic
from kdnb.engine.speedups import amp_active, autocast
from kdnb.engine.step import build_stepper
from kdnb.method.masks import gradcam
from kdnb.method.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine makes 2 OpenMP threads crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_bench_command_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kdnb", "bench", "--profile", "smoke", "--steps", "2", "--repeats", "1",
         "--device", "cpu", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # see one_thread; the command itself is what is tested
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == set(VARIANTS)
    for name, r in report["variants"].items():
        assert r["images_per_s"] > 0 and r["ms_per_step"] > 0, name
        assert r["rel_reference"] > 0, name
        assert len(r["rounds_ms_per_step"]) == 1 and r["rounds_ms_per_step"][0] > 0, name
    ratios = report["ratios"]
    assert ratios["baseline_over_reference_throughput"] > 0
    assert ratios["kd_fa_at_over_kd_step_time"] > 0
    assert ratios["cohort_over_kd_step_time"] > 0 and ratios["cohort_over_sum_of_solo_step_time"] > 0
    meta = report["meta"]
    assert meta["batch_size"] == 64 and meta["steps"] == 2 and meta["repeats"] == 1
    assert meta["student"]["width"] == 0.125 and meta["teacher"]["arch"] == "resnet50" and meta["teacher"]["cbam"]
    for text in ("kdnb baseline / reference (throughput)", "kd_fa_at / kd (step time)", "images/s", "threads"):
        assert text in proc.stdout


def _random_teacher(seed: int = 0) -> torch.nn.Module:
    tcfg = make_config("teacher", "smoke")
    torch.manual_seed(seed)
    teacher = build_model(tcfg.arch, cbam=tcfg.cbam, stem=tcfg.stem, width=tcfg.width)
    # A few train-mode passes give the BatchNorms non-trivial running statistics.
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        for _ in range(2):
            teacher.train()(x)
    return teacher.eval().requires_grad_(False)


def _naive_gradcam(model: torch.nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor) -> torch.Tensor:
    """Textbook Grad-CAM: full forward with a hook, full backward from the target logits."""
    acts = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            score = logits.gather(1, target.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, acts["a"])
    finally:
        handle.remove()
    a = acts["a"].detach()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak.clamp_min(1e-30), torch.zeros_like(cam))


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_masked_step_gradcam_equals_gradcam(one_thread, amp):
    cfg = make_config("kd_fa_at", "smoke", overrides={"device": "cpu", "amp": amp})
    assert cfg.needs_cam and cfg.mask_mode == "gradcam"
    teacher = _random_teacher()
    stepper = build_stepper(cfg, teacher, torch.device("cpu"), steps_per_epoch=10)
    assert stepper.teacher is not teacher  # the step's teacher is a BN-folded private copy
    data = make_synthetic(64, 10)
    xb, y = data.train_x[:32], data.train_y[:32]

    before = stepper.gen.get_state()
    stepper(xb, y)
    after = stepper.gen.get_state()
    cam = stepper.last_cam
    assert cam is not None and cam.shape == (32, 8, 8)  # layer3 of a CIFAR-stem ResNet on 32×32

    # The exact augmented input of that step: the same generator state through the same prepare.
    stepper.gen.set_state(before)
    x = stepper.prepare(xb)
    assert torch.equal(stepper.gen.get_state(), after)  # prepare consumed exactly the step's draws
    with autocast(torch.device("cpu"), amp):
        expected = gradcam(stepper.teacher, x, cfg.cam_stage, y)
    torch.testing.assert_close(cam, expected, rtol=1e-6, atol=1e-7)
    assert (cam.flatten(1).amax(1) > 0).float().mean() > 0.5  # not a vacuous all-zero comparison
    assert float(cam.max()) == 1.0 and float(cam.min()) >= 0.0
    # The folded teacher's cam is the original teacher's (fp32: to rounding; bf16: to bf16 precision).
    original = gradcam(teacher, x, cfg.cam_stage, y)
    if amp_active(torch.device("cpu"), amp):
        live = (cam.flatten(1).amax(1) > 0) & (original.flatten(1).amax(1) > 0)
        assert live.float().mean() > 0.5  # a near-zero cam may round to all-zero in bf16
        assert F.cosine_similarity(cam.flatten(1)[live], original.flatten(1)[live]).mean() > 0.99
    else:
        torch.testing.assert_close(cam, original, rtol=1e-4, atol=1e-5)
        # And kdnb's cheap Grad-CAM (backward only from the target logits to the stage) is textbook Grad-CAM.
        torch.testing.assert_close(cam, _naive_gradcam(teacher, x, cfg.cam_stage, y), rtol=1e-4, atol=1e-5)
    # The training step left the frozen teacher without parameter gradients.
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in stepper.teacher.parameters())
