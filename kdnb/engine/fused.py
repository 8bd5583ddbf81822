"""A cohort's students as one network: one forward, one backward and one optimiser step for all.

The students of a cohort share an architecture, so K of them are one network K times as wide whose
channels never mix: every convolution becomes a grouped convolution with K times the groups (the
first one, which reads the shared image, keeps its groups and gives K times the channels), every
BatchNorm normalises K times the channels (its statistics are per channel, so per member), the
classifier becomes K independent linear maps (:class:`GroupedLinear`). Elementwise layers (ReLU,
the residual additions, pooling) are unchanged, so the networks' own ``forward`` runs as it is.
Member k owns the slice ``[k·n, (k+1)·n)`` of dimension 0 of every fused parameter and buffer and
the same slice of the channels of every activation (features and logits).

:class:`FusedCohortStep` is a :class:`~kdnb.engine.step.CohortStep` whose step runs the teacher
once (layer4 once: the members without a cam read the logits and features of a cam's pass, see
:func:`shared_teacher_pass`), builds each distinct set of masks once, runs the fused students,
each member's own objective (its weights, its FA connectors, its generator for random masks) on
its slices, one backward of the members' summed totals (member k's parameters get exactly
∂total_k: the networks share nothing) and one SGD update over the fused tensors and every
member's connectors. SGD (momentum, weight decay, Nesterov) is elementwise, so one optimiser over
stacked tensors is each member's optimiser, given one learning-rate schedule (checked).

The members' :class:`~kdnb.engine.step.Stepper` objects stay the runs' state: at the start of each
epoch the fused tensors (and momentum buffers) are loaded from them, at its end written back
(:meth:`FusedCohortStep.end_epoch`), so validation, checkpoints, histories, resuming and early
stopping (the group shrinks: ``train_cohort`` builds a new step from the remaining members) see
exactly the objects they see without fusion. Each member's LR scheduler still steps each step.

The results equal the separate steps up to rounding (grouped kernels sum in another order): this
is why ``fused_cohort`` is a setting, off on the profiles whose numbers are recorded.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn

from ..method.mask_sources import MASK_SOURCES, make_masks
from ..method.masks import cam_short, teacher_forwards
from .speedups import autocast
from .step import CohortStep, StepClock, Stepper, TeacherOut

# Leaves a fused network may hold as they are (elementwise or per channel).
_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.Identity, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


class NotFusable(ValueError):
    """The students cannot run as one network; the message says why."""


class GroupedLinear(nn.Module):
    """K independent linear maps on ``(B, K·in)`` → ``(B, K·out)``; ``weight`` is the members'
    weights stacked on dimension 0 (``(K·out, in)``), ``bias`` theirs (``(K·out,)``)."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, i, o = self.members, self.in_features, self.out_features
        xk = x.reshape(x.shape[0], k, i).transpose(0, 1)  # (K, B, in)
        w = self.weight.view(k, o, i).transpose(1, 2)  # (K, in, out)
        out = torch.bmm(xk, w) if self.bias is None else torch.baddbmm(self.bias.view(k, 1, o), xk, w)
        return out.transpose(0, 1).reshape(x.shape[0], k * o)


