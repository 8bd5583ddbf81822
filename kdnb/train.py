"""One training loop for the teacher and all five student configurations.

The loop follows the paper's protocol (SGD, batch 64, early stopping on *validation* loss) and
never looks at the test set until the end, when the best-by-validation weights are evaluated
once. It checkpoints after every epoch (atomically), resumes from the last completed epoch,
and reproduces an uninterrupted run exactly on CPU: the seed fixes initialisation, batch
order, augmentation and random masks, and all random states are saved in the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .config import ENGINE_FIELDS, RunConfig, config_from_dict
from .data import (
    Dataset, EpochPlan, apply_augmentation, augment, load_dataset, normalize, plan_epoch, stratified_split,
)
from .efficiency import device_name
from .masks import HOST_DRAWN_MASKS, cam_short, make_masks, teacher_forward, teacher_forwards
from .models import build_model, count_parameters
from .objective import TERMS, Objective
from .speedups import cpu_bf16_pays, ensure_compiled_bf16_correct, prepare_teacher
from .tensorboard import RunLog
from .runs import (
    BEST_FILE, CHECKPOINT_FILE, CONFIG_FILE, HISTORY_FILE, LOCK_FILE, METRICS_FILE, RunLock, RunLocked,
    is_finished, load_torch, read_json, run_path, save_torch, write_json,
)

# Host reads in the training loop happen only every so many steps (a read waits for the device).
CHECK_EVERY = 50
PROGRESS_EVERY = 20



TeacherOut = tuple[torch.Tensor, dict[str, torch.Tensor], "torch.Tensor | None"]  # logits, stage features, cam


class TrainingError(RuntimeError):
    """A run cannot start or cannot go on; the message says why and what to do."""


@dataclass
class RunResult:
    run_dir: Path
    config: RunConfig
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


# ---------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device=cuda requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def amp_active(device: torch.device, enabled: bool) -> bool:
    """bf16 autocast is used on CUDA and on CPUs where it is faster (AMX, see
    :func:`kdnb.speedups.cpu_bf16_pays`); elsewhere ``amp`` is a no-op."""
    return enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_pays()))


def _autocast(device: torch.device, enabled: bool):
    if amp_active(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def teacher_dir(runs_dir: str | os.PathLike, cfg: RunConfig) -> Path:
    return run_path(runs_dir, cfg.profile, "teacher", cfg.teacher_seed)


def load_teacher(runs_dir: str | os.PathLike, cfg: RunConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The frozen teacher of ``cfg`` (eval mode, no parameter gradients), or a clear error."""
    tdir = teacher_dir(runs_dir, cfg)
    if not (tdir / BEST_FILE).is_file() or not is_finished(tdir):
        raise TrainingError(
            f"teacher checkpoint {tdir / BEST_FILE} not found: train the teacher first with "
            f"`python -m kdnb train --config teacher --profile {cfg.profile} --seed {cfg.teacher_seed}"
            f"{'' if str(runs_dir) == 'runs' else f' --runs-dir {runs_dir}'}` (or run notebooks/01_train_teacher.ipynb)"
        )
    tcfg = config_from_dict(read_json(tdir / CONFIG_FILE))
    if (tcfg.val_size, tcfg.split_seed) != (cfg.val_size, cfg.split_seed):
        raise TrainingError(
            f"the teacher in {tdir} used val_size={tcfg.val_size}, split_seed={tcfg.split_seed} but this run uses "
            f"val_size={cfg.val_size}, split_seed={cfg.split_seed}: the teacher would have trained on this run's "
            "validation images. Use the same split or retrain the teacher."
        )
    teacher = build_model(tcfg.arch, cbam=tcfg.cbam, stem=tcfg.stem, width=tcfg.width)
    teacher.load_state_dict(load_torch(tdir / BEST_FILE)["model"])
    teacher.to(device).eval().requires_grad_(False)
    return teacher


def build_student(cfg: RunConfig, num_classes: int = 10) -> nn.Module:
    return build_model(cfg.arch, num_classes, cbam=cfg.cbam, stem=cfg.stem, width=cfg.width)


