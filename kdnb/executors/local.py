"""The ``local`` executor: the jobs on this machine.

``--jobs 1`` (the default) runs them one after another in this process, in plan order, printing
exactly what the series always printed. ``--jobs N`` keeps up to N jobs running at once, each in
its own process: on GPUs each job is pinned to one (``CUDA_VISIBLE_DEVICES``, round robin; up to
``--jobs-per-gpu`` per GPU), and the CPU threads are split between the jobs (``OMP_NUM_THREADS``),
so N jobs never oversubscribe the cores (``--cpus-per-job`` sets the threads of each job instead).
Each job's output goes to ``<runs>/<profile>/logs/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..engine.config import ConfigError
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


def cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


def slots(jobs: int | None, jobs_per_gpu: int | None, threads: int | None = None) -> list[dict[str, str]]:
    """The environment of each concurrent job: its GPU (if any) and ``threads`` CPU threads (default
    its share of them). On the CPU the thread count is part of the numbers (float reductions split
    differently), so runs compare bit for bit only at equal threads per job."""
    gpus = visible_gpus()
    if jobs_per_gpu and not gpus:
        raise ConfigError("--jobs-per-gpu: no GPU is visible on this machine; use --jobs N to run N jobs on the CPU")
    n = jobs or (jobs_per_gpu * len(gpus) if jobs_per_gpu else 1)
    if jobs_per_gpu and n > jobs_per_gpu * len(gpus):
        raise ConfigError(f"--jobs {n} is more than --jobs-per-gpu {jobs_per_gpu} x {len(gpus)} visible GPU(s)")
    share = str(threads or max(1, cpu_threads() // n))
    return [{**({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}), "OMP_NUM_THREADS": share}
            for i in range(n)]


def run(jobs: list[Job], options: dict[str, Any], log_dir: Path, verbose: bool) -> list[JobResult]:
    envs = slots(options.get("jobs"), options.get("jobs_per_gpu"), options.get("cpus_per_job"))
    if len(envs) == 1 and not (options.get("jobs_per_gpu") or options.get("cpus_per_job")):
        return _one_at_a_time(jobs, verbose)
    return _pool(jobs, envs, log_dir)


def _header(job: Job, n: int) -> str:
    step = job.step
    if step.configs:
        runs = Path(step.parameters["runs_dir"]) / step.parameters["profile"]
        return f"\n[{job.index + 1}/{n}] cohort training ({step.label}): one teacher pass per batch, runs in {runs}"
    return f"\n[{job.index + 1}/{n}] {job.name} → {step.output}"


def _one_at_a_time(jobs: list[Job], verbose: bool) -> list[JobResult]:
    """In this process, in plan order, as the series always ran (a failed job skips its dependents)."""
    import torch

    device = device_label({"CUDA_VISIBLE_DEVICES": ",".join(visible_gpus())} if torch.cuda.is_available() else
                          {"OMP_NUM_THREADS": str(cpu_threads())})
    results: dict[int, JobResult] = {}
    for job in jobs:
        tag = f"[{job.index + 1}/{len(jobs)}]"
        result = blocked(job, results, EXECUTOR)
        if result is None:
            print(_header(job, len(jobs)), flush=True)
            result = run_job(job, executor=EXECUTOR, verbose=verbose)
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
