"""The ``slurm`` executor: each job a Slurm job submitted with submitit, running the same job
function as every other executor.

On Slurm all jobs are submitted at once and wait for their upstream jobs with ``afterok``
dependencies (a failed job fails its Slurm job, so Slurm cancels the jobs below it:
``kill-on-invalid-dep``). submitit's ``local`` cluster (``--submitit-cluster local``, for tests
and for trying a setup) has no dependencies: there a job is submitted once its upstream jobs have
finished. Logs go to ``<runs>/<profile>/logs/submitit/``, which, like the runs, must be on storage
every node sees. Each job asks for as many CPUs as its runs use threads (``cpus_per_task``;
``--cpus-per-job`` to ask otherwise) and runs them with that count, whatever the node has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..jobs import FAILED, Job, JobResult, blocked, run_job_or_raise
from . import outcome, undersized

EXECUTOR = "slurm"


def _error(job: Job, exc: Exception) -> str:
    """The job's own one-line failure from submitit's report (which holds the remote traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    mine = [ln.split("PipelineError: ", 1)[1] for ln in lines if "PipelineError: " in ln]
    return mine[-1] if mine else f"{job.name}: {lines[-1] if lines else type(exc).__name__}"


def run(jobs: list[Job], options: dict[str, Any], log_dir: Path, verbose: bool) -> list[JobResult]:
    import submitit

    executor = submitit.AutoExecutor(folder=log_dir / "submitit", cluster=options.get("submitit_cluster"))
    threads = options["threads"]
    cpus, gpus = options.get("cpus_per_job", threads), options.get("gpus_per_job", 0)
    if (line := undersized(EXECUTOR, cpus, threads)) is not None:
        print(line, flush=True)
    executor.update_parameters(timeout_min=options.get("slurm_minutes", 24 * 60), cpus_per_task=cpus,
                               gpus_per_node=int(gpus) or None, slurm_partition=options.get("slurm_partition"))
    on_slurm = executor.cluster == "slurm"
    label = EXECUTOR if on_slurm else f"{EXECUTOR}({executor.cluster})"
    env = {"OMP_NUM_THREADS": str(threads)}
    submitted: dict[int, Any] = {}
    results: dict[int, JobResult] = {}

    def collect(job: Job) -> None:
        try:
            results[job.index] = submitted[job.index].result()
        except Exception as exc:  # the job failed (its error comes back), or Slurm cancelled it
            results[job.index] = JobResult(job.name, FAILED, executor=label, error=_error(job, exc))
        if results[job.index].status == FAILED and (skip := blocked(job, results, label)) is not None:
            results[job.index] = skip
        print(f"[{job.index + 1}/{len(jobs)}] {outcome(results[job.index])}", flush=True)

    for job in jobs:
        if on_slurm:
            after = ":".join(submitted[d].job_id for d in job.deps)
            executor.update_parameters(slurm_additional_parameters=(
                {"dependency": f"afterok:{after}", "kill-on-invalid-dep": "yes"} if after else {}))
        else:
            for d in job.deps:
                if d not in results:
                    collect(next(j for j in jobs if j.index == d))
            if (skip := blocked(job, results, label)) is not None:
                results[job.index] = skip
                print(f"[{job.index + 1}/{len(jobs)}] {outcome(skip)}", flush=True)
                continue
        submitted[job.index] = executor.submit(run_job_or_raise, job, env, None, label)
        print(f"[{job.index + 1}/{len(jobs)}] {job.name} submitted as job {submitted[job.index].job_id}", flush=True)
    for job in jobs:
        if job.index not in results:
            collect(job)
    return [results[j.index] for j in jobs]
