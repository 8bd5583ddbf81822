"""One training loop for the teacher and all five student configurations.

The loop follows the paper's protocol (SGD, batch 64, early stopping on *validation* loss) and
never looks at the test set until the end, when the best-by-validation weights are evaluated
once. It checkpoints every ``checkpoint_every`` epochs and after its last (atomically), resumes
from the last checkpointed epoch (redoing the epochs after it), and reproduces an uninterrupted
run exactly on CPU: the seed fixes initialisation, batch order, augmentation and random masks,
and all random states are saved in the checkpoint.
"""

from __future__ import annotations

import contextlib
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

from .. import __version__
from ..method.models import count_parameters
from ..method.objective import term_names
from .compile_cache import cache_for_runs, use_compile_cache
from .config import ENGINE_FIELDS, UNRECORDED, RunConfig, config_from_dict, make_config
from .data import Dataset, load_dataset, normalize, plan_epoch, stratified_split
from .errors import DamagedFile, TrainingError
from .fused import FusedCohortStep, make_cohort_step
from .inference import batched_logits
from .runs import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RunLock,
    RunLocked,
    checksum_path,
    is_finished,
    load_checkpoint,
    read_json,
    run_path,
    save_torch,
    write_json,
)
from .speedups import amp_active, cpu_bf16_pays, device_name, ensure_compiled_bf16_correct
from .state import TrainingState
from .step import CohortStep, Stepper, build_stepper, build_student, prepare_teacher_for
from .tensorboard import RunLog

# Host reads in the training loop happen only every so many steps (a read waits for the device).
CHECK_EVERY = 50
PROGRESS_EVERY = 20



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


def teacher_dir(runs_dir: str | os.PathLike, cfg: RunConfig) -> Path:
    return run_path(runs_dir, cfg.profile, "teacher", cfg.teacher_seed)


def train_command(cfg: RunConfig, runs_dir: str | os.PathLike, flag: str = "") -> str:
    """The ``python -m kdnb train`` command that trains the run of ``cfg`` in ``runs_dir`` (its
    settings beyond the profile's as ``--set``), with ``flag`` (``--force``, ``--restart``) added:
    the exact command an error message tells the user to run."""
    default = make_config(cfg.config, cfg.profile, cfg.seed).to_dict()
    sets = [f"--set {k}={_set_text(v)}" for k, v in cfg.to_dict().items()
            if k not in (*ENGINE_FIELDS, "config", "profile", "seed") and v != default[k]]
    parts = ["python -m kdnb train", f"--config {cfg.config}", f"--profile {cfg.profile}", f"--seed {cfg.seed}",
             *([] if str(runs_dir) == "runs" else [f"--runs-dir {runs_dir}"]),
             *([] if cfg.data_dir == default["data_dir"] or cfg.data_dir is None else [f"--data-dir {cfg.data_dir}"]),
             *sets, *([flag] if flag else [])]
    return " ".join(parts)


def _set_text(value: Any) -> str:
    """A setting as ``--set`` reads it back."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


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
    return load_trained(tdir, device, runs_dir).requires_grad_(False)


def load_trained(run_dir: str | os.PathLike, device: torch.device | str = "cpu",
                 runs_dir: str | os.PathLike | None = None) -> nn.Module:
    """The best-by-validation model of a finished run (student or teacher), in eval mode: the one loader
    of trained models. A damaged or untrusted ``best.pt`` is :class:`DamagedFile` naming the command
    that retrains the run (``runs_dir``: the runs folder it names; default the one above the run)."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file():
        raise TrainingError(f"{run_dir / BEST_FILE} not found: the run has not finished")
    cfg = config_from_dict(read_json(run_dir / CONFIG_FILE))
    runs_dir = run_dir.parents[2] if runs_dir is None else runs_dir
    who = "the teacher" if cfg.is_teacher else "this run"
    fix = f"retrain {who} with `{train_command(cfg, runs_dir, '--force')}` (the damaged run is kept aside)"
    model = build_student(cfg)
    weights = load_checkpoint(run_dir / BEST_FILE, fix, required=("model",))["model"]
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:  # tensors of other shapes or names: not this run's
        raise DamagedFile(f"{run_dir / BEST_FILE} does not hold the weights of the network its config.json "
                          f"describes ({str(exc).splitlines()[0][:80]}): {fix}") from None
    return model.to(device).eval()


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500, amp: bool = True,
    normalize: Callable[[torch.Tensor], torch.Tensor] = normalize,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on uint8 images ``x`` (one host read at the
    end); ``normalize``: the dataset's (CIFAR-10's by default)."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.inference_mode():
        for sl, logits in batched_logits(model, x, normalize, batch_size, device, amp):
            yb = y[sl].to(device, non_blocking=True)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


