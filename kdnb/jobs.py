"""The pipeline's steps as a small dependency graph of jobs, and the one function every executor
runs for a job (in this process, a local worker process, a Ray task or a Slurm job).

A job is one step (:mod:`kdnb.steps`) of :func:`kdnb.pipeline.plan` (a notebook, or a seed's cohort
training, or with ``train_only`` the teacher's training) and
waits only for the steps whose output it reads: the teacher (01) needs the data notebook (00); a
seed's cohort needs the teacher; a seed's student notebooks need that cohort (or, trained one at a
time, the teacher); 07 needs every student run, 08 those and 07's distances, 09 the KD+FA+AT runs.
A step whose producer is not in the plan (``--only 03``) depends on nothing and finds its inputs
on disk, as before. A failed job is reported and only the jobs below it are skipped, except after a
storage fault (a full or read-only disk), which every job would meet: then no other job starts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .engine.config import TEACHER
from .engine.runs import METRICS_FILE, run_path
from .report.series import STUDENT_NOTEBOOKS
from .steps import PipelineError, Step, execute_step

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass
class Job:
    """One step of the plan with the indices (plan positions) of the jobs it waits for."""

    index: int
    step: Step
    deps: tuple[int, ...] = ()
    needs_teacher: bool = False  # the teacher is trained by a job of this graph: check it is visible

    @property
    def name(self) -> str:
        return f"{self.step.notebook} ({self.step.label})" if self.step.label else self.step.notebook

    @property
    def slug(self) -> str:
        """A file name for the job's log."""
        seed = self.step.parameters.get("seed") if self.step.label else None
        return self.step.notebook + (f"_seed{seed}" if seed is not None else "")


@dataclass
class JobResult:
    """How a job ended, for the end summary and the exit status."""

    name: str
    status: str
    seconds: float = 0.0
    executor: str = "local"
    device: str = ""
    error: str = ""  # one line: notebook, cell and error (or what it waited for, when skipped)
    lines: list[str] = field(default_factory=list)  # what a cohort trained
    stop: bool = False  # a storage fault: the pipeline starts no other job

    @property
    def ok(self) -> bool:
        return self.status == DONE


def _trains(step: Step, cohort_seeds: set) -> bool:
    """Whether ``step`` trains student runs (a cohort, or a student notebook no cohort covers)."""
    if step.configs:
        return step.configs != (TEACHER,)
    return step.notebook in STUDENT_NOTEBOOKS and step.parameters.get("seed") not in cohort_seeds


def graph(steps: Sequence[Step]) -> list[Job]:
    """The jobs of ``steps`` (in plan order, which is a valid order to run them one at a time)."""
    def find(name: str) -> list[int]:
        return [i for i, s in enumerate(steps) if s.notebook == name]

    # the teacher: its notebook, or (a plan without notebooks) the step that trains it
    data = find("00_setup_and_data")
    teacher = find("01_train_teacher") or [i for i, s in enumerate(steps) if s.configs == (TEACHER,)]
    upstream = teacher or data  # what a training step reads first
    cohort_seeds = {s.parameters["seed"] for s in steps if s.configs and s.configs != (TEACHER,)}
    trainers = [i for i, s in enumerate(steps) if _trains(s, cohort_seeds)]
    jobs = []
    for i, s in enumerate(steps):
        if s.notebook == "00_setup_and_data":
            deps = []
        elif i in teacher:
            deps = data
        elif s.configs:
            deps = upstream
        elif s.notebook in STUDENT_NOTEBOOKS:
            seed = s.parameters.get("seed")
            deps = [j for j in trainers if steps[j].configs and steps[j].parameters["seed"] == seed] or upstream
        elif s.notebook == "09_mask_ablation":
            deps = [j for j in trainers if "kd_fa_at" in (steps[j].configs or (STUDENT_NOTEBOOKS.get(steps[j].notebook),))]
            deps = deps or upstream
        else:  # 07 and 08 read every student run; 08 also 07's attention distances and 09's runs (RQ2)
            inputs_of_08 = find("07_masks_and_attention") + find("09_mask_ablation")
            deps = (trainers or upstream) + (inputs_of_08 if s.notebook == "08_results" else [])
        jobs.append(Job(i, s, tuple(sorted(set(deps))), needs_teacher=bool(teacher) and i > teacher[0]))
    return jobs


