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
        self.events: list[str] = []  # "warm_up", "capture", "replay" in the order they happened

    def warm_up(self, fn) -> None:
        self.warmed += 1
        self.events.append("warm_up")
        fn()

    def capture(self, fn):
        self.captured += 1
        self.events.append("capture")
        owner = fn.__self__
        bound = _addresses(owner)
        fake = self

        class Graph:
            def replay(self) -> None:
                assert _addresses(owner) == bound, "a buffer the captured step uses was replaced"
                fake.replayed += 1
                fake.events.append("replay")
                fake.replay_body(fn)

        return Graph()

    def replay_body(self, fn) -> None:
        fn()


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


_EAGER: dict = {}


def _eager(configs):
    """The eager run of ``configs`` (computed once per module: the fallback tests compare with it)."""
    if configs not in _EAGER:
        _EAGER[configs] = _train(*_cohort(configs))
    return _EAGER[configs]


def test_warm_up_then_one_capture_then_replays_in_that_order():
    """GRAPH_WARMUP real steps on the side stream, one capture (which runs nothing), then only
    replays, the first right after the capture (the capture's own step)."""
    fake = FakeGraphs()
    _train(*_cohort(("baseline",), fake), epochs=1)
    assert fake.events == ["warm_up"] * GRAPH_WARMUP + ["capture"] + ["replay"] * (STEPS - GRAPH_WARMUP)


def _python_state(steppers) -> list:
    """What a replay relies on outside the graph: the parameters (values and addresses), the
    optimisers' momentum buffers (values and addresses), learning rates and schedule steps."""
    out = []
    for s in steppers:
        params = [p for g in s.opt.param_groups for p in g["params"]]
        out.append([(p.data_ptr(), p.detach().clone()) for p in params])
        out.append([(st["momentum_buffer"].data_ptr(), st["momentum_buffer"].clone())
                    for st in (s.opt.state[p] for p in params) if st.get("momentum_buffer") is not None])
        out.append([g["lr"] for g in s.opt.param_groups])
        out.append(None if s.sched is None else s.sched.last_epoch)
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class WatchingGraphs(FakeGraphs):
    """Checks that a replay leaves the state outside the graph as it was, and that the parameters
    and momentum buffers stay at the addresses they had at capture."""

    def __init__(self, steppers) -> None:
        super().__init__()
        self.steppers, self.at_capture = steppers, None

    def capture(self, fn):
        self.at_capture = _python_state(self.steppers)
        return super().capture(fn)

    def replay_body(self, fn) -> None:
        before = _python_state(self.steppers)
        addresses = [[ptr for ptr, _ in group] for group in before[:2]]
        assert addresses == [[ptr for ptr, _ in group] for group in self.at_capture[:2]]
        fn()
        assert _same(_python_state(self.steppers), before), "a replayed step changed state outside the graph"


def test_a_replay_changes_nothing_outside_the_graph():
    """Optimiser state, learning rate, LR schedule step and parameters change only in the updates
    (after the step, uncaptured); the parameters and momentum buffers keep their captured addresses."""
    step, steppers = _cohort(("kd_at",), None, {"schedule": "onecycle"})
    watch = WatchingGraphs(steppers)
    step = CohortStep(steppers, step.teacher, step.train_x, step.train_y, CPU, graphs=True, runtime=watch)
    _train(step, steppers, epochs=1)
    assert watch.replayed == STEPS - GRAPH_WARMUP
    assert all(s.sched.last_epoch == STEPS for s in steppers)  # the schedule stepped once per step


class FailingGraphs(FakeGraphs):
    """A runtime whose ``phase`` fails at its ``k``-th call after doing part of the step's work
    (the worst case: the step's statistics, counter, BatchNorm state and gradients changed)."""

    def __init__(self, phase: str, k: int) -> None:
        super().__init__()
        self.phase, self.k, self.calls = phase, k, 0

    def _maybe_fail(self, fn) -> None:
        self.calls += 1
        if self.calls == self.k:
            fn()
            raise RuntimeError(f"CUDA error: fake {self.phase} failure\nsecond line")

    def warm_up(self, fn) -> None:
        if self.phase == "warm_up":
            self._maybe_fail(fn)
        super().warm_up(fn)

    def capture(self, fn):
        if self.phase == "capture":
            self._maybe_fail(fn)
        return super().capture(fn)

    def replay_body(self, fn) -> None:
        if self.phase == "replay":
            self._maybe_fail(fn)
        fn()


@pytest.mark.parametrize("phase,k", [("warm_up", 2), ("capture", 1), ("replay", 6)])
def test_a_failing_graph_falls_back_to_the_same_eager_step(phase, k, capsys):
    """Whatever part of the graph runtime fails, the run goes on eager after one warning line and
    ends with the weights and statistics of a run that was eager throughout, bit for bit."""
    configs = ("baseline", "kd_fa")
    eager_w, eager_s = _eager(configs)
    capsys.readouterr()
    fake = FailingGraphs(phase, k)
    step, steppers = _cohort(configs, fake)
    graph_w, graph_s = _train(step, steppers)
    assert fake.calls >= k  # the failure happened
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "CUDA graph" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"kdnb: warning: CUDA graph {phase.replace('_', '-')} failed (RuntimeError: CUDA error")
    assert not step.graphs and step.graph is None and all(s.graph_failed for s in steppers)
    for a, b in zip(eager_w, graph_w):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(eager_s, graph_s):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    # a later group of these steppers (a member left) does not try graphs again
    assert not CohortStep(steppers[:1], step.teacher, step.train_x, step.train_y, CPU, graphs=True,
                          runtime=FakeGraphs()).graphs