# ---------------------------------------------------------------- run bookkeeping
def _prepare_run_dir(run_dir: Path, cfg: RunConfig, force: bool) -> None:
    """Refuse to mix settings in one run directory; with ``force`` keep the old run aside."""
    cfg_file = run_dir / CONFIG_FILE
    if cfg_file.is_file() and not force:
        old = read_json(cfg_file)
        new = cfg.to_dict()
        diff = [k for k in new if k not in ENGINE_FIELDS and old.get(k) != new[k]
                and not (k in UNRECORDED and old.get(k) is None)]  # an older run: its count was not recorded
        if diff:
            k = diff[0]
            same = (f"Continue it with --set {k}={old[k]} (the count it trains with, part of its numbers), use "
                    if k == "threads" else "Use ")
            raise TrainingError(
                f"{run_dir} holds a run with different settings ({k}: {old.get(k)!r} there, {new[k]!r} now). "
                f"{same}another --runs-dir, or --force to start over (the old run is kept beside it)."
            )
    old_files = [e for e in run_dir.iterdir() if e.name != LOCK_FILE] if run_dir.exists() else []
    if force and old_files:
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        backup.mkdir()
        for entry in old_files:  # the lock this process holds stays where it is
            shutil.move(str(entry), backup / entry.name)
        print(f"kdnb: kept the previous run as {backup}")


def _set_checkpoint_aside(run_dir: Path) -> None:
    """Move an unfinished run's checkpoint (and its checksum) aside, so the run starts from epoch 1."""
    ckpt = run_dir / CHECKPOINT_FILE
    if not ckpt.exists():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for f in (ckpt, checksum_path(ckpt)):
        if f.exists():
            os.replace(f, f.with_name(f"{f.name}.set-aside-{stamp}"))
    print(f"kdnb: moved {ckpt} aside to {ckpt.name}.set-aside-{stamp}; {run_dir.name} starts again from epoch 1")


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
        # false once the run fell back to eager (a compile that failed even with a fresh cache)
        "compiled": cfg.compile,
        "compiled_bf16_check": ensure_compiled_bf16_correct()
        if cfg.compile and device.type == "cpu" and amp_active(device, cfg.amp) else None,
        "data_source": data.source,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": len(data.test_y),
    }


# ---------------------------------------------------------------- the loop
# Settings every member of a cohort must share: they fix the data, the batches and the teacher.
COHORT_SHARED = ("profile", "seed", "dataset", "data_dir", "val_size", "train_size", "split_seed", "synthetic_train",
                 "synthetic_test", "batch_size", "teacher_seed", "device", "threads", "compile", "amp",
                 "cuda_graphs", "fused_cohort", "eval_batch_size")


def train(
    cfg: RunConfig,
    runs_dir: str | os.PathLike = "runs",
    *,
    force: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    max_epochs: int | None = None,
    restart: bool = False,
    deadline: float | None = None,
) -> RunResult:
    """Train (or resume, or return the stored result of) the run that ``cfg`` describes.

    ``max_epochs`` stops after that many completed epochs *of this call* without finishing the
    run (for tests and benchmarks); a later call resumes where it stopped. ``restart``: an
    unfinished run starts again from epoch 1, its checkpoint moved aside (a damaged one, say).
    ``deadline`` (a :func:`time.monotonic` time): see :func:`train_cohort`.
    """
    return train_cohort([cfg], runs_dir, force=force, progress=progress, data=data, max_epochs=max_epochs,
                        restart=restart, deadline=deadline)[0]