def _widen(module: nn.Module, k: int, first_conv: bool) -> nn.Module:
    """The fused form of one leaf module for ``k`` members (parameters uninitialised)."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise NotFusable(f"a convolution with padding_mode={module.padding_mode!r}")
        if first_conv:  # reads the shared image: K times the output channels, the same groups
            if module.groups != 1:
                raise NotFusable("the input convolution is grouped")
            cin, groups = module.in_channels, 1
        else:
            cin, groups = k * module.in_channels, k * module.groups
        return nn.Conv2d(cin, k * module.out_channels, module.kernel_size, module.stride, module.padding,
                         module.dilation, groups, module.bias is not None)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(k * module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    if isinstance(module, nn.Linear):
        return GroupedLinear(k, module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, _PASS_THROUGH) or not list(module.children()) and not list(module.parameters(recurse=False)):
        if list(module.buffers(recurse=False)):
            raise NotFusable(f"{type(module).__name__} holds buffers")
        return module
    raise NotFusable(f"{type(module).__name__} has no fused form")


def fuse_students(students: list[nn.Module]) -> nn.Module:
    """One network computing all ``students`` (one architecture) side by side: their parameters and
    buffers stacked on dimension 0 (loaded by :func:`load_fused`)."""
    lead = students[0]
    names = [n for n, _ in lead.named_parameters()] + [n for n, _ in lead.named_buffers()]
    for s in students[1:]:
        other = [n for n, _ in s.named_parameters()] + [n for n, _ in s.named_buffers()]
        if other != names or any(a.shape != b.shape for a, b in zip(lead.state_dict().values(), s.state_dict().values())):
            raise NotFusable("the students differ in architecture")
        if any(type(a) is not type(b) or getattr(a, "momentum", None) != getattr(b, "momentum", None)
               or getattr(a, "eps", None) != getattr(b, "eps", None) for a, b in zip(lead.modules(), s.modules())):
            raise NotFusable("the students differ in their layers' settings")
    fused = copy.deepcopy(lead)
    k = len(students)
    first = True
    for name, module in list(fused.named_modules()):
        if list(module.children()):
            continue
        wide = _widen(module, k, first and isinstance(module, nn.Conv2d))
        first = first and not isinstance(module, nn.Conv2d)
        if wide is not module:
            parent, _, leaf = name.rpartition(".")
            setattr(fused.get_submodule(parent) if parent else fused, leaf, wide)
    if hasattr(fused, "stage_channels"):
        fused.stage_channels = {s: k * c for s, c in fused.stage_channels.items()}
    fused = fused.to(next(lead.parameters()).device)
    load_fused(fused, students)
    return fused.to(memory_format=torch.channels_last)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


@torch.no_grad()
def load_fused(fused: nn.Module, students: list[nn.Module]) -> None:
    """Copy the students' parameters and buffers into ``fused`` (in place). BatchNorm's step counts
    (one per layer, equal in every member of a group) are taken from the first member."""
    members = [_tensors(s) for s in students]
    for name, t in _tensors(fused).items():
        if t.dim() == 0:
            t.copy_(members[0][name])
        else:
            t.copy_(torch.cat([m[name] for m in members]))


@torch.no_grad()
def store_fused(fused: nn.Module, students: list[nn.Module], counts: dict[str, torch.Tensor]) -> None:
    """Write ``fused``'s parameters and buffers back into the students (in place). A step count
    (``num_batches_tracked``) adds what ``fused`` counted since ``counts`` (its values at loading)."""
    members = [_tensors(s) for s in students]
    for name, t in _tensors(fused).items():
        if t.dim() == 0:
            for m in members:
                m[name].add_(t - counts[name])
            continue
        n = t.shape[0] // len(students)
        for k, m in enumerate(members):
            m[name].copy_(t[k * n:(k + 1) * n])


# Settings the members' optimisers must share to be one optimiser.
_OPT_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")


def fuse_problem(steppers: list[Stepper]) -> str | None:
    """Why these steppers cannot take one fused step (None: they can)."""
    if len(steppers) < 2:
        return "a single student"
    lead = steppers[0]
    for s in steppers[1:]:
        for key in ("arch", "width", "stem", "cbam", "amp", "compile", "compile_mode"):
            if getattr(s.cfg, key) != getattr(lead.cfg, key):
                return f"the students differ in {key}"
        if type(s.opt) is not type(lead.opt) or not isinstance(lead.opt, torch.optim.SGD):
            return "the optimisers are not all SGD"
        for key in _OPT_KEYS:
            if s.opt.param_groups[0][key] != lead.opt.param_groups[0][key]:
                return f"the optimisers differ in {key}"
        if type(s.sched) is not type(lead.sched) or (
                s.sched is not None and _sched_state(s.sched) != _sched_state(lead.sched)):
            return "the learning-rate schedules differ"
    for s in steppers:
        if len(s.opt.param_groups) != 1:
            return "an optimiser with several parameter groups"
    try:
        fuse_students([s.student for s in steppers[:2]])
    except NotFusable as exc:
        return str(exc)
    return None


def _member_slice(t: torch.Tensor, k: int, members: int) -> torch.Tensor:
    """Member ``k``'s channels (dimension 1) of a fused activation."""
    n = t.shape[1] // members
    return t[:, k * n:(k + 1) * n]


def _sched_state(sched) -> dict:
    return {k: v for k, v in sched.state_dict().items() if k != "_get_lr_called_within_step"}


def shared_teacher_pass(teacher: nn.Module, x: torch.Tensor, keys: list, y: torch.Tensor) -> dict:
    """The teacher's ``(logits, feats, cam)`` per key, layer4 run once: with some cam among
    ``keys``, the key ``None`` (no cam: KD's logits, features) is served by the first cam's pass,
    whose tail (the stages after the cam's stage, run with autograd for the cam's gradient) computes
    the same logits and features. :func:`~kdnb.method.masks.teacher_forwards` on its own would run
    the whole network once more without a graph for ``None``."""
    cams = [k for k in keys if k is not None]
    if not cams:
        return teacher_forwards(teacher, x, keys, y)
    outs = teacher_forwards(teacher, x, cams, y)
    if None in keys:
        logits, feats, _ = outs[cams[0]]
        outs[None] = (logits, feats, None)
    return outs


