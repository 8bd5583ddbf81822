"""The ``ray`` executor: each job a Ray task on ``--ray-address`` (an existing cluster) or on a
local instance started for the run (or the one this process already started).

The dependencies are the tasks' own ObjectRefs: a task receives the results of the jobs it waits
for as arguments, so Ray starts it once they are done, and it skips itself if one failed. Ray
retries a task whose worker or node died (``--max-retries``); a failing notebook is not retried.
Every node must see the runs directory at the same path (shared storage): a job on a node that
cannot see it, or the teacher, fails with one line naming the path.

Each task asks Ray for as many CPUs as its runs use threads (``--cpus-per-job`` to ask otherwise),
so Ray itself runs no more jobs on a node than its CPUs give their threads; ``--jobs N`` caps the
jobs at once further (at most N tasks submitted and not finished: a task waiting for its upstream
tasks holds a place, so fewer may run at times).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.config import ConfigError
from ..jobs import FAILED, Job, JobResult, blocked, run_job
from . import outcome, undersized

EXECUTOR = "ray"


def _task(job: Job, threads: int, log: str, *upstream: JobResult) -> JobResult:
    """The body of a job's Ray task (on whichever node Ray picked; Ray pins its GPUs)."""
    return run_job(job, {"OMP_NUM_THREADS": str(threads)}, log, EXECUTOR, upstream, remote=True)


def run(jobs: list[Job], options: dict[str, Any], log_dir: Path, verbose: bool) -> list[JobResult]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=options.get("ray_address"), include_dashboard=False, log_to_driver=verbose)
    try:
        return _submit_and_collect(ray, jobs, options, log_dir, started)
    finally:
        if started:
            ray.shutdown()


def _submit_and_collect(ray, jobs: list[Job], options: dict[str, Any], log_dir: Path,
                        local_instance: bool = False) -> list[JobResult]:
    jobs_per_gpu = options.get("jobs_per_gpu") or 1
    resources = ray.cluster_resources()
    gpus = options.get("gpus_per_job", 1 / jobs_per_gpu if resources.get("GPU") else 0)
    threads = options["threads"]
    cpus = options.get("cpus_per_job", threads)
    if local_instance and cpus > resources.get("CPU", 0):  # Ray would wait for such a node forever
        raise ConfigError(f"ray executor: each job asks for {cpus} CPUs (its runs' threads) but this Ray instance has "
                          f"{resources.get('CPU', 0):g}: give --cpus-per-job {int(resources.get('CPU', 1))} (same "
                          "results, slower) or start Ray with more CPUs")
    if (line := undersized("ray", cpus, threads)) is not None:
        print(line, flush=True)
    cap = options.get("jobs") or len(jobs)
    task, request = ray.remote(_task), {"num_cpus": cpus, "num_gpus": gpus, "max_retries": options.get("max_retries", 3)}
    print(f"ray executor: {len(jobs)} tasks ({cpus:g} CPU, {gpus:g} GPU, {threads} threads each"
          f"{f'; at most {cap} at once' if cap < len(jobs) else ''}) on {resources}; each job's output in {log_dir}",
          flush=True)
    refs: dict[int, Any] = {}
    index: dict[Any, int] = {}
    by_index = {j.index: j for j in jobs}
    results: dict[int, JobResult] = {}
    unsubmitted, waiting = list(jobs), []
    while unsubmitted or waiting:
        while unsubmitted and len(waiting) < cap:  # plan order: a job's upstream refs exist when it is submitted
            job = unsubmitted.pop(0)
            refs[job.index] = task.options(**request, name=job.slug).remote(
                job, threads, str(log_dir / f"{job.slug}.log"), *(refs[d] for d in job.deps))
            index[refs[job.index]] = job.index
            waiting.append(refs[job.index])
        (ref,), waiting = ray.wait(waiting, num_returns=1)
        job = by_index[index[ref]]
        try:
            result = ray.get(ref)
        except Exception as exc:  # the task's worker died more often than --max-retries allows
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            result = JobResult(job.name, FAILED, executor=EXECUTOR, error=f"{job.name}: Ray task failed: {first}")
        results[job.index] = result
        print(f"[{job.index + 1}/{len(jobs)}] {outcome(result)}", flush=True)
    for job in jobs:  # a task whose upstream task died fails with that error: report it as skipped
        if results[job.index].status == FAILED and (skip := blocked(job, results, EXECUTOR)) is not None:
            results[job.index] = skip
    return [results[j.index] for j in jobs]