@dataclass
class _Member:
    """One run of a cohort: its settings, folder, stepper and training state."""

    cfg: RunConfig
    run_dir: Path
    stepper: Stepper
    state: TrainingState
    amp: bool
    log: RunLog
    epochs_this_call: int = 0
    max_epochs: int | None = None  # this call stops after so many epochs (then it checkpoints)
    committed: int = 0  # the last epoch in checkpoint.pt

    @property
    def done(self) -> bool:
        return self.state.done(self.cfg.epochs)


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
    restart: bool = False,
    deadline: float | None = None,
) -> list[RunResult]:
    """Train several runs of one seed in lockstep: the same batches, one teacher pass per batch.

    A seed fixes batch order and augmentation for every configuration, so the students of a seed
    see the same images; in a cohort each batch is augmented once and the teacher's forward (and
    Grad-CAM, per cam stage some member needs) runs once for all of them, then each member takes
    its own step with its own generators. Every member writes exactly the run folder it would write
    alone, with the same numbers; finished members are skipped, interrupted ones resume from their
    own checkpoints (members behind catch up first), members leave on early stopping.

    Each member's folder is locked while it trains (:class:`kdnb.engine.runs.RunLock`): a run another
    process is training is refused with one line naming that process, or waited for with ``wait``.
    ``restart``: unfinished members start from epoch 1, their checkpoints moved aside (never deleted).
    ``deadline`` (a :func:`time.monotonic` time, for a time-limited machine): no epoch starts that
    the previous one's duration says would end after it; the members stop unfinished after a whole
    epoch, checkpointed, and a later call resumes them.
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
    if any(cfgs[i].compile for i in todo):  # before the first compile: kdnb's cache, beside the runs
        use_compile_cache(cache_for_runs(runs_dir))
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
            if restart:
                _set_checkpoint_aside(dirs[i])
        if todo:
            _train_locked(cfgs, todo, results, runs_dir, device, teacher, distilling, progress, data, max_epochs,
                          deadline)
    return [results[i] for i in range(len(cfgs))]


def _train_locked(cfgs: list[RunConfig], todo: list[int], results: dict[int, RunResult], runs_dir, device,
                  teacher: nn.Module | None, distilling: list[RunConfig], progress: bool, data: Dataset | None,
                  max_epochs: int | None, deadline: float | None = None) -> None:
    """The body of :func:`train_cohort` once its members' folders are locked and checked: load the
    data, build one stepper per member, train in lockstep, finish; fills ``results``."""
    first = cfgs[todo[0]]
    if data is None:
        data = load_dataset(first.data_dir, synthetic_train=first.synthetic_train, synthetic_test=first.synthetic_test,
                            dataset=first.dataset)
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
        state = _resume(stepper, run_dir, progress, train_command(cfg, runs_dir, "--restart"))
        if state is not None:
            _check_same_arithmetic(run_dir, cfg, device, train_command(cfg, runs_dir, "--restart"), progress)
        if state is None:
            state = TrainingState()
            write_json(run_dir / CONFIG_FILE, {**_provenance(cfg, device, data, len(train_y), len(val_y)),
                                               "cohort": cohort})
        members.append(_Member(cfg, run_dir, stepper, state, amp_active(device, cfg.amp),
                               RunLog(run_dir, first_epoch=state.epoch + 1), max_epochs=max_epochs,
                               committed=state.epoch))

    t_start = time.perf_counter()
    step = None
    last_epoch = 0.0  # the last epoch's seconds: what the deadline check expects the next to take
    while True:
        running = [m for m in members if not m.done and (max_epochs is None or m.epochs_this_call < max_epochs)]
        if not running:
            break
        behind = min(m.state.epoch for m in running)  # members behind catch up before the others move
        group = [m for m in running if m.state.epoch == behind]
        if step is None or step.steppers != [m.stepper for m in group]:  # a new group (a member left or caught up):
            # a new step and graph (the old one would also update the members that left); the old
            # one goes first, so its graph's memory is free for the new capture
            step = None
            step = make_cohort_step([m.stepper for m in group], prepared, train_x, train_y, device, first.cuda_graphs,
                                    first.fused_cohort, progress)
            if first.cuda_graphs and device.type == "cuda" and not step.graphs and progress:
                print(f"kdnb: {', '.join(m.cfg.run_name for m in group)}: masks drawn on the host, "
                      "so these steps run without CUDA graphs")
        if deadline is not None and time.monotonic() + last_epoch > deadline:
            if progress:
                print(f"kdnb: time is up: {', '.join(m.cfg.run_name for m in running)} stop after epoch {behind} "
                      "(checkpointed; a later call resumes them)")
            break
        started = time.monotonic()
        _train_epoch(step, group, len(train_y), val_x, val_y, progress)
        last_epoch = time.monotonic() - started
    seconds = time.perf_counter() - t_start
    for i, m in zip(todo, members):
        if not m.done:
            if m.state.epoch > m.committed:  # a loop stopped between checkpoints (a deadline): save it
                _commit(m)
            results[i] = RunResult(m.run_dir, m.cfg, m.state.history, {"finished": False, "epochs_run": m.state.epoch})
            m.log.close()
        else:
            results[i] = _finish(m.run_dir, m.cfg, m.stepper.student, m.state, data, device, m.cfg.needs_teacher,
                                 seconds)
            m.log.finish(m.cfg.to_dict(), results[i].metrics)


CHECKPOINT_KEYS = ("model", "objective", "optimizer", "scheduler", "gen", "mask_gen", "torch_rng", "state")


def _resume(stepper: Stepper, run_dir: Path, progress: bool, restart: str) -> TrainingState | None:
    """Load ``run_dir``'s checkpoint into ``stepper``; its training state, or None when there is none.
    A damaged, untrusted or foreign checkpoint is :class:`DamagedFile` naming ``restart``, the command
    that starts the run again."""
    ckpt_path = run_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        return None
    fix = f"start the run again with `{restart}` (moves it aside, never deletes it)"
    # on the CPU: generator states must stay there; modules copy to their device
    ck = load_checkpoint(ckpt_path, fix, required=CHECKPOINT_KEYS)
    try:
        stepper.student.load_state_dict(ck["model"])
        stepper.objective.load_state_dict(ck["objective"])
        stepper.opt.load_state_dict(ck["optimizer"])
        if stepper.sched is not None:
            stepper.sched.load_state_dict(ck["scheduler"])
        stepper.gen.set_state(ck["gen"])
        stepper.mask_gen.set_state(ck["mask_gen"])
        torch.set_rng_state(ck["torch_rng"])
        state = TrainingState.from_dict(ck["state"])
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise DamagedFile(f"{ckpt_path} does not fit this run's network, optimiser or state "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}): {fix}") from None
    if progress:
        print(f"kdnb: resuming {run_dir} after epoch {state.epoch}")
    return state


def _train_epoch(step: CohortStep, group: list[_Member], n_train: int, val_x: torch.Tensor, val_y: torch.Tensor,
                 progress: bool) -> None:
    """One epoch of every member of ``group`` (all at the same epoch, so on the same batches),
    each step taken by ``step``, the group's :class:`CohortStep`."""
    lead = group[0]
    epoch = lead.state.epoch + 1
    # Each member draws its own plan from its own generator, exactly as alone (so its saved
    # generator state is its own); members at one epoch have equal generators, so equal plans.
    plans = [plan_epoch(n_train, m.cfg.batch_size, m.stepper.gen) for m in group]
    step.start_epoch(plans[0], epoch)
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
    if isinstance(step, FusedCohortStep):
        step.end_epoch()  # the fused tensors back into the members' steppers (validation, checkpoints)
    train_seconds = time.perf_counter() - t0
    split = step.clock.read()
    for i, m in enumerate(group):
        cost = {"own_seconds": split[1][i] if split else None, "shared_seconds": split[0] if split else None,
                "timed_steps": split[2] if split else None, "cohort_size": len(group)}
        _end_epoch(m, epoch, n, n * lead.cfg.batch_size, train_seconds, cost, val_x, val_y, progress)


