"""The logic of a captured training step (kdnb.engine.step.CohortStep with CUDA graphs), on a CPU.

A CUDA graph records a step's kernels once, with the addresses of every tensor they touch, and
replays them without running Python. ``FakeGraphs`` stands in for kdnb.engine.train.CudaGraphs with those
semantics as far as a CPU can show them: capture records without running the step, and every
replay first checks that each buffer the step reads or writes (the epoch plan, the step counter,
the statistics) is still the storage it was at capture, then runs the step. The real capture runs
in tests/test_cuda.py on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from kdnb.engine.config import TEACHER, make_config
from kdnb.engine.data import make_synthetic, plan_epoch
from kdnb.engine.step import GRAPH_WARMUP, CohortStep, build_stepper, prepare_teacher_for
from kdnb.method.models import build_model

CPU = torch.device("cpu")
N, BATCH, STEPS = 8 * 16, 16, 8


def _addresses(step: CohortStep) -> list[int]:
    bufs = [step.counter, step.plan.index, step.plan.offsets, step.plan.flips]
    for s in step.steppers:
        bufs += [s.sums, s.bad, s.mask_share, s.cam_short_share]
    return [b.data_ptr() for b in bufs]


class FakeGraphs:
    def __init__(self) -> None:
        self.warmed = self.captured = self.replayed = 0

    def warm_up(self, fn) -> None:
        self.warmed += 1
        fn()

    def capture(self, fn):
        self.captured += 1
        owner = fn.__self__
        bound = _addresses(owner)
        fake = self

        class Graph:
            def replay(self) -> None:
                assert _addresses(owner) == bound, "a buffer the captured step uses was replaced"
                fake.replayed += 1
                fn()

        return Graph()


def _cohort(configs, runtime=None, overrides=None):
    over = {"batch_size": BATCH, **(overrides or {})}
    cfgs = [make_config(c, "smoke", 0, over) for c in configs]
    torch.manual_seed(0)
    tcfg = make_config(TEACHER, "smoke", 0)
    teacher = build_model(tcfg.arch, cbam=True, width=tcfg.width).eval().requires_grad_(False)
    prepared = prepare_teacher_for(cfgs[0], teacher, CPU)
    steppers = [build_stepper(c, prepared if c.needs_teacher else None, CPU, steps_per_epoch=STEPS,
                              teacher_prepared=True) for c in cfgs]
    data = make_synthetic(N, 10)
    return CohortStep(steppers, prepared, data.train_x, data.train_y, CPU, graphs=runtime is not None,
                      runtime=runtime), steppers


def _train(step: CohortStep, steppers, epochs: int = 2):
    gen = torch.Generator().manual_seed(0)
    sums = []
    for _ in range(epochs):
        step.start_epoch(plan_epoch(N, BATCH, gen))
        for _ in range(STEPS):
            step()
        sums.append([s.sums.clone() for s in steppers] + [s.mask_share.clone() for s in steppers])
    return [s.student.state_dict() for s in steppers], sums


def test_captured_step_trains_exactly_as_the_eager_one():
    """Warm-up steps, then one capture (which runs nothing) replayed at once and at every later
    step, across an epoch boundary: the same weights and statistics as the eager steps, bit for bit."""
    configs = ("baseline", "kd", "kd_fa_at")
    eager_w, eager_s = _train(*_cohort(configs))
    fake = FakeGraphs()
    step, steppers = _cohort(configs, fake)
    assert step.graphs
    graph_w, graph_s = _train(step, steppers)
    assert (fake.warmed, fake.captured, fake.replayed) == (GRAPH_WARMUP, 1, 2 * STEPS - GRAPH_WARMUP)
    for a, b in zip(eager_w, graph_w):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    for a, b in zip(eager_s, graph_s):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_a_replayed_step_names_the_first_non_finite_step():
    """The first bad step is the device counter's value (1-based), as the loop reports it: a weight
    poisoned in place after step 5 (a replay sees it) makes step 6 the first non-finite one."""
    step, (s,) = _cohort(("baseline",), FakeGraphs())
    step.start_epoch(plan_epoch(N, BATCH, torch.Generator().manual_seed(0)))
    for i in range(1, STEPS + 1):
        step()
        if i == 5:
            with torch.no_grad():
                next(s.student.parameters()).fill_(float("nan"))
    assert s.bad.tolist()[-1] == 6  # the total
    assert step.graph is not None  # the poisoned steps were replays


@pytest.mark.parametrize("mode", ["random", "random_matched"])
def test_masks_drawn_on_the_host_are_never_captured(mode):
    """A host draw cannot be replayed by a graph: a cohort with such a member steps eagerly."""
    step, _ = _cohort(("kd", "kd_fa_at"), FakeGraphs(), {"mask_mode": mode})
    assert not step.graphs and step.runtime is None


def test_graphs_ask_for_cuda():
    """On a CPU the switch is a no-op: no runtime, eager steps."""
    cfg = make_config("baseline", "smoke", 0, {"cuda_graphs": True})
    step = CohortStep([build_stepper(cfg, None, CPU, steps_per_epoch=STEPS)], None, torch.zeros(N, 3, 32, 32,
                      dtype=torch.uint8), torch.zeros(N, dtype=torch.long), CPU, graphs=cfg.cuda_graphs)
    assert not step.graphs and step.runtime is None