def test_an_error_of_the_step_itself_is_raised_not_hidden_by_the_fallback(capsys):
    """A step that fails eager too (a fault of the model, not of the graph) raises its own error,
    and no warning blames the graph."""
    step, (s,) = _cohort(("baseline",), FakeGraphs())
    step.start_epoch(plan_epoch(N, BATCH, torch.Generator().manual_seed(0)))

    def broken(*args, **kwargs):
        raise ValueError("the model's own fault")

    s.forward = broken
    with pytest.raises(ValueError, match="own fault"):
        step()
    assert "CUDA graph" not in capsys.readouterr().err


def test_the_teacher_step_is_captured_too():
    """train() trains the teacher as a cohort of one stepper without a teacher: with graphs on it
    is warmed up, captured and replayed like a student's step, with the same result as eager."""
    def teacher_step(runtime=None):
        cfg = make_config(TEACHER, "smoke", 0, {"batch_size": BATCH})
        st = build_stepper(cfg, None, CPU, steps_per_epoch=STEPS)
        data = make_synthetic(N, 10)
        return CohortStep([st], None, data.train_x, data.train_y, CPU, graphs=runtime is not None,
                          runtime=runtime), [st]

    eager_w, _ = _train(*teacher_step(), epochs=1)
    fake = FakeGraphs()
    step, steppers = teacher_step(fake)
    assert step.graphs
    graph_w, _ = _train(step, steppers, epochs=1)
    assert (fake.captured, fake.replayed) == (1, STEPS - GRAPH_WARMUP)
    for k in eager_w[0]:
        assert torch.equal(eager_w[0][k], graph_w[0][k]), k


def test_the_paper_profile_turns_graphs_on_and_a_setting_turns_them_off():
    """Graphs are the paper profile's default (the teacher's too), independent of any benchmark;
    --set cuda_graphs=false turns them off, and the smaller profiles keep them off."""
    assert make_config("kd_fa_at", "paper", 0).cuda_graphs
    assert make_config(TEACHER, "paper", 0).cuda_graphs
    assert not make_config("kd_fa_at", "paper", 0, {"cuda_graphs": "false"}).cuda_graphs
    assert not make_config("kd_fa_at", "smoke", 0).cuda_graphs and not make_config("kd", "cpu", 0).cuda_graphs


def test_a_member_stopping_early_makes_the_smaller_group_capture_anew(tmp_path, monkeypatch):
    """train_cohort builds a new CohortStep when its group changes: after one member stops early
    (patience 1 against a validation loss made to rise), the remaining member warms up and captures
    its own graph; both runs end exactly as in an eager cohort."""
    import kdnb.engine.train as train_mod
    from kdnb.engine.runs import BEST_FILE, TIMING_FIELDS, load_torch
    from kdnb.engine.train import train_cohort

    real_evaluate = train_mod.evaluate
    calls = [0]

    def rising(*args, **kwargs):  # each validation worse than the last: early stopping after `patience`
        loss, acc = real_evaluate(*args, **kwargs)
        calls[0] += 1
        return loss + calls[0], acc

    monkeypatch.setattr(train_mod, "evaluate", rising)
    over = {"epochs": 3, "cuda_graphs": True}
    cfgs = [make_config("baseline", "smoke", 0, {**over, "patience": 1}),
            make_config("baseline", "smoke", 0, {**over, "patience": 3, "name": "late"})]
    eager = train_cohort(cfgs, tmp_path / "eager", progress=False)  # on a CPU cuda_graphs is a no-op
    calls[0] = 0
    made: list[tuple[int, FakeGraphs]] = []

    real_make = train_mod.make_cohort_step

    def with_fake(steppers, *args, **kwargs):
        fake = FakeGraphs()
        made.append((len(steppers), fake))
        return real_make(steppers, *args, **kwargs, runtime=fake)

    monkeypatch.setattr(train_mod, "make_cohort_step", with_fake)
    graphed = train_cohort(cfgs, tmp_path / "graphed", progress=False)
    assert [r.metrics["stopped_early"] for r in graphed] == [True, False]
    assert [len(r.history) for r in graphed] == [2, 3]
    assert [n for n, _ in made] == [2, 1]  # one step per group, the second for the member left
    assert all(f.events[:GRAPH_WARMUP + 1] == ["warm_up"] * GRAPH_WARMUP + ["capture"] for _, f in made)
    assert [f.captured for _, f in made] == [1, 1]
    strip = lambda h: [{k: v for k, v in e.items() if k not in TIMING_FIELDS} for e in h]  # noqa: E731
    for a, b in zip(eager, graphed):
        assert strip(a.history) == strip(b.history)
        assert a.metrics["test_acc"] == b.metrics["test_acc"]
        wa, wb = load_torch(a.run_dir / BEST_FILE)["model"], load_torch(b.run_dir / BEST_FILE)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