def _end_epoch(m: _Member, epoch: int, n: int, seen: int, train_seconds: float, cost: dict[str, Any],
               val_x: torch.Tensor, val_y: torch.Tensor, progress: bool) -> None:
    """Validate one member, update its early-stopping state, and (see :func:`_commits`) checkpoint it
    and write its history.

    ``train_seconds`` is the wall time of the (shared) epoch: in a cohort, every member's. ``cost``
    splits it (:class:`~kdnb.engine.step.StepClock`): the member's ``own_seconds`` (its forward,
    backward and update), the ``shared_seconds`` of the batch and teacher pass the whole cohort of
    ``cohort_size`` used, over ``timed_steps`` steps (None where a CUDA graph step could not be split)."""
    cfg, stepper, state = m.cfg, m.stepper, m.state
    val_loss, val_acc = evaluate(stepper.student, val_x, val_y, cfg.eval_batch_size, cfg.amp, stepper.normalize)
    avg = (stepper.sums / max(n, 1)).tolist()
    mask_share = float(stepper.mask_share) / max(n, 1)
    # null for masks without a cam (histories written before this statistic lack the key: read as NaN)
    cam_short_share = float(stepper.cam_short_share) / max(n, 1) if cfg.needs_cam else None
    if cfg.needs_cam and cfg.mask_mode != "none" and mask_share == 0.0:
        raise TrainingError(
            f"every causal mask of epoch {epoch} was empty (the teacher's Grad-CAM was zero everywhere), so "
            "FA/AT transferred nothing: check the teacher checkpoint, or try compile=false / amp=false")
    terms = term_names()
    record = {"epoch": epoch, "train_loss": avg[len(terms)],
              **{f"train_{t}": avg[i] for i, t in enumerate(terms)},
              "train_acc": stepper.sums[-1].item() / max(seen, 1), "val_loss": val_loss, "val_acc": val_acc,
              "mask_share": mask_share, "cam_short_share": cam_short_share,
              "lr": stepper.opt.param_groups[0]["lr"], "seconds": train_seconds,
              "images_per_s": seen / max(train_seconds, 1e-9), "steps": n, **cost}
    if cfg.compile and not stepper.compiled:
        _record_eager(m.run_dir)
    state.end_epoch(record, cfg.patience,
                    lambda: {"model": _cpu_state(stepper.student), "objective": _cpu_state(stepper.objective)})
    m.log.epoch(record)  # before the commit: a resumed run never logs a committed epoch again
    m.epochs_this_call += 1
    if _commits(m, epoch):
        _commit(m)
    if progress:
        print(f"{cfg.run_name} seed{cfg.seed} epoch {epoch:>2}: train loss {record['train_loss']:.4f}  "
              f"val loss {val_loss:.4f}  val acc {val_acc:.4f}  {record['images_per_s']:.0f} img/s  "
              f"{train_seconds:.1f} s" + ("  (early stop)" if state.stopped_early else ""))


