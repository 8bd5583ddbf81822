"""Executors of the pipeline's job graph (:mod:`kdnb.jobs`): ``local`` (this machine: one job at
a time in this process, or ``--jobs N`` side by side, pinned to GPUs or sharing the CPU cores),
``ray`` (Ray tasks on a cluster or a local instance) and ``slurm`` (submitit).

Each executor only maps jobs onto its engine, which does the scheduling: the local pool is the one
scheduler of our own. Every job runs :func:`kdnb.jobs.run_job`, so it executes its notebook exactly
as the sequential series does and leaves its executed copy.

A run's numbers do not depend on the executor: each job gets the runs' own CPU thread count
(``threads``, the profile's unless ``--set threads=N``; part of each run's identity), never a share
of the machine. An executor fits jobs to that count instead: the local pool runs fewer jobs at once
on a CPU that cannot give every job its threads, Ray and Slurm jobs ask for that many CPUs
(``--cpus-per-job`` asks for another number: then jobs may share cores, slower, same numbers).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..engine.config import ConfigError
from ..jobs import DONE, FAILED, Job, JobResult

EXECUTORS = ("local", "ray", "slurm")
# the package each executor needs beyond kdnb's own, and how to install it
PACKAGES = {"ray": ("ray", "pip install ray"), "slurm": ("submitit", "pip install submitit")}
COUNTS = ("jobs", "jobs_per_gpu", "cpus_per_job", "max_retries", "slurm_minutes")


def check_executor(name: str | None, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The executor's name (``name``, else ``$KDNB_EXECUTOR``, else ``local``) and its options,
    validated before any work starts: one line for each bad value or missing package."""
    name = name or os.environ.get("KDNB_EXECUTOR") or "local"
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name}: unknown executor; allowed: {', '.join(EXECUTORS)}")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    for key in COUNTS:
        low = 0 if key == "max_retries" else 1
        if key in options and (not isinstance(options[key], int) or options[key] < low):
            raise ConfigError(f"--{key.replace('_', '-')} {options[key]}: give a whole number >= {low}")
    if name == "slurm" and "jobs" in options:
        raise ConfigError("--jobs is for the local and ray executors; slurm runs as many jobs at once as the cluster "
                          "grants (each asks for --cpus-per-job CPUs, default the runs' threads, and --gpus-per-job GPUs)")
    if name == "local" and "cpus_per_job" in options:
        raise ConfigError("--cpus-per-job is for ray and slurm; a local job runs with the runs' own thread count, part "
                          "of their numbers (the profile's, or --set threads=N), and --jobs N runs fewer jobs at once "
                          "where the cores cannot give each job its threads")
    gpus = options.get("gpus_per_job")
    if gpus is not None and not (isinstance(gpus, (int, float)) and gpus >= 0):
        raise ConfigError(f"--gpus-per-job {gpus}: give a number >= 0 (a fraction shares a GPU)")
    if name in PACKAGES and importlib.util.find_spec(PACKAGES[name][0]) is None:
        module, pip = PACKAGES[name]
        raise ConfigError(f"--executor {name} needs {module}, which is not installed: {pip} "
                          "(or pip install -e '.[cluster]')")
    return name, options


def run_jobs(jobs: list[Job], name: str, options: dict[str, Any], log_dir: Path, verbose: bool) -> list[JobResult]:
    """Run ``jobs`` with executor ``name``; one result per job, in plan order. ``options["threads"]``:
    the runs' CPU thread count, which every job gets; ``options["device"]``: their device setting."""
    if name == "ray":
        from .ray import run
    elif name == "slurm":
        from .slurm import run
    else:
        from .local import run
    return run(jobs, options, log_dir, verbose)


def undersized(executor: str, cpus: int | float, threads: int) -> str | None:
    """The one line saying a job asks for fewer CPUs than its runs use threads (``--cpus-per-job``):
    the numbers are those of every other executor, only slower where jobs share cores."""
    if cpus >= threads:
        return None
    return (f"{executor} executor: each job asks for {cpus:g} CPU(s) but its runs use {threads} threads (their "
            "thread count, part of their numbers): results are unchanged, jobs may share cores and run slower")


def outcome(result: JobResult) -> str:
    """One line on how a job ended, printed as it ends."""
    if result.status == DONE:
        return f"{result.name} done in {result.seconds:.0f} s"
    if result.status == FAILED:
        return f"{result.name} FAILED after {result.seconds:.0f} s: {result.error}"
    return f"{result.name} skipped: {result.error}"