class _EvenClock(StepClock):
    """A :class:`StepClock` with one more slot, :data:`EVEN`: a section all members ran as one
    computation (the fused network, the fused update), its time split evenly over them."""

    EVEN = -2

    def add_seconds(self, slot: int, seconds: float) -> None:
        if slot == self.EVEN:
            for i in range(self.members):
                self.own[i] += seconds / self.members
        else:
            super().add_seconds(slot, seconds)


class FusedCohortStep(CohortStep):
    """A :class:`CohortStep` whose students run as one fused network (see the module's text).

    Built by :func:`make_cohort_step`; raises :class:`NotFusable` for steppers that cannot fuse."""

    def __init__(self, steppers: list[Stepper], teacher: nn.Module | None, train_x: torch.Tensor,
                 train_y: torch.Tensor, device: torch.device, graphs: bool = False, runtime: Any = None) -> None:
        problem = fuse_problem(steppers)
        if problem is not None:
            raise NotFusable(problem)
        super().__init__(steppers, teacher, train_x, train_y, device, graphs, runtime)
        lead = steppers[0]
        self.fused = fuse_students([s.student for s in steppers])
        self.logit_width = [s.student.fc.out_features for s in steppers]
        group = lead.opt.param_groups[0]
        params = list(self.fused.parameters()) + [p for s in steppers for p in s.objective.parameters()]
        self.opt = torch.optim.SGD(params, **{k: group[k] for k in _OPT_KEYS}, fused=group.get("fused"))
        mode = None if lead.cfg.compile_mode == "default" else lead.cfg.compile_mode
        self.forward = torch.compile(self.fused, mode=mode) if lead.compiled else self.fused
        self._counts: dict[str, torch.Tensor] = {}
        self._member_params = [dict(s.student.named_parameters()) for s in steppers]
        self.clock = _EvenClock(device, len(steppers))
        for s in steppers:  # their schedulers step without their optimisers stepping: by design
            s.opt._opt_called = True

    # ------------------------------------------------------------ state in and out of the fused tensors
    def start_epoch(self, plan, epoch: int = 1) -> None:
        super().start_epoch(plan, epoch)
        self.fused.train()
        self.load()

    def load(self) -> None:
        """Fused parameters, buffers and momentum buffers from the members' steppers (in place)."""
        students = [s.student for s in self.steppers]
        load_fused(self.fused, students)
        self._counts = {n: t.detach().clone() for n, t in _tensors(self.fused).items() if t.dim() == 0}
        state = self.opt.state
        state.clear()
        for name, p in self.fused.named_parameters():
            parts = [m[name] for m in self._member_params]
            bufs = [s.opt.state.get(q, {}).get("momentum_buffer") for s, q in zip(self.steppers, parts)]
            if any(b is not None for b in bufs):  # a missing buffer is a zero one (SGD's first step: buf = grad)
                state[p] = {"momentum_buffer": torch.cat([b.detach() if b is not None else torch.zeros_like(q)
                                                          for b, q in zip(bufs, parts)]).clone()}
        for s in self.steppers:
            for p in s.objective.parameters():
                if s.opt.state.get(p):
                    state[p] = dict(s.opt.state[p])

    def end_epoch(self) -> None:
        """Write the fused state back into the members' steppers (before validation and checkpoints)."""
        students = [s.student for s in self.steppers]
        store_fused(self.fused, students, self._counts)
        self._counts = {n: t.detach().clone() for n, t in _tensors(self.fused).items() if t.dim() == 0}
        k = len(self.steppers)
        for name, p in self.fused.named_parameters():
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is None:
                continue
            n = buf.shape[0] // k
            for i, (s, m) in enumerate(zip(self.steppers, self._member_params)):
                s.opt.state[m[name]]["momentum_buffer"] = buf[i * n:(i + 1) * n].clone()
        for s in self.steppers:
            for p in s.objective.parameters():
                if self.opt.state.get(p):
                    s.opt.state[p] = dict(self.opt.state[p])

    # ------------------------------------------------------------ the step
    def _teacher_pass(self, x: torch.Tensor, y: torch.Tensor) -> dict[Any, TeacherOut]:
        return shared_teacher_pass(self.teacher, x, self.cam_keys, y)

    def _body(self) -> None:
        clock = self.clock
        x, y, outs, t = self._shared()
        lead = self.steppers[0]
        results = []
        with autocast(self.device, lead.cfg.amp):
            logits, feats = self.forward(x, return_features=True)
            cache: dict = {}
            start = 0
            for k, s in enumerate(self.steppers):
                width = self.logit_width[k]
                s_logits = logits[:, start:start + width]
                start += width
                s_feats = {st: _member_slice(f, k, len(self.steppers)) for st, f in feats.items()}
                teacher_out = outs.get(s.cam_key) if s.teacher is not None else None
                total, terms = self._objective(s, s_logits, s_feats, y, teacher_out, cache)
                results.append((total, terms, s_logits))
        self.opt.zero_grad(set_to_none=True)
        torch.stack([r[0].float() for r in results]).sum().backward()
        for s, (total, terms, s_logits) in zip(self.steppers, results):
            s.record(total, terms, s_logits, y, self.counter)
        clock.add(clock.EVEN, t, clock.mark())

    def _objective(self, s: Stepper, s_logits: torch.Tensor, s_feats: dict[str, torch.Tensor], y: torch.Tensor,
                   teacher_out: TeacherOut | None, cache: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`Stepper.forward_backward`'s masks and objective for one member, on its slices; masks
        that draw nothing at random are built once per step for every member that asks for them."""
        cfg = s.cfg
        t_logits, t_feats, cam = teacher_out if teacher_out is not None else (None, None, None)
        s.last_cam = cam
        masks = None
        if cfg.uses_masks:
            if s.sizes is None:
                s.sizes = {st: tuple(s_feats[st].shape[-2:]) for st in cfg.stages}
            shared = not MASK_SOURCES[cfg.mask_mode].host_drawn
            key = (cfg.mask_mode, s.cam_key, cfg.keep, cfg.cam_type, cfg.needs_cam, tuple(s.sizes.items()))
            if shared and key in cache:
                masks, share, short = cache[key]
            else:
                masks = make_masks(cfg.mask_mode, s.sizes, cam=cam, keep=cfg.keep, cam_type=cfg.cam_type,
                                   batch=len(y), generator=s.mask_gen, device=self.device)
                share = short = None
                if masks is not None:
                    share = torch.stack([torch.ones((), device=self.device) if m is None else m.float().mean()
                                         for m in masks.values()]).mean()
                if cfg.needs_cam:
                    short = torch.stack([cam_short(cam, cfg.keep, hw).float().mean() for hw in s.sizes.values()]).mean()
                if shared:
                    cache[key] = (masks, share, short)
            if share is not None:
                s.mask_share.add_(share)
            if short is not None:
                s.cam_short_share.add_(short)
        return s.loss(s_logits, s_feats, y, t_logits, t_feats, masks)

    def _update(self) -> None:
        """The one fused update, its time shared evenly by the members."""
        t0 = self.clock.mark()
        self.apply()
        self.clock.add(self.clock.EVEN, t0, self.clock.mark())

    def apply(self) -> None:
        """One SGD update of every member (at the lead's scheduled hyperparameters), then each
        member's LR schedule steps, as in :meth:`Stepper.apply`."""
        lead = self.steppers[0].opt.param_groups[0]
        for group in self.opt.param_groups:
            for key in _OPT_KEYS:
                group[key] = lead[key]
        self.opt.step()
        for s in self.steppers:
            if s.sched is not None:
                s.sched.step()

    def _state_tensors(self) -> list[torch.Tensor]:
        """The members' state and the fused network's BatchNorm statistics: what a failed first
        (compiled) step or a failed CUDA graph step puts back."""
        return [*super()._state_tensors(), *self.fused.buffers()]

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [*super()._optimizers(), self.opt]

    def _go_eager(self) -> None:
        super()._go_eager()
        self.forward = self.fused


def make_cohort_step(steppers: list[Stepper], teacher: nn.Module | None, train_x: torch.Tensor,
                     train_y: torch.Tensor, device: torch.device, graphs: bool = False, fused: bool = False,
                     progress: bool = True, runtime: Any = None) -> CohortStep:
    """The step of a cohort group: fused (:class:`FusedCohortStep`) when ``fused`` and the group has
    several students that can fuse, else today's :class:`CohortStep` (with one line saying why not
    fused, when it was asked for)."""
    if fused and len(steppers) > 1:
        problem = fuse_problem(steppers)
        if problem is None:
            return FusedCohortStep(steppers, teacher, train_x, train_y, device, graphs, runtime)
        if progress:
            names = ", ".join(s.cfg.run_name for s in steppers)
            print(f"kdnb: {names}: not fused ({problem}); each student takes its own step", file=sys.stderr)
    return CohortStep(steppers, teacher, train_x, train_y, device, graphs, runtime)