def load_trained(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The best-by-validation model of a finished run, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file():
        raise TrainingError(f"{run_dir / BEST_FILE} not found: the run has not finished")
    cfg = config_from_dict(read_json(run_dir / CONFIG_FILE))
    model = build_student(cfg)
    model.load_state_dict(load_torch(run_dir / BEST_FILE)["model"])
    return model.to(device).eval()


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500, amp: bool = True
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on uint8 images ``x``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size].to(device, non_blocking=True))
        yb = y[i : i + batch_size].to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), correct.item() / len(x)


# ---------------------------------------------------------------- run bookkeeping
def _prepare_run_dir(run_dir: Path, cfg: RunConfig, force: bool) -> None:
    """Refuse to mix settings in one run directory; with ``force`` keep the old run aside."""
    cfg_file = run_dir / CONFIG_FILE
    if cfg_file.is_file() and not force:
        old = read_json(cfg_file)
        new = cfg.to_dict()
        diff = [k for k in new if k not in ENGINE_FIELDS and old.get(k) != new[k]]
        if diff:
            k = diff[0]
            raise TrainingError(
                f"{run_dir} holds a run with different settings ({k}: {old.get(k)!r} there, {new[k]!r} now). "
                "Use another --runs-dir, or --force to start over (the old run is kept beside it)."
            )
    old_files = [e for e in run_dir.iterdir() if e.name != LOCK_FILE] if run_dir.exists() else []
    if force and old_files:
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        backup.mkdir()
        for entry in old_files:  # the lock this process holds stays where it is
            shutil.move(str(entry), backup / entry.name)
        print(f"kdnb: kept the previous run as {backup}")


def _provenance(cfg: RunConfig, device: torch.device, data: Dataset, n_train: int, n_val: int) -> dict[str, Any]:
    return {
        **cfg.to_dict(),
        "kdnb_version": __version__,
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "device_name": device_name(device),
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        # what the engine switches did on this machine (amp is only a request on CPUs)
        "amp_active": amp_active(device, cfg.amp),
        "cpu_bf16": {"amx": cpu_bf16_pays(), "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported())}
        if device.type == "cpu" else None,
        "compiled_bf16_check": ensure_compiled_bf16_correct()
        if cfg.compile and device.type == "cpu" and amp_active(device, cfg.amp) else None,
        "data_source": data.source,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": len(data.test_y),
    }


def _make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_frac)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


