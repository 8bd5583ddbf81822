"""CUDA-only checks, run by the device check (tools/device_check.sh) on a GPU; skipped elsewhere.

Their CPU-side counterparts: tests/test_engine_sync.py (host reads per step) and
tests/test_engine_train.py (resume).
"""

from __future__ import annotations

import pytest
import torch

from kdnb.engine.config import STUDENT_CONFIGS, TEACHER, make_config
from kdnb.engine.data import make_synthetic, plan_epoch
from kdnb.engine.step import CohortStep, build_stepper, prepare_teacher_for
from kdnb.engine.train import train
from kdnb.method.masks import teacher_forwards
from kdnb.method.models import build_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def test_resume_on_cuda(tmp_path):
    """A run interrupted after one epoch resumes on CUDA (the generator states stay on the CPU)."""
    cfg = make_config("baseline", "smoke", 0, {"epochs": 2, "patience": 2, "device": "cuda"})
    first = train(cfg, tmp_path / "split", progress=False, max_epochs=1)
    assert not first.metrics["finished"]
    resumed = train(cfg, tmp_path / "split", progress=False)
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert resumed.metrics["finished"] and len(resumed.history) == 2
    # cuDNN may choose other kernels per process, so equal up to float noise, not bit for bit
    for a, b in zip(resumed.history, whole.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2)


# Every configuration eager; compiled, the one with every piece (compiling costs ~30 s per case); the
# random mask controls (host-drawn, copied to the device from pinned memory without blocking).
CASES = ([(c, False, {}) for c in (TEACHER, *STUDENT_CONFIGS)] + [("kd_fa_at", True, {})]
         + [("kd_fa_at", False, {"mask_mode": m}) for m in ("random", "random_matched")])


@pytest.mark.parametrize(("config", "compiled", "overrides"), CASES,
                         ids=[f"{c}-{'compiled' if k else 'eager'}" + "".join(f"-{v}" for v in o.values())
                              for c, k, o in CASES])