def device_label(env: dict[str, str] | None = None) -> str:
    """Where a job ran, for the summary: its host, pinned GPUs and CPU threads."""
    env = os.environ if env is None else env
    gpus, threads = env.get("CUDA_VISIBLE_DEVICES"), env.get("OMP_NUM_THREADS")
    where = f"GPU {gpus}" if gpus else "CPU"
    return f"{socket.gethostname()} {where}" + (f", {threads} thread{'s' * (threads != '1')}" if threads else "")


def check_visible(job: Job) -> None:
    """Fail in one line when this node cannot see the runs directory or the teacher (a cluster
    whose runs directory is not on storage every node sees)."""
    p = job.step.parameters
    runs = Path(p["runs_dir"]) / p["profile"]
    where = f"node {socket.gethostname()} cannot see"
    if not (runs / "notebooks").is_dir():
        raise PipelineError(f"{job.name}: {where} the runs directory {runs}: put it on storage every node sees")
    teacher = run_path(p["runs_dir"], p["profile"], "teacher", 0) / METRICS_FILE
    if job.needs_teacher and not teacher.is_file():
        raise PipelineError(f"{job.name}: {where} the teacher run {teacher.parent}: put the runs directory on "
                            "storage every node sees")


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set for the job (its kernels and the cohort's process inherit it), the previous values
    back afterwards: a job run in the pipeline's own process leaves nothing behind."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _output_to(log: Path | None) -> Iterator[None]:
    """Send this process's stdout/stderr (and its children's: kernels, the cohort's process) to
    ``log``, so jobs running side by side do not interleave their progress output."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def run_job(job: Job, env: dict[str, str] | None = None, log: str | None = None, executor: str = "local",
            upstream: Sequence[JobResult] = (), verbose: bool = True, remote: bool = False) -> JobResult:
    """Execute one job here and say how it ended; never raises for the job's own failure.

    ``env`` is applied before anything starts (the kernels and the cohort's process inherit it:
    ``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``); ``upstream``: the results of the jobs it waits
    for (a failed one skips this job); ``log``: a file for the job's output; ``remote``: the job may
    run on another node than the pipeline, so check first that it sees the runs."""
    if any(not r.ok for r in upstream):
        return _skip(job, upstream, executor)
    t0 = time.perf_counter()
    with _environment(env or {}), _output_to(Path(log) if log else None):
        result = JobResult(job.name, DONE, executor=executor, device=device_label())
        try:
            if remote:
                check_visible(job)
            result.lines = execute_step(job.step, verbose)
        except PipelineError as exc:
            result.status, result.error, result.stop = FAILED, str(exc), exc.stop
        except Exception as exc:  # a bad setting found late, say: still this job's failure only
            result.status, result.error = FAILED, f"{job.name} failed: {type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - t0
    return result


def run_job_or_raise(job: Job, env: dict[str, str] | None = None, log: str | None = None,
                     executor: str = "slurm") -> JobResult:
    """:func:`run_job` (on a node of a cluster) for engines whose dependencies need a failed job to
    fail (Slurm ``afterok``)."""
    result = run_job(job, env, log, executor, remote=True)
    if not result.ok:
        raise PipelineError(result.error)
    return result


def _skip(job: Job, upstream: Sequence[JobResult], executor: str) -> JobResult:
    failed = ", ".join(r.name for r in upstream if not r.ok)
    return JobResult(job.name, SKIPPED, executor=executor, error=f"needs {failed}")


def blocked(job: Job, results: dict[int, JobResult], executor: str) -> JobResult | None:
    """The skipped result of ``job`` when a job it waits for did not finish, or any job met a
    storage fault (the pipeline stops there), else None."""
    stopped = [r.name for r in results.values() if r.stop]
    if stopped:
        return JobResult(job.name, SKIPPED, executor=executor,
                         error=f"not started: the pipeline stopped at the storage fault of {stopped[0]}")
    upstream = [results[d] for d in job.deps if d in results]
    return _skip(job, upstream, executor) if any(not r.ok for r in upstream) else None
