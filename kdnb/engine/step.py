"""One training step: a seeded student with its objective, optimiser and generators (:class:`Stepper`),
and the step a training loop takes for a group of students of one seed (:class:`CohortStep`): one
augmentation and one teacher pass per batch, each student's update, optionally as a CUDA graph."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..method.mask_sources import MASK_SOURCES, make_masks
from ..method.masks import cam_key, cam_short, teacher_forwards
from ..method.models import build_model
from ..method.objective import Objective, term_names
from .compile_cache import first_compiled_call, is_compile_failure, one_line
from .config import RunConfig
from .data import EpochPlan, apply_augmentation, augment, normalize
from .datasets import DATASETS
from .errors import TrainingError
from .speedups import CompilerUnavailable, amp_active, autocast, ensure_compiled_bf16_correct, prepare_teacher

TeacherOut = tuple[torch.Tensor, dict[str, torch.Tensor], "torch.Tensor | None"]  # logits, stage features, cam


def build_student(cfg: RunConfig, num_classes: int | None = None) -> nn.Module:
    """The network a run trains (student or teacher), from its settings (as many classes as its dataset)."""
    num_classes = DATASETS[cfg.dataset].num_classes if num_classes is None else num_classes
    return build_model(cfg.arch, num_classes, cbam=cfg.cbam, stem=cfg.stem, width=cfg.width)


# ---------------------------------------------------------------- one step
def _make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_frac)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


class Stepper:
    """One optimisation step: batch augmentation → student (and frozen teacher) forward → masks →
    objective → backward → SGD. Shared by :func:`train` and the benchmark, so both measure the same code.

    Nothing here synchronises the device; the teacher's Grad-CAM (when masks need it) reuses the
    teacher forward that KD needs anyway. ``last_cam`` keeps the latest batch's cam for inspection.
    """

    def __init__(self, cfg: RunConfig, student: nn.Module, objective: Objective, teacher: nn.Module | None,
                 opt: torch.optim.Optimizer, sched, gen: torch.Generator, mask_gen: torch.Generator,
                 device: torch.device) -> None:
        self.cfg, self.student, self.objective, self.teacher = cfg, student, objective, teacher
        self.opt, self.sched, self.gen, self.mask_gen, self.device = opt, sched, gen, mask_gen, device
        # Compiled callables share the modules' parameters. The objective is compiled on its own
        # (eager, the FA connector and the loss maps cost a fifth of a kd_fa_at step: 283 → 229 ms
        # when compiled, profiled at 1 thread).
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        self.forward = torch.compile(student, mode=mode) if cfg.compile else student
        self.loss = torch.compile(objective, mode=mode) if cfg.compile else objective
        self.compiled = cfg.compile  # False once the step fell back to eager (see CohortStep)
        self.graph_failed = False  # a CUDA graph of this stepper failed: its run steps eager from then on
        self.sizes: dict[str, tuple[int, int]] | None = None
        self.last_cam: torch.Tensor | None = None
        # The epoch's running statistics, device tensors updated in place (never rebound, so a
        # captured CUDA graph keeps writing where the loop reads): the objective's terms, total and
        # correct predictions summed over steps; the first step at which each term and the total
        # were non-finite (-1: none); the masks' kept share and the cams' short share, summed.
        self.terms = term_names()
        self.sums = torch.zeros(len(self.terms) + 2, device=device)
        self.bad = torch.full((len(self.terms) + 1,), -1, device=device, dtype=torch.long)
        spec = DATASETS[cfg.dataset]
        self.mean, self.std = spec.mean, spec.std
        self.mask_share = torch.zeros((), device=device)
        self.cam_short_share = torch.zeros((), device=device)  # cam-based masks only

    def new_epoch(self, epoch: int = 1) -> None:
        """Training mode, zeroed epoch statistics (in place) and the objective's schedules for
        ``epoch`` (1-based)."""
        self.student.train()
        self.objective.train()
        self.objective.start_epoch(epoch, self.cfg.epochs)
        for t in (self.sums, self.mask_share, self.cam_short_share):
            t.zero_()
        self.bad.fill_(-1)

    @property
    def graph_safe(self) -> bool:
        """Whether this step may be captured as a CUDA graph: not when its masks are drawn on the host."""
        return not (self.cfg.uses_masks and MASK_SOURCES[self.cfg.mask_mode].host_drawn)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images → float, normalised with the run's dataset's mean/std."""
        return normalize(x, self.mean, self.std)

    def prepare(self, xb: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """uint8 batch → augmented, normalised float batch in the device's preferred layout.

        ``draws``: the batch's crop offsets and flips from an :class:`~kdnb.engine.data.EpochPlan`
        (already on the device); without them they are drawn from the stepper's generator."""
        x = augment(xb, self.gen) if draws is None else apply_augmentation(xb, *draws)
        return self.normalize(x).contiguous(memory_format=torch.channels_last)

    @property
    def cam_key(self) -> tuple[str, str] | None:
        """The (stage, CAM method) this student's masks need (``None``: no cam)."""
        return cam_key(self.cfg.cam_stage, self.cfg.cam) if self.cfg.needs_cam else None

    def __call__(self, xb: torch.Tensor, y: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x = self.prepare(xb, draws)
        teacher_out = None
        if self.teacher is not None:
            with autocast(self.device, self.cfg.amp):
                teacher_out = teacher_forwards(self.teacher, x, (self.cam_key,), y)[self.cam_key]
        return self.update(x, y, teacher_out)

    def update(self, x: torch.Tensor, y: torch.Tensor, teacher_out: TeacherOut | None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Student forward, masks, objective, backward and SGD on a prepared batch ``x``, given the
        teacher's ``(logits, feats, cam)`` for it (computed once per batch for a whole cohort)."""
        out = self.forward_backward(x, y, teacher_out)
        self.apply()
        return out

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, teacher_out: TeacherOut | None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Everything of :meth:`update` but the optimiser's update: the part a CUDA graph captures."""
        cfg = self.cfg
        with autocast(self.device, cfg.amp):
            s_logits, s_feats = self.forward(x, return_features=True)
            t_logits, t_feats, cam = teacher_out if teacher_out is not None else (None, None, None)
            self.last_cam = cam
            masks = None
            if cfg.uses_masks:
                if self.sizes is None:
                    self.sizes = {s: tuple(s_feats[s].shape[-2:]) for s in cfg.stages}
                masks = make_masks(cfg.mask_mode, self.sizes, cam=cam, keep=cfg.keep, cam_type=cfg.cam_type,
                                   batch=len(y), generator=self.mask_gen, device=self.device)
                if masks is not None:  # share of positions the masks keep (a device scalar, no sync; None = all)
                    shares = [torch.ones((), device=self.device) if m is None else m.float().mean() for m in masks.values()]
                    self.mask_share.add_(torch.stack(shares).mean())
                if cfg.needs_cam:  # share of images whose cam is too sparse for `keep` (device scalar, no sync)
                    short = [cam_short(cam, cfg.keep, hw).float().mean() for hw in self.sizes.values()]
                    self.cam_short_share.add_(torch.stack(short).mean())
            total, terms = self.loss(s_logits, s_feats, y, t_logits, t_feats, masks)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        return total, terms, s_logits

    def go_eager(self) -> None:
        """Run the student and objective eager from now on (the same computation, uncompiled)."""
        self.forward, self.loss, self.compiled = self.student, self.objective, False

    def apply(self) -> None:
        """The optimiser's update and the LR schedule's step, outside any CUDA graph (so the
        schedule's learning rate and momentum stay plain numbers)."""
        self.opt.step()
        if self.sched is not None:
            self.sched.step()

    def record(self, total: torch.Tensor, terms: dict[str, torch.Tensor], s_logits: torch.Tensor, y: torch.Tensor,
               step: torch.Tensor) -> None:
        """Add one step's terms, total and correct predictions to the epoch's sums, and note ``step``
        (a device scalar) as the first bad step of any non-finite term: no host read."""
        with torch.no_grad():
            vals = torch.stack([terms[t].detach().float() if t in terms else torch.zeros((), device=self.device)
                                for t in self.terms] + [total.detach().float()])
            self.bad.copy_(torch.where((~torch.isfinite(vals)) & (self.bad < 0), step, self.bad))
            self.sums[:-1] += vals
            self.sums[-1] += (s_logits.argmax(1) == y).sum()


# Warm-up steps before a CUDA graph is captured (compilation, cuDNN autotuning, lazy allocations).
GRAPH_WARMUP = 3


class CudaGraphs:
    """The CUDA calls with which a :class:`CohortStep` warms up, captures and replays its step
    (in one place, so the step's logic can be tested on a CPU with a stand-in)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side = torch.cuda.Stream(device)

    def warm_up(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` for real on a side stream, as capture requires of the steps before it."""
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(self.side):
                fn()
        finally:  # also when fn failed part-way: the fallback's restore must follow its kernels
            torch.cuda.current_stream(self.device).wait_stream(self.side)

    def capture(self, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """Record ``fn``'s kernels without running them; the graph's ``replay()`` runs them."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph



class StepClock:
    """Where a cohort's step time goes: the shared part (batch, augmentation, teacher pass and cams)
    and each member's own forward, backward and update, summed over an epoch.

    A cohort's epoch time is one number for all its members; the cost a configuration adds is in its
    own share. On a CPU the sections are timed with ``perf_counter`` (CPU kernels run synchronously);
    on CUDA with events read once per epoch (no synchronisation per step). A step replayed as one
    CUDA graph cannot be split: :meth:`read` then returns ``None``. The first step of a cohort is not
    timed: it pays one-off costs (kernel selection, allocations, compilation) for every member, and
    they would be charged to whichever member runs first."""

    SHARED = -1

    def __init__(self, device: torch.device, members: int) -> None:
        self.cuda = device.type == "cuda"
        self.members = members
        self.split = True
        self.active = True  # off while a CUDA graph is captured (no events may be recorded then)
        self.warmed = False  # the first step (one-off costs) is not timed
        self._reset()

    def _reset(self) -> None:
        self.shared, self.own, self.steps = 0.0, [0.0] * self.members, 0
        self._events: list[tuple[int, Any, Any]] = []

    def step_done(self) -> None:
        """Count a timed step; the very first one is only a warm-up."""
        if self.warmed and self.active:
            self.steps += 1
        self.warmed = True

    def mark(self) -> Any:
        """A point in the step: a time on the CPU, a recorded event on CUDA (None while inactive)."""
        if not self.active or not self.warmed:
            return None
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, slot: int, start: Any, end: Any) -> None:
        """Charge the section ``start``–``end`` to member ``slot`` (:data:`SHARED`: the shared part)."""
        if start is None or end is None:
            return
        if self.cuda:
            self._events.append((slot, start, end))
            return
        self.add_seconds(slot, end - start)

    def read(self) -> tuple[float, list[float], int] | None:
        """``(shared seconds, [own seconds per member], timed steps)`` since the last read (then
        zeroed), or ``None`` when some step of it could not be split (a CUDA graph replay)."""
        if self.cuda and self._events:
            torch.cuda.synchronize()
            for slot, start, end in self._events:
                self.add_seconds(slot, start.elapsed_time(end) / 1000.0)
        out = (self.shared, list(self.own), self.steps) if self.split else None
        self._reset()
        self.split = True
        return out

    def add_seconds(self, slot: int, seconds: float) -> None:
        if slot == self.SHARED:
            self.shared += seconds
        else:
            self.own[slot] += seconds


class CohortStep:
    """One training step of a group of steppers on the same batch, as ``train_cohort`` takes it:
    the batch gathered and augmented once, one teacher pass (per cam stage needed), then each
    student's forward, backward and statistics; then each optimiser's update.

    The step takes no arguments: it reads the epoch's plan (:meth:`start_epoch`) from device
    buffers at a device step counter, so on CUDA with ``graphs`` it is captured once, after
    :data:`GRAPH_WARMUP` eager steps on a side stream, and then replayed: one launch per step.
    The optimiser updates run after it, uncaptured. Replays write the same tensors the eager step
    would (parameters' gradients, the steppers' statistics), so everything outside reads them as
    usual. ``runtime`` stands in for :class:`CudaGraphs` (tests).

    A warm-up, capture or replay that raises does not end the run: what it changed is put back
    (:class:`_Undo`), the step runs eager (the same computation) and one warning line says so; its
    steppers stay eager for the rest of their run (a later, smaller group does not try again).
    """

    def __init__(self, steppers: list[Stepper], teacher: nn.Module | None, train_x: torch.Tensor,
                 train_y: torch.Tensor, device: torch.device, graphs: bool = False, runtime: Any = None) -> None:
        self.steppers, self.teacher, self.train_x, self.train_y, self.device = steppers, teacher, train_x, train_y, device
        self.cam_keys = sorted({s.cam_key for s in steppers if s.teacher is not None}, key=str)  # None, (stage, cam)
        self.graphs = (graphs and (device.type == "cuda" or runtime is not None)
                       and all(s.graph_safe and not s.graph_failed for s in steppers))
        self.runtime = (runtime or CudaGraphs(device)) if self.graphs else None
        self.counter = torch.zeros((), dtype=torch.long, device=device)  # steps taken this epoch
        self.plan: EpochPlan | None = None  # device buffers, filled in place each epoch
        self.graph: Any = None
        self.warm = 0
        self.clock = StepClock(device, len(steppers))
        self.undo: _Undo | None = None  # saved before each graph step (allocated at the first)
        # The first call compiles (torch.compile is lazy), so it is where a damaged compile cache shows.
        self.first_call = any(s.compiled for s in steppers)

    def start_epoch(self, plan: EpochPlan, epoch: int = 1) -> None:
        """Load the epoch's batch order and augmentation draws into the step's buffers (in place);
        ``epoch`` (1-based) sets the objectives' schedules."""
        plan = plan.to(self.device)
        if self.plan is None:
            self.plan = EpochPlan(*(torch.empty_like(t) for t in (plan.index, plan.offsets, plan.flips)))
        elif self.plan.index.shape != plan.index.shape:
            raise ValueError(f"epoch plans must keep one shape (got {tuple(plan.index.shape)}, "
                             f"had {tuple(self.plan.index.shape)})")
        for buf, t in zip((self.plan.index, self.plan.offsets, self.plan.flips), (plan.index, plan.offsets, plan.flips)):
            buf.copy_(t)
        self.counter.zero_()
        for s in self.steppers:
            s.new_epoch(epoch)

    def _shared(self) -> tuple[torch.Tensor, torch.Tensor, dict[Any, TeacherOut], Any]:
        """The step's shared part: the batch at the device step counter, augmented once, and the
        teacher pass per cam key; with the clock's mark at its end."""
        clock = self.clock
        t0 = clock.mark()
        row = self.counter.view(1)
        idx = self.plan.index.index_select(0, row)[0]
        draws = (self.plan.offsets.index_select(0, row)[0], self.plan.flips.index_select(0, row)[0])
        self.counter.add_(1)  # now the 1-based number of this step
        lead = self.steppers[0]
        y = self.train_y[idx]
        x = lead.prepare(self.train_x[idx], draws)
        outs: dict[Any, TeacherOut] = {}
        if self.teacher is not None and self.cam_keys:
            with autocast(self.device, lead.cfg.amp):
                outs = self._teacher_pass(x, y)
        t = clock.mark()
        clock.add(clock.SHARED, t0, t)
        return x, y, outs, t

    def _teacher_pass(self, x: torch.Tensor, y: torch.Tensor) -> dict[Any, TeacherOut]:
        return teacher_forwards(self.teacher, x, self.cam_keys, y)

    def _body(self) -> None:
        clock = self.clock
        x, y, outs, t = self._shared()
        for i, s in enumerate(self.steppers):
            total, terms, s_logits = s.forward_backward(x, y, outs.get(s.cam_key) if s.teacher is not None else None)
            s.record(total, terms, s_logits, y, self.counter)
            t, t0 = clock.mark(), t
            clock.add(i, t0, t)

    def __call__(self) -> None:
        if self.first_call:
            forced = any(s.cfg.compile_forced for s in self.steppers)
            first_compiled_call(self._run, self._snapshot(), self._go_eager, forced)
            self.first_call = False
        else:
            self._run()
        self._update()
        self.clock.step_done()

    def _update(self) -> None:
        """Each member's optimiser update (after the step, never captured), timed as its own."""
        clock = self.clock
        for i, s in enumerate(self.steppers):
            t0 = clock.mark()
            s.apply()
            clock.add(i, t0, clock.mark())

    def _run(self) -> None:
        """The step up to the optimisers' updates: eager, or through the graph runtime with the
        eager step as the fallback when the runtime fails."""
        if not self.graphs:
            self._body()
            return
        if self.undo is None:
            self.undo = _Undo(self._state_tensors(), self._generators(), self._optimizers())
        self.undo.save()
        try:
            self._graph_step()
        except Exception as exc:
            if is_compile_failure(exc):  # the compiler's, not the graph's: first_compiled_call's to handle
                raise
            phase = "replay" if self.graph is not None else "capture" if self.warm >= GRAPH_WARMUP else "warm-up"
            self.undo.restore()
            self.clock.active = True
            self._drop_graphs()
            self._body()  # raises the step's own error if it has one: then no graph is to blame
            names = ", ".join(s.cfg.run_name for s in self.steppers)
            print(f"kdnb: warning: CUDA graph {phase} failed ({one_line(exc)}); {names} train with eager steps "
                  "from here (the same computation, slower)", file=sys.stderr, flush=True)

    def _drop_graphs(self) -> None:
        """Eager steps from now on, for this step and every later one of its steppers."""
        self.graphs, self.graph, self.runtime, self.undo = False, None, None, None
        for s in self.steppers:
            s.graph_failed = True

    def _graph_step(self) -> None:
        """A warm-up, the capture or a replay."""
        if self.graph is not None:
            self.graph.replay()
            self.clock.split = False
        elif self.warm < GRAPH_WARMUP:  # warm-up steps are real steps
            self.runtime.warm_up(self._body)
            self.warm += 1
        else:  # capturing records the step without running it: replay it at once
            self.clock.active = False
            try:
                self.graph = self.runtime.capture(self._body)
            finally:
                self.clock.active = True
            self.graph.replay()
            self.clock.split = False

    def _state_tensors(self) -> list[torch.Tensor]:
        """The tensors a step changes besides the parameters (changed only in the updates, after
        the step) and their gradients: BatchNorm statistics, the epoch's sums, the step counter."""
        tensors = [self.counter]
        for s in self.steppers:
            tensors += [*s.student.buffers(), *s.objective.buffers(), s.sums, s.bad, s.mask_share, s.cam_short_share]
        return tensors

    def _generators(self) -> list[torch.Generator]:
        return [g for s in self.steppers for g in (s.gen, s.mask_gen)]

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """Whose gradients a failed step leaves behind (dropped when it is put back)."""
        return [s.opt for s in self.steppers]

    def _snapshot(self) -> Callable[[], None]:
        """A function putting back what a failed first step may have changed, so its retry is the
        same step (see :class:`_Undo`)."""
        undo = _Undo(self._state_tensors(), self._generators(), self._optimizers())
        undo.save()
        return undo.restore

    def _go_eager(self) -> None:
        """Every student, objective and the shared teacher eager from now on."""
        for s in self.steppers:
            s.go_eager()
        for teacher in {id(t): t for t in (self.teacher, *(s.teacher for s in self.steppers)) if t is not None}.values():
            uncompile(teacher)


class _Undo:
    """What a step changes besides the parameters, saved so that a step that failed part-way can be
    put back and retried as the same step: ``tensors`` (see :meth:`CohortStep._state_tensors`), the
    generators' and torch's CPU random states; restoring also drops the gradients (the retry's
    backward writes them afresh). The copies are allocated once, so saving before every graph step
    costs one fused device copy, no allocation."""

    def __init__(self, tensors: list[torch.Tensor], generators: list[torch.Generator],
                 optimizers: list[torch.optim.Optimizer]) -> None:
        self.tensors = [t.detach() for t in tensors]  # views of the same storage, written in place
        self.generators, self.optimizers = generators, optimizers
        self.copies = [t.detach().clone() for t in tensors]
        self.states: list[torch.Tensor] = []
        self.rng: torch.Tensor | None = None

    def save(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.copies, self.tensors)
        self.states = [g.get_state() for g in self.generators]
        self.rng = torch.get_rng_state()

    def restore(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, self.copies)
        for g, state in zip(self.generators, self.states):
            g.set_state(state)
        torch.set_rng_state(self.rng)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)


def uncompile(module: nn.Module) -> nn.Module:
    """Undo ``Module.compile`` on ``module`` and its children, in place (the teacher's stages): torch
    keeps the compiled callable in ``_compiled_call_impl``, and without it a module calls eager."""
    for m in module.modules():
        m._compiled_call_impl = None
    return module


_EAGER_WARNED: set[str] = set()


def _check_compiler(cfg: RunConfig, device: torch.device) -> None:
    """Before compiling under bf16 on a CPU, make sure inductor's bf16 kernels are right here.

    When the compiler cannot compile at all (even with a fresh cache), the run goes the way a
    failed first compiled step goes: it stops if the user set compile=true, else it trains eager
    (``cfg.compile`` turns off, so config.json records ``compiled: false``) after one warning line."""
    if cfg.compile and device.type == "cpu" and amp_active(device, cfg.amp):
        try:
            ensure_compiled_bf16_correct()
        except CompilerUnavailable as exc:
            if cfg.compile_forced:
                raise TrainingError(f"compiling failed with a fresh compile cache ({exc}); compile=true was set, "
                                    "so the run stops: rerun with --set compile=false to train eager") from None
            if str(exc) not in _EAGER_WARNED:  # once per process, not once per cohort member
                _EAGER_WARNED.add(str(exc))
                print(f"kdnb: warning: compiling failed with a fresh compile cache ({exc}); training eager "
                      "(the same computation, slower; config.json records compiled: false)", file=sys.stderr,
                      flush=True)
            cfg.compile = False
        except RuntimeError as exc:
            raise TrainingError(str(exc)) from None


def prepare_teacher_for(cfg: RunConfig, teacher: nn.Module, device: torch.device) -> nn.Module:
    """The frozen teacher as ``cfg``'s training steps use it (see :func:`kdnb.engine.speedups.prepare_teacher`):
    stored in bf16 on CUDA under autocast, compiled when ``cfg.compile``."""
    _check_compiler(cfg, device)
    return prepare_teacher(teacher, cfg.compile, low_precision=device.type == "cuda" and amp_active(device, cfg.amp))


def build_stepper(cfg: RunConfig, teacher: nn.Module | None, device: torch.device, steps_per_epoch: int,
                  num_classes: int | None = None, teacher_prepared: bool = False) -> Stepper:
    """Seeded student, objective (with connectors), SGD, LR schedule and generators for ``cfg``.

    ``teacher_prepared``: ``teacher`` already went through :func:`kdnb.engine.speedups.prepare_teacher`
    (so several steppers can share one compiled teacher)."""
    _check_compiler(cfg, device)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg, num_classes).to(device)
    objective = Objective(
        cfg.weights, temperature=cfg.temperature, stages=cfg.stages, at_p=cfg.at_p,
        student_channels=student.stage_channels,
        teacher_channels=teacher.stage_channels if teacher is not None else None,
        options=cfg.term_options,
    ).to(device)
    # channels_last is faster on CUDA and on CPU alike (the CPU bench: student step 102 → 74 ms).
    student = student.to(memory_format=torch.channels_last)
    objective = objective.to(memory_format=torch.channels_last)
    if teacher is not None and not teacher_prepared:
        # A private copy with BN folded into the convolutions (exact up to rounding), so the
        # caller's teacher is untouched; compiled stage by stage when ``compile`` is on.
        teacher = prepare_teacher_for(cfg, teacher, device)
    params = list(student.parameters()) + list(objective.parameters())
    # One fused kernel for the whole update on CUDA (the foreach path launches several per step).
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov, fused=device.type == "cuda" or None)
    sched = _make_scheduler(cfg, opt, steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    return Stepper(cfg, student, objective, teacher, opt, sched, gen, mask_gen, device)