def test_training_step_never_waits_for_the_host(config, compiled, overrides):
    """Steps with device-resident batches and draws run under sync-debug mode "error"."""
    cfg = make_config(config, "smoke", 0, {"device": "cuda", "compile": compiled, **overrides})
    teacher = None
    if cfg.needs_teacher:
        tcfg = make_config(TEACHER, "smoke", 0)
        teacher = build_model(tcfg.arch, cbam=True, width=tcfg.width).to(CUDA).eval().requires_grad_(False)
    stepper = build_stepper(cfg, teacher, CUDA, steps_per_epoch=20)
    data = make_synthetic(64 * 8, 10)
    x, y = data.train_x.to(CUDA), data.train_y.to(CUDA)
    plan = plan_epoch(len(y), cfg.batch_size, torch.Generator().manual_seed(0)).to(CUDA)
    for i in range(3):  # warm-up: compilation and cuDNN autotuning may synchronise
        stepper(x[plan.index[i]], y[plan.index[i]], (plan.offsets[i], plan.flips[i]))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(3, len(plan)):
            total, _, _ = stepper(x[plan.index[i]], y[plan.index[i]], (plan.offsets[i], plan.flips[i]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(total).item()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cohort_step_never_waits_for_the_host(compiled):
    """A cohort step (one shared teacher pass, then each student's update, as the loop runs it)
    under sync-debug mode "error"."""
    cfgs = [make_config(c, "smoke", 0, {"device": "cuda", "compile": compiled}) for c in STUDENT_CONFIGS]
    tcfg = make_config(TEACHER, "smoke", 0)
    teacher = build_model(tcfg.arch, cbam=True, width=tcfg.width).to(CUDA).eval().requires_grad_(False)
    prepared = prepare_teacher_for(cfgs[1], teacher, CUDA)
    steppers = [build_stepper(c, prepared if c.needs_teacher else None, CUDA, steps_per_epoch=20,
                              teacher_prepared=True) for c in cfgs]
    cam_keys = sorted({s.cam_key for s in steppers if s.teacher is not None}, key=str)
    data = make_synthetic(64 * 8, 10)
    x_all, y_all = data.train_x.to(CUDA), data.train_y.to(CUDA)
    plan = plan_epoch(len(y_all), 64, torch.Generator().manual_seed(0)).to(CUDA)

    def step(i):
        y = y_all[plan.index[i]]
        x = steppers[0].prepare(x_all[plan.index[i]], (plan.offsets[i], plan.flips[i]))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs = teacher_forwards(prepared, x, cam_keys, y)
        return [s.update(x, y, outs.get(s.cam_key) if s.teacher is not None else None)[0] for s in steppers]

    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(3, len(plan)):
            totals = step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(t).item() for t in totals)


def test_compiled_bf16_teacher_trains_on_cuda():
    """The compiled CBAM teacher under bf16 autocast gives finite, falling losses on CUDA."""
    cfg = make_config(TEACHER, "paper", 0, {"device": "cuda", "width": 0.25, "batch_size": 64})
    stepper = build_stepper(cfg, None, CUDA, steps_per_epoch=100)
    data = make_synthetic(64, 10)
    x, y = data.train_x.to(CUDA), data.train_y.to(CUDA)
    draws = (torch.full((64, 2), 4, device=CUDA), torch.zeros(64, dtype=torch.bool, device=CUDA))
    losses = [float(stepper(x, y, draws)[0]) for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses


def _cohort(graphs: bool, configs=("baseline", "kd", "kd_fa_at"), compiled: bool = False):
    """A CohortStep of fresh students (seeded alike) over synthetic data, as the training loop builds it."""
    cfgs = [make_config(c, "smoke", 0, {"device": "cuda", "compile": compiled, "cuda_graphs": graphs})
            for c in configs]
    torch.manual_seed(0)
    tcfg = make_config(TEACHER, "smoke", 0)
    teacher = build_model(tcfg.arch, cbam=True, width=tcfg.width).to(CUDA).eval().requires_grad_(False)
    prepared = prepare_teacher_for(cfgs[0], teacher, CUDA)
    steppers = [build_stepper(c, prepared if c.needs_teacher else None, CUDA, steps_per_epoch=8,
                              teacher_prepared=True) for c in cfgs]
    data = make_synthetic(64 * 8, 10)
    step = CohortStep(steppers, prepared, data.train_x.to(CUDA), data.train_y.to(CUDA), CUDA, graphs)
    return step, steppers


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_graphed_cohort_trains_as_the_eager_one(compiled):
    """Two epochs of a cohort replayed as a CUDA graph reach the same weights and statistics as
    the same steps taken eagerly (up to cuDNN's run-to-run noise)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    results = []
    for graphs in (False, True):
        step, steppers = _cohort(graphs, compiled=compiled)
        assert step.graphs is graphs
        gen = torch.Generator().manual_seed(0)
        sums = []
        for _ in range(2):
            step.start_epoch(plan_epoch(64 * 8, 64, gen))
            for _ in range(8):
                step()
            sums.append([s.sums.clone() for s in steppers])
        assert (step.graph is not None) is graphs
        results.append(([dict(s.student.state_dict()) for s in steppers], sums))
    (eager_w, eager_s), (graph_w, graph_s) = results
    for a, b in zip(eager_w, graph_w):
        for k in a:
            torch.testing.assert_close(b[k].float(), a[k].float(), rtol=2e-2, atol=2e-3, msg=k)
    for ea, ga in zip(eager_s, graph_s):
        for a, b in zip(ea, ga):
            torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-2)


def test_graphed_cohort_step_never_waits_for_the_host():
    """After capture, a step is one replay plus the optimisers' updates: no host synchronisation."""
    step, _ = _cohort(True, configs=("baseline", "kd", "kd_fa", "kd_at", "kd_fa_at"))
    step.start_epoch(plan_epoch(64 * 8, 64, torch.Generator().manual_seed(0)))
    for _ in range(4):  # warm-up and capture
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.graph is not None


def test_training_with_cuda_graphs_resumes(tmp_path):
    """train() with cuda_graphs: finite history, and a run interrupted after one epoch resumes."""
    cfg = make_config("kd_fa_at", "smoke", 0, {"epochs": 2, "patience": 2, "device": "cuda", "cuda_graphs": True})
    tcfg = make_config(TEACHER, "smoke", 0, {"device": "cuda", "epochs": 1})
    train(tcfg, tmp_path, progress=False)
    first = train(cfg, tmp_path, progress=False, max_epochs=1)
    assert not first.metrics["finished"]
    done = train(cfg, tmp_path, progress=False)
    assert done.metrics["finished"] and len(done.history) == 2
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in done.history)
    assert all(h["mask_share"] > 0 for h in done.history)