def _commits(m: _Member, epoch: int) -> bool:
    """Whether ``epoch`` is checkpointed: every ``checkpoint_every``-th, the run's last (its end or
    an early stop: ``best.pt`` is written from it) and the last of this call (``max_epochs``), so
    only a killed process loses epochs, at most ``checkpoint_every - 1``."""
    return (epoch % m.cfg.checkpoint_every == 0 or m.done
            or (m.max_epochs is not None and m.epochs_this_call >= m.max_epochs))


def _commit(m: _Member) -> None:
    """Save the member's checkpoint, then its history (the history on disk is the checkpoint's:
    a resumed run redoes and rewrites the epochs after it)."""
    stepper, state = m.stepper, m.state
    save_torch(m.run_dir / CHECKPOINT_FILE, {
        "model": stepper.student.state_dict(), "objective": stepper.objective.state_dict(),
        "optimizer": stepper.opt.state_dict(),
        "scheduler": stepper.sched.state_dict() if stepper.sched is not None else None, "gen": stepper.gen.get_state(),
        "mask_gen": stepper.mask_gen.get_state(), "torch_rng": torch.get_rng_state(), "state": state.to_dict(),
    })
    write_json(m.run_dir / HISTORY_FILE, state.history)
    m.committed = state.epoch


def _check_same_arithmetic(run_dir: Path, cfg: RunConfig, device: torch.device, restart: str, progress: bool) -> None:
    """Refuse to resume a run in another precision than it started in: bf16 autocast is active only
    on CPUs with AMX (and on CUDA), so a run begun on one machine and continued on another would mix
    bf16 and fp32 epochs. Another CPU model with the same precision is noted in one line (its
    kernels may round differently), not refused."""
    saved = read_json(run_dir / CONFIG_FILE)
    here = amp_active(device, cfg.amp)
    if saved.get("amp_active") is not None and saved["amp_active"] != here:
        def name(active: bool) -> str:
            return "bf16 autocast" if active else "fp32"

        raise TrainingError(
            f"{run_dir} trained its first epochs in {name(saved['amp_active'])} on {saved.get('device_name')}, and "
            f"{device_name(device)} would continue it in {name(here)}, mixing precisions in one run: resume it on "
            f"a machine like the first, or start it again here with `{restart}`")
    if progress and saved.get("device_name") not in (None, device_name(device)):
        print(f"kdnb: note: {run_dir} began on {saved['device_name']} and continues on {device_name(device)} "
              "(same precision; CPU kernels may round differently)")


