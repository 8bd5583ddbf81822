"""The ``local`` executor: the jobs on this machine.

``--jobs 1`` (the default) runs them one after another in this process, in plan order, printing
exactly what the series always printed. ``--jobs N`` keeps up to N jobs running at once, each in
its own process: on GPUs each job is pinned to one (``CUDA_VISIBLE_DEVICES``, round robin; up to
``--jobs-per-gpu`` per GPU). Every job runs with the runs' own thread count (``OMP_NUM_THREADS``,
and training sets it): on the CPU that count is part of a run's numbers, so it is never split
between jobs. Where the cores cannot give N jobs that many threads each, fewer run at once
(``cores // threads``, at least one), which finishes first with the same numbers: oversubscribed
cores only add contention (measured in docs/scaling-out.md); one line says so. On GPUs the
host threads do not change a run's numbers and jobs are never held back. Each job's output goes to
``<runs>/<profile>/logs/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..engine.config import TEACHER, ConfigError
from ..jobs import FAILED, Job, JobResult, blocked, device_label, run_job
from . import outcome

EXECUTOR = "local"


def visible_gpus() -> list[str]:
    """The GPUs a job may be pinned to: ``$CUDA_VISIBLE_DEVICES``'s entries, else every CUDA device."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_cores() -> int:
    """The cores this process may use (its affinity: what a container or ``taskset`` allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def slots(jobs: int | None, jobs_per_gpu: int | None, threads: int,
          device: str = "auto") -> tuple[list[dict[str, str]], str | None]:
    """The environment of each concurrent job (its GPU, if any, and the runs' ``threads``) and, when
    fewer jobs run at once than asked for, the one line that says why. ``device``: the runs' device
    setting (``cpu`` keeps them off visible GPUs, so the cores decide)."""
    gpus = [] if device == "cpu" else visible_gpus()
    if jobs_per_gpu and not gpus:
        raise ConfigError("--jobs-per-gpu: no GPU is visible on this machine; use --jobs N to run N jobs on the CPU")
    n = jobs or (jobs_per_gpu * len(gpus) if jobs_per_gpu else 1)
    if jobs_per_gpu and n > jobs_per_gpu * len(gpus):
        raise ConfigError(f"--jobs {n} is more than --jobs-per-gpu {jobs_per_gpu} x {len(gpus)} visible GPU(s)")
    note = None
    fit = max(1, cpu_cores() // threads)
    if not gpus and threads > cpu_cores():
        note = (f"local executor: the runs use {threads} threads (their thread count, part of their numbers) on "
                f"{cpu_cores()} cores: the same numbers, slower; --set threads={cpu_cores()} trains other runs")
    if not gpus and n > fit:
        note = (f"local executor: --jobs {n} at {threads} threads each (the runs' thread count, part of their "
                f"numbers) needs {n * threads} cores, this machine has {cpu_cores()}: running {fit} job(s) at once, "
                "which finishes first with the same results (more would share cores and run slower)")
        n = fit
    return [{**({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}), "OMP_NUM_THREADS": str(threads)}
            for i in range(n)], note


def run(jobs: list[Job], options: dict[str, Any], log_dir: Path, verbose: bool) -> list[JobResult]:
    threads = options["threads"]
    envs, note = slots(options.get("jobs"), options.get("jobs_per_gpu"), threads, options.get("device", "auto"))
    if note:
        print(note, flush=True)
    if len(envs) == 1 and not options.get("jobs_per_gpu"):
        return _one_at_a_time(jobs, verbose, threads)
    return _pool(jobs, envs, log_dir)


def _header(job: Job, n: int) -> str:
    step = job.step
    if step.configs == (TEACHER,):
        runs = Path(step.parameters["runs_dir"]) / step.parameters["profile"]
        return f"\n[{job.index + 1}/{n}] training the teacher ({step.label}), run in {runs}"
    if step.configs:
        runs = Path(step.parameters["runs_dir"]) / step.parameters["profile"]
        return f"\n[{job.index + 1}/{n}] cohort training ({step.label}): one teacher pass per batch, runs in {runs}"
    return f"\n[{job.index + 1}/{n}] {job.name} → {step.output}"


def _one_at_a_time(jobs: list[Job], verbose: bool, threads: int | None = None) -> list[JobResult]:
    """In this process, in plan order, as the series always ran (a failed job skips its dependents);
    each job's kernels and processes get the runs' ``threads``, as in every other executor (None:
    this process's environment as it is)."""
    import torch

    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    device = device_label({"CUDA_VISIBLE_DEVICES": ",".join(visible_gpus())} if torch.cuda.is_available() else
                          env or {"OMP_NUM_THREADS": str(torch.get_num_threads())})
    results: dict[int, JobResult] = {}
    for job in jobs:
        tag = f"[{job.index + 1}/{len(jobs)}]"
        result = blocked(job, results, EXECUTOR)
        if result is None:
            print(_header(job, len(jobs)), flush=True)
            result = run_job(job, env, executor=EXECUTOR, verbose=verbose)
            result.device = device
            for line in result.lines:
                print(f"  {line}", flush=True)
        print(f"{tag} {outcome(result)}", flush=True)
        results[job.index] = result
    return [results[j.index] for j in jobs]


def _pool(jobs: list[Job], envs: list[dict[str, str]], log_dir: Path) -> list[JobResult]:
    """Up to ``len(envs)`` jobs at once, each in a fresh process (so a crash takes only that job down)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    spawn = multiprocessing.get_context("spawn")
    n, pending, free = len(jobs), list(jobs), list(range(len(envs)))
    results: dict[int, JobResult] = {}
    running: dict[Any, tuple[Job, int, ProcessPoolExecutor, float]] = {}
    print(f"local executor: up to {len(envs)} jobs at once ({', '.join(device_label(e) for e in envs)}); "
          f"each job's output in {log_dir}", flush=True)
    while pending or running:
        for job in list(pending):  # plan order: a failure reaches every job below it in one pass
            skip = blocked(job, results, EXECUTOR)
            if skip is not None:
                results[job.index] = skip
                pending.remove(job)
                print(f"[{job.index + 1}/{n}] {outcome(skip)}", flush=True)
        for job in [j for j in pending if all(d in results for d in j.deps)]:
            if not free:
                break
            slot, log = free.pop(0), log_dir / f"{job.slug}.log"
            pool = ProcessPoolExecutor(1, mp_context=spawn)
            future = pool.submit(run_job, job, envs[slot], str(log), EXECUTOR)
            running[future] = (job, slot, pool, time.perf_counter())
            pending.remove(job)
            print(f"[{job.index + 1}/{n}] {job.name} started ({device_label(envs[slot])}; output: {log})", flush=True)
        if not running:
            break
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            job, slot, pool, t0 = running.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                result = JobResult(job.name, FAILED, time.perf_counter() - t0, EXECUTOR, device_label(envs[slot]),
                                   f"{job.name}: its process died (killed, or out of memory); rerun the pipeline to "
                                   "resume from the last completed epochs")
            pool.shutdown()
            free.append(slot)
            results[job.index] = result
            print(f"[{job.index + 1}/{n}] {outcome(result)}", flush=True)
    return [results[j.index] for j in jobs]