# ---------------------------------------------------------------- one step
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
        self.sizes: dict[str, tuple[int, int]] | None = None
        self.last_cam: torch.Tensor | None = None
        # The epoch's running statistics, device tensors updated in place (never rebound, so a
        # captured CUDA graph keeps writing where the loop reads): the objective's terms, total and
        # correct predictions summed over steps; the first step at which each term and the total
        # were non-finite (-1: none); the masks' kept share and the cams' short share, summed.
        self.sums = torch.zeros(len(TERMS) + 2, device=device)
        self.bad = torch.full((len(TERMS) + 1,), -1, device=device, dtype=torch.long)
        self.mask_share = torch.zeros((), device=device)
        self.cam_short_share = torch.zeros((), device=device)  # cam-based masks only

    def new_epoch(self) -> None:
        """Training mode and zeroed epoch statistics (in place)."""
        self.student.train()
        self.objective.train()
        for t in (self.sums, self.mask_share, self.cam_short_share):
            t.zero_()
        self.bad.fill_(-1)

    @property
    def graph_safe(self) -> bool:
        """Whether this step may be captured as a CUDA graph: not when its masks are drawn on the host."""
        return not ((self.cfg.w_fa > 0 or self.cfg.w_at > 0) and self.cfg.mask_mode in HOST_DRAWN_MASKS)

    def prepare(self, xb: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """uint8 batch → augmented, normalised float batch in the device's preferred layout.

        ``draws``: the batch's crop offsets and flips from an :class:`~kdnb.data.EpochPlan`
        (already on the device); without them they are drawn from the stepper's generator."""
        x = augment(xb, self.gen) if draws is None else apply_augmentation(xb, *draws)
        return normalize(x).contiguous(memory_format=torch.channels_last)

    @property
    def cam_key(self) -> str | None:
        """The stage whose Grad-CAM this student's masks need (``None``: no cam)."""
        return self.cfg.cam_stage if self.cfg.needs_cam else None

    def __call__(self, xb: torch.Tensor, y: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x = self.prepare(xb, draws)
        teacher_out = None
        if self.teacher is not None:
            with _autocast(self.device, self.cfg.amp):
                teacher_out = teacher_forward(self.teacher, x, self.cam_key, y)
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
        with _autocast(self.device, cfg.amp):
            s_logits, s_feats = self.forward(x, return_features=True)
            t_logits, t_feats, cam = teacher_out if teacher_out is not None else (None, None, None)
            self.last_cam = cam
            masks = None
            if cfg.w_fa > 0 or cfg.w_at > 0:
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
                                for t in TERMS] + [total.detach().float()])
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
        with torch.cuda.stream(self.side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(self.side)

    def capture(self, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """Record ``fn``'s kernels without running them; the graph's ``replay()`` runs them."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph


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
    """

    def __init__(self, steppers: list[Stepper], teacher: nn.Module | None, train_x: torch.Tensor,
                 train_y: torch.Tensor, device: torch.device, graphs: bool = False, runtime: Any = None) -> None:
        self.steppers, self.teacher, self.train_x, self.train_y, self.device = steppers, teacher, train_x, train_y, device
        self.cam_keys = sorted({s.cam_key for s in steppers if s.teacher is not None}, key=str)
        self.graphs = graphs and (device.type == "cuda" or runtime is not None) and all(s.graph_safe for s in steppers)
        self.runtime = (runtime or CudaGraphs(device)) if self.graphs else None
        self.counter = torch.zeros((), dtype=torch.long, device=device)  # steps taken this epoch
        self.plan: EpochPlan | None = None  # device buffers, filled in place each epoch
        self.graph: Any = None
        self.warm = 0

    def start_epoch(self, plan: EpochPlan) -> None:
        """Load the epoch's batch order and augmentation draws into the step's buffers (in place)."""
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
            s.new_epoch()

    def _body(self) -> None:
        row = self.counter.view(1)
        idx = self.plan.index.index_select(0, row)[0]
        draws = (self.plan.offsets.index_select(0, row)[0], self.plan.flips.index_select(0, row)[0])
        self.counter.add_(1)  # now the 1-based number of this step
        lead = self.steppers[0]
        y = self.train_y[idx]
        x = lead.prepare(self.train_x[idx], draws)
        outs: dict[str | None, TeacherOut] = {}
        if self.teacher is not None and self.cam_keys:
            with _autocast(self.device, lead.cfg.amp):
                outs = teacher_forwards(self.teacher, x, self.cam_keys, y)
        for s in self.steppers:
            total, terms, s_logits = s.forward_backward(x, y, outs.get(s.cam_key) if s.teacher is not None else None)
            s.record(total, terms, s_logits, y, self.counter)

    def __call__(self) -> None:
        if not self.graphs:
            self._body()
        elif self.graph is not None:
            self.graph.replay()
        elif self.warm < GRAPH_WARMUP:  # warm-up steps are real steps
            self.runtime.warm_up(self._body)
            self.warm += 1
        else:  # capturing records the step without running it: replay it at once
            self.graph = self.runtime.capture(self._body)
            self.graph.replay()
        for s in self.steppers:
            s.apply()


def _check_compiler(cfg: RunConfig, device: torch.device) -> None:
    """Before compiling under bf16 on a CPU, make sure inductor's bf16 kernels are right here."""
    if cfg.compile and device.type == "cpu" and amp_active(device, cfg.amp):
        try:
            ensure_compiled_bf16_correct()
        except RuntimeError as exc:
            raise TrainingError(str(exc)) from None


def prepare_teacher_for(cfg: RunConfig, teacher: nn.Module, device: torch.device) -> nn.Module:
    """The frozen teacher as ``cfg``'s training steps use it (see :func:`kdnb.speedups.prepare_teacher`):
    stored in bf16 on CUDA under autocast, compiled when ``cfg.compile``."""
    _check_compiler(cfg, device)
    return prepare_teacher(teacher, cfg.compile, low_precision=device.type == "cuda" and amp_active(device, cfg.amp))


def build_stepper(cfg: RunConfig, teacher: nn.Module | None, device: torch.device, steps_per_epoch: int,
                  num_classes: int = 10, teacher_prepared: bool = False) -> Stepper:
    """Seeded student, objective (with connectors), SGD, LR schedule and generators for ``cfg``.

    ``teacher_prepared``: ``teacher`` already went through :func:`kdnb.speedups.prepare_teacher`
    (so several steppers can share one compiled teacher)."""
    _check_compiler(cfg, device)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg, num_classes).to(device)
    objective = Objective(
        {"ce": cfg.w_ce, "kd": cfg.w_kd, "fa": cfg.w_fa, "at": cfg.w_at},
        temperature=cfg.temperature, stages=cfg.stages, at_p=cfg.at_p,
        student_channels=student.stage_channels,
        teacher_channels=teacher.stage_channels if teacher is not None else None,
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


# ---------------------------------------------------------------- the loop
# Settings every member of a cohort must share: they fix the data, the batches and the teacher.
COHORT_SHARED = ("profile", "seed", "data_dir", "val_size", "train_size", "split_seed", "synthetic_train",
                 "synthetic_test", "batch_size", "teacher_seed", "device", "threads", "compile", "amp",
                 "cuda_graphs", "eval_batch_size")


def train(
    cfg: RunConfig,
    runs_dir: str | os.PathLike = "runs",
    *,
    force: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    max_epochs: int | None = None,
) -> RunResult:
    """Train (or resume, or return the stored result of) the run that ``cfg`` describes.

    ``max_epochs`` stops after that many completed epochs *of this call* without finishing the
    run (for tests and benchmarks); a later call resumes where it stopped.
    """
    return train_cohort([cfg], runs_dir, force=force, progress=progress, data=data, max_epochs=max_epochs)[0]


@dataclass
class _Member:
    """One run of a cohort: its settings, folder, stepper and training state."""

    cfg: RunConfig
    run_dir: Path
    stepper: Stepper
    state: dict[str, Any]
    amp: bool
    log: RunLog
    epochs_this_call: int = 0

    @property
    def done(self) -> bool:
        return self.state["epoch"] >= self.cfg.epochs or self.state["stopped_early"]


def check_cohort(cfgs: list[RunConfig]) -> None:
    """Refuse a cohort whose members would not see the same batches or the same teacher."""
    if not cfgs:
        raise TrainingError("a cohort needs at least one configuration")
    names = [c.run_name for c in cfgs]
    if len(set(names)) != len(names):
        raise TrainingError(f"a cohort holds each run once; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    if len(cfgs) > 1 and any(c.is_teacher for c in cfgs):
        raise TrainingError("the teacher trains alone: the students of a cohort need it trained first")
    first = cfgs[0]
    for c in cfgs[1:]:
        for k in COHORT_SHARED:
            if getattr(c, k) != getattr(first, k):
                raise TrainingError(f"cohort members must share {k}: {first.run_name} has {getattr(first, k)!r}, "
                                    f"{c.run_name} has {getattr(c, k)!r}; train them separately")


def train_cohort(
    cfgs: list[RunConfig],
    runs_dir: str | os.PathLike = "runs",
    *,
    force: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    max_epochs: int | None = None,
    wait: bool = False,
) -> list[RunResult]:
    """Train several runs of one seed in lockstep: the same batches, one teacher pass per batch.

    A seed fixes batch order and augmentation for every configuration, so the students of a seed
    see the same images; in a cohort each batch is augmented once and the teacher's forward (and
    Grad-CAM, per cam stage some member needs) runs once for all of them, then each member takes
    its own step with its own generators. Every member writes exactly the run folder it would write
    alone, with the same numbers; finished members are skipped, interrupted ones resume from their
    own checkpoints (members behind catch up first), members leave on early stopping.

    Each member's folder is locked while it trains (:class:`kdnb.runs.RunLock`): a run another
    process is training is refused with one line naming that process, or waited for with ``wait``.
    """
    check_cohort(cfgs)
    results: dict[int, RunResult] = {}
    todo: list[int] = []
    for i, cfg in enumerate(cfgs):
        run_dir = run_path(runs_dir, cfg.profile, cfg.run_name, cfg.seed)
        if is_finished(run_dir) and not force:
            _prepare_run_dir(run_dir, cfg, force=False)
            results[i] = RunResult(run_dir, cfg, read_json(run_dir / HISTORY_FILE), read_json(run_dir / METRICS_FILE))
        else:
            todo.append(i)
    if not todo:
        return [results[i] for i in range(len(cfgs))]

    first = cfgs[todo[0]]
    device = resolve_device(first.device)
    if first.threads:
        torch.set_num_threads(first.threads)
    distilling = [cfgs[i] for i in todo if cfgs[i].needs_teacher]
    # Fail before loading data. Members share the split and teacher seed, so one check serves all.
    teacher = load_teacher(runs_dir, distilling[0], device) if distilling else None
    dirs = {i: run_path(runs_dir, cfgs[i].profile, cfgs[i].run_name, cfgs[i].seed) for i in todo}
    with contextlib.ExitStack() as held:
        try:
            for i in todo:
                held.enter_context(RunLock(dirs[i], wait=wait))
        except RunLocked as exc:
            raise TrainingError(str(exc)) from None
        for i in list(todo):  # finished by another process while we waited for its lock
            if is_finished(dirs[i]) and not force:
                todo.remove(i)
                results[i] = RunResult(dirs[i], cfgs[i], read_json(dirs[i] / HISTORY_FILE),
                                       read_json(dirs[i] / METRICS_FILE))
        for i in todo:
            _prepare_run_dir(dirs[i], cfgs[i], force)
        if todo:
            _train_locked(cfgs, todo, results, runs_dir, device, teacher, distilling, progress, data, max_epochs)
    return [results[i] for i in range(len(cfgs))]


def _train_locked(cfgs: list[RunConfig], todo: list[int], results: dict[int, RunResult], runs_dir, device,
                  teacher: nn.Module | None, distilling: list[RunConfig], progress: bool, data: Dataset | None,
                  max_epochs: int | None) -> None:
    """The body of :func:`train_cohort` once its members' folders are locked and checked: load the
    data, build one stepper per member, train in lockstep, finish; fills ``results``."""
    first = cfgs[todo[0]]
    if data is None:
        data = load_dataset(first.data_dir, synthetic_train=first.synthetic_train, synthetic_test=first.synthetic_test)
    train_idx, val_idx = stratified_split(data.train_y, first.val_size, first.train_size, first.split_seed)
    # the whole dataset lives on the device
    train_x, train_y = data.train_x[train_idx].to(device), data.train_y[train_idx].to(device)
    val_x, val_y = data.train_x[val_idx].to(device), data.train_y[val_idx].to(device)

    steps_per_epoch = max(1, len(train_y) // first.batch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    # One prepared (BN-folded, compiled) teacher serves every member.
    needed = teacher is not None and any(cfgs[i].needs_teacher for i in todo)
    prepared = prepare_teacher_for(distilling[0], teacher, device) if needed else None
    cohort = [c.run_name for c in (cfgs[i] for i in todo)] if len(todo) > 1 else None
    members = []
    for i in todo:
        cfg = cfgs[i]
        run_dir = run_path(runs_dir, cfg.profile, cfg.run_name, cfg.seed)
        stepper = build_stepper(cfg, prepared if cfg.needs_teacher else None, device, steps_per_epoch,
                                data.num_classes, teacher_prepared=True)
        state = _resume(stepper, run_dir, progress)
        if state is None:
            state = {"epoch": 0, "history": [], "best_val_loss": math.inf, "best_epoch": 0, "best": None,
                     "bad_epochs": 0, "stopped_early": False}
            write_json(run_dir / CONFIG_FILE, {**_provenance(cfg, device, data, len(train_y), len(val_y)),
                                               "cohort": cohort})
        members.append(_Member(cfg, run_dir, stepper, state, amp_active(device, cfg.amp),
                               RunLog(run_dir, first_epoch=state["epoch"] + 1)))

    t_start = time.perf_counter()
    step = None
    while True:
        running = [m for m in members if not m.done and (max_epochs is None or m.epochs_this_call < max_epochs)]
        if not running:
            break
        behind = min(m.state["epoch"] for m in running)  # members behind catch up before the others move
        group = [m for m in running if m.state["epoch"] == behind]
        if step is None or step.steppers != [m.stepper for m in group]:  # a new group (a member left or caught up):
            # a new step and graph (the old one would also update the members that left); the old
            # one goes first, so its graph's memory is free for the new capture
            step = None
            step = CohortStep([m.stepper for m in group], prepared, train_x, train_y, device, first.cuda_graphs)
            if first.cuda_graphs and device.type == "cuda" and not step.graphs and progress:
                print(f"kdnb: {', '.join(m.cfg.run_name for m in group)}: masks drawn on the host, "
                      "so these steps run without CUDA graphs")
        _train_epoch(step, group, len(train_y), val_x, val_y, progress)
    seconds = time.perf_counter() - t_start
    for i, m in zip(todo, members):
        if not m.done:
            results[i] = RunResult(m.run_dir, m.cfg, m.state["history"],
                                   {"finished": False, "epochs_run": m.state["epoch"]})
            m.log.close()
        else:
            results[i] = _finish(m.run_dir, m.cfg, m.stepper.student, m.state, data, device, m.cfg.needs_teacher,
                                 seconds)
            m.log.finish(m.cfg.to_dict(), results[i].metrics)


def _resume(stepper: Stepper, run_dir: Path, progress: bool) -> dict[str, Any] | None:
    """Load ``run_dir``'s checkpoint into ``stepper``; its training state, or None when there is none."""
    ckpt_path = run_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        return None
    ck = load_torch(ckpt_path)  # on the CPU: generator states must stay there; modules copy to their device
    stepper.student.load_state_dict(ck["model"])
    stepper.objective.load_state_dict(ck["objective"])
    stepper.opt.load_state_dict(ck["optimizer"])
    if stepper.sched is not None:
        stepper.sched.load_state_dict(ck["scheduler"])
    stepper.gen.set_state(ck["gen"])
    stepper.mask_gen.set_state(ck["mask_gen"])
    torch.set_rng_state(ck["torch_rng"])
    if progress:
        print(f"kdnb: resuming {run_dir} after epoch {ck['state']['epoch']}")
    return ck["state"]


def _train_epoch(step: CohortStep, group: list[_Member], n_train: int, val_x: torch.Tensor, val_y: torch.Tensor,
                 progress: bool) -> None:
    """One epoch of every member of ``group`` (all at the same epoch, so on the same batches),
    each step taken by ``step``, the group's :class:`CohortStep`."""
    lead = group[0]
    epoch = lead.state["epoch"] + 1
    # Each member draws its own plan from its own generator, exactly as alone (so its saved
    # generator state is its own); members at one epoch have equal generators, so equal plans.
    plans = [plan_epoch(n_train, m.cfg.batch_size, m.stepper.gen) for m in group]
    step.start_epoch(plans[0])
    n = len(plans[0])
    names = ", ".join(m.cfg.run_name for m in group)
    bar = tqdm(total=n, desc=f"{names} epoch {epoch}/{lead.cfg.epochs}", disable=not progress, leave=False,
               mininterval=1.0)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        step()
        # The only host reads of the loop, rate-limited: a non-finite term names its first step anyway.
        if i % CHECK_EVERY == 0 or i == n:
            for m in group:
                _check_finite(m.stepper.bad, epoch, m.cfg, m.amp)
        if progress and (i % PROGRESS_EVERY == 0 or i == n):
            bar.update(i - bar.n)
            seen = i * lead.cfg.batch_size
            bar.set_postfix(loss=f"{lead.stepper.sums[-2].item() / i:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    train_seconds = time.perf_counter() - t0
    for m in group:
        _end_epoch(m, epoch, n, n * lead.cfg.batch_size, train_seconds, val_x, val_y, progress)


def _end_epoch(m: _Member, epoch: int, n: int, seen: int, train_seconds: float, val_x: torch.Tensor,
               val_y: torch.Tensor, progress: bool) -> None:
    """Validate one member, update its early-stopping state, checkpoint it and write its history.

    ``train_seconds`` is the wall time of the (shared) epoch: in a cohort, every member's."""
    cfg, stepper, state = m.cfg, m.stepper, m.state
    val_loss, val_acc = evaluate(stepper.student, val_x, val_y, cfg.eval_batch_size, cfg.amp)
    avg = (stepper.sums / max(n, 1)).tolist()
    mask_share = float(stepper.mask_share) / max(n, 1)
    # null for masks without a cam (histories written before this statistic lack the key: read as NaN)
    cam_short_share = float(stepper.cam_short_share) / max(n, 1) if cfg.needs_cam else None
    if cfg.needs_cam and cfg.mask_mode != "none" and mask_share == 0.0:
        raise TrainingError(
            f"every causal mask of epoch {epoch} was empty (the teacher's Grad-CAM was zero everywhere), so "
            "FA/AT transferred nothing: check the teacher checkpoint, or try compile=false / amp=false")
    record = {"epoch": epoch, "train_loss": avg[len(TERMS)],
              **{f"train_{t}": avg[i] for i, t in enumerate(TERMS)},
              "train_acc": stepper.sums[-1].item() / max(seen, 1), "val_loss": val_loss, "val_acc": val_acc,
              "mask_share": mask_share, "cam_short_share": cam_short_share,
              "lr": stepper.opt.param_groups[0]["lr"], "seconds": train_seconds,
              "images_per_s": seen / max(train_seconds, 1e-9)}
    state["history"].append(record)
    state["epoch"] = epoch
    if val_loss < state["best_val_loss"]:
        state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                     best={"model": _cpu_state(stepper.student), "objective": _cpu_state(stepper.objective)})
    else:
        state["bad_epochs"] += 1
        if state["bad_epochs"] >= cfg.patience:
            state["stopped_early"] = True
    m.log.epoch(record)  # before the commit: a resumed run never logs a committed epoch again
    save_torch(m.run_dir / CHECKPOINT_FILE, {
        "model": stepper.student.state_dict(), "objective": stepper.objective.state_dict(),
        "optimizer": stepper.opt.state_dict(),
        "scheduler": stepper.sched.state_dict() if stepper.sched is not None else None, "gen": stepper.gen.get_state(),
        "mask_gen": stepper.mask_gen.get_state(), "torch_rng": torch.get_rng_state(), "state": state,
    })
    write_json(m.run_dir / HISTORY_FILE, state["history"])
    m.epochs_this_call += 1
    if progress:
        print(f"{cfg.run_name} seed{cfg.seed} epoch {epoch:>2}: train loss {record['train_loss']:.4f}  "
              f"val loss {val_loss:.4f}  val acc {val_acc:.4f}  {record['images_per_s']:.0f} img/s  "
              f"{train_seconds:.1f} s" + ("  (early stop)" if state["stopped_early"] else ""))


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _check_finite(bad: torch.Tensor, epoch: int, cfg: RunConfig, amp: bool) -> None:
    """Raise for the earliest non-finite loss term (``bad``: first bad step per term, -1 if none).

    With the engine's compile or bf16 switched on, the message first suggests ruling those out:
    a miscompiled kernel gives NaN at any learning rate (it happened: see speedups)."""
    flags = bad.tolist()
    found = [(s, i) for i, s in enumerate(flags) if s >= 0]
    if not found:
        return
    step, i = min(found)
    term = (*TERMS, "total")[i]
    engine = [name for name, on in (("compile", cfg.compile), ("amp", amp)) if on]
    check = (f"first rerun with {' and '.join(f'--set {k}=false' for k in engine)} to rule out a compiler or "
             "bf16 fault, then " if engine else "")
    raise TrainingError(
        f"loss term '{term}' became NaN/inf at epoch {epoch}, step {step}: {check}lower lr or the term's weight "
        "(the last good epoch is in checkpoint.pt)"
    )


def _finish(run_dir: Path, cfg: RunConfig, model: nn.Module, state: dict, data: Dataset, device: torch.device,
            distilled: bool, seconds: float) -> RunResult:
    """Evaluate the best-by-validation weights once on the test set; write best.pt then metrics.json."""
    model.load_state_dict(state["best"]["model"])
    save_torch(run_dir / BEST_FILE, {"model": state["best"]["model"], "objective": state["best"]["objective"],
                                     "epoch": state["best_epoch"], "config": cfg.to_dict()})
    test_loss, test_acc = evaluate(model, data.test_x.to(device), data.test_y.to(device), cfg.eval_batch_size, cfg.amp)
    best = state["history"][state["best_epoch"] - 1]
    metrics = {
        "config": cfg.config, "run_name": cfg.run_name, "profile": cfg.profile, "seed": cfg.seed, "finished": True,
        "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "stopped_early": state["stopped_early"],
        "val_loss": best["val_loss"], "val_acc": best["val_acc"], "test_loss": test_loss, "test_acc": test_acc,
        "params": count_parameters(model), "train_seconds": sum(h["seconds"] for h in state["history"]),
        "median_epoch_seconds": sorted(h["seconds"] for h in state["history"])[len(state["history"]) // 2],
        "teacher_seed": cfg.teacher_seed if distilled else None,
    }
    write_json(run_dir / METRICS_FILE, metrics)
    return RunResult(run_dir, cfg, state["history"], metrics)