def _record_eager(run_dir: Path) -> None:
    """Note in the run's provenance (config.json) that it trained eager: its compile had failed."""
    saved = read_json(run_dir / CONFIG_FILE)
    if saved.get("compiled") is not False:
        write_json(run_dir / CONFIG_FILE, {**saved, "compiled": False})


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
    term = (*term_names(), "total")[i]
    engine = [name for name, on in (("compile", cfg.compile), ("amp", amp)) if on]
    check = (f"first rerun with {' and '.join(f'--set {k}=false' for k in engine)} to rule out a compiler or "
             "bf16 fault, then " if engine else "")
    raise TrainingError(
        f"loss term '{term}' became NaN/inf at epoch {epoch}, step {step}: {check}lower lr or the term's weight "
        "(checkpoint.pt holds the last checkpointed epoch)"
    )


def _total(history: list[dict[str, Any]], key: str) -> float | None:
    """Sum of ``key`` over the epochs, or None when an epoch lacks it (unsplit CUDA graph steps,
    histories written before kdnb measured it)."""
    values = [h.get(key) for h in history]
    return None if not values or any(v is None for v in values) else float(sum(values))


def _finish(run_dir: Path, cfg: RunConfig, model: nn.Module, state: TrainingState, data: Dataset,
            device: torch.device, distilled: bool, seconds: float) -> RunResult:
    """Evaluate the best-by-validation weights once on the test set; write best.pt then metrics.json."""
    model.load_state_dict(state.best["model"])
    save_torch(run_dir / BEST_FILE, {"model": state.best["model"], "objective": state.best["objective"],
                                     "epoch": state.best_epoch, "config": cfg.to_dict()})
    # fp32, as kdnb.evaluation measures every model: one test accuracy per model (validation may use bf16)
    test_loss, test_acc = evaluate(model, data.test_x.to(device), data.test_y.to(device), cfg.eval_batch_size, amp=False,
                                   normalize=data.normalize)
    best, seconds_per_epoch = state.best_record, sorted(h["seconds"] for h in state.history)
    own, shared = (_total(state.history, k) for k in ("own_seconds", "shared_seconds"))
    metrics = {
        "config": cfg.config, "run_name": cfg.run_name, "profile": cfg.profile, "seed": cfg.seed, "finished": True,
        "best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
        "val_loss": best["val_loss"], "val_acc": best["val_acc"], "test_loss": test_loss, "test_acc": test_acc,
        "params": count_parameters(model), "train_seconds": sum(seconds_per_epoch),
        "median_epoch_seconds": seconds_per_epoch[len(seconds_per_epoch) // 2],
        # the run's own compute and the shared (teacher, batch) time of its cohort; None if not measured
        "own_train_seconds": own, "shared_train_seconds": shared,
        "teacher_seed": cfg.teacher_seed if distilled else None,
    }
    write_json(run_dir / METRICS_FILE, metrics)
    return RunResult(run_dir, cfg, state.history, metrics)
