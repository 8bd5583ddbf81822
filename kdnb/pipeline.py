"""``python -m kdnb pipeline``: execute the notebook series in order with papermill.

Each notebook runs in a fresh ``python3`` kernel whose working directory is ``notebooks/``;
paths are passed as absolute parameters. The student notebooks (02–06) run once per seed. Every
executed copy is saved under ``<runs_dir>/<profile>/notebooks/``, the tables and figures under
``<runs_dir>/<profile>/figures/``: a run never overwrites the committed reference in ``figures/``
unless asked to with ``figures_dir="figures"`` (``--figures-dir figures``). Finished runs are
skipped and interrupted ones resumed by the engine, so rerunning the pipeline after a failure or a
kill only does the missing work. A failing notebook is reported in one line naming the notebook,
the cell, the line of the cell that raised and the error; the steps that do not need its output
still run (:mod:`kdnb.jobs`), and the pipeline ends with an error naming every failure.

The steps form a small dependency graph of jobs; an executor (:mod:`kdnb.executors`) runs them:
one after another in this process (the default, ``--jobs 1``), side by side on this machine's
GPUs or CPU cores (``--jobs N``), as Ray tasks, or as Slurm jobs through submitit.

By default the student configurations of a seed are trained first as one *cohort* (one process,
one teacher pass per batch for all of them, each run exactly as it would be alone; see
``kdnb.engine.train.train_cohort``); their notebooks then find the runs finished and show them.
``cohort=False`` (``--one-at-a-time``) lets each notebook train its own configuration instead.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine.config import PROFILES, TEACHER, ConfigError, make_config
from .engine.errors import is_storage_fault, storage_error
from .executors import check_executor, run_jobs
from .jobs import DONE, FAILED, SKIPPED, graph
from .report.notebook import figures_dir_for, share_compile_cache
from .report.series import NOTEBOOKS, STUDENT_NOTEBOOKS
from .steps import KERNEL, PipelineError, Step, cohort_configs, execute_step, failing_line, notebooks_dir, run_cohort

# The steps and what executes one live in kdnb.steps (which jobs and executors import too, so
# nothing imports the pipeline back); they stay importable from here, where they always were.
__all__ = ["KERNEL", "PipelineError", "Step", "cohort_configs", "execute_step", "failing_line", "notebooks_dir", "plan",
           "run_cohort", "run_pipeline"]

TRAINING_NOTEBOOK = "01_train_teacher"
# Studies beyond the series (teacher + five configurations + evaluation): run when asked for, with
# ``--ablation`` or by name in ``--only``, because they multiply the training cost.
OPTIONAL_NOTEBOOKS = ("09_mask_ablation",)
RESULTS_NOTEBOOK = "08_results"  # reads every other notebook's outputs, so it runs last


def _select(only: Sequence[str] | None, ablation: bool = False) -> list[str]:
    """The chosen notebooks in the order they run: the series' order, except that the results (08)
    run last, after the ablation (09) whose runs their RQ2 answer is built from."""
    if not only:
        chosen = [nb for nb in NOTEBOOKS if ablation or nb not in OPTIONAL_NOTEBOOKS]
    else:
        chosen = [nb for nb in NOTEBOOKS if any(nb.startswith(str(p)) for p in only)]
        unknown = [p for p in only if not any(nb.startswith(str(p)) for nb in NOTEBOOKS)]
        if unknown:
            raise ConfigError(f"--only {' '.join(map(str, unknown))}: no such notebook; allowed: {', '.join(NOTEBOOKS)}")
    return sorted(chosen, key=lambda nb: nb == RESULTS_NOTEBOOK)  # stable: only 08 moves, to the end


def plan(profile: str, seeds: Sequence[int], runs_dir: Path, data_dir: str | None, figures_dir: Path,
         notebooks: Sequence[str] | None = None, extra: dict[str, Any] | None = None,
         ablation: bool = False, cohort: bool = True, train_only: bool = False) -> list[Step]:
    """The executions, in order: notebooks (students once per seed) and, with ``cohort`` and two
    or more student notebooks chosen, one cohort training step per seed before the first of them.
    ``train_only``: only the training, no notebook: the teacher (when 01 is chosen) and each seed's
    cohort of the chosen student configurations, each trained exactly as its notebook would."""
    import papermill

    if train_only and ablation:  # 09 trains its variants itself: nothing here would, silently
        raise ConfigError("--train-only trains the teacher and each seed's cohort; the ablation's variants are "
                          "trained by its notebook: run --only 09 with the same --seeds instead")
    nb_dir = notebooks_dir()
    out_dir = runs_dir / profile / "notebooks"
    common = {"profile": profile, "runs_dir": str(runs_dir), "data_dir": data_dir, "figures_dir": str(figures_dir),
              **(extra or {})}
    selected = _select(notebooks, ablation)
    students = [STUDENT_NOTEBOOKS[nb] for nb in selected if nb in STUDENT_NOTEBOOKS]
    steps = []
    for name in selected:
        declared = papermill.inspect_notebook(str(nb_dir / f"{name}.ipynb"))
        params = {k: v for k, v in common.items() if k in declared}
        if "seeds" in declared:
            params["seeds"] = list(seeds)
        if train_only:
            defaults = {k: ast.literal_eval(v["default"]) for k, v in declared.items()}
            if name == TRAINING_NOTEBOOK:
                steps.append(Step(TEACHER, {**defaults, **params, "seed": 0}, out_dir, label="seed 0", configs=(TEACHER,)))
            elif STUDENT_NOTEBOOKS.get(name) == students[0]:
                steps += [Step("cohort", {**defaults, **params, "seed": int(s)}, out_dir,
                               label=f"seed {s}: {' '.join(students)}", configs=tuple(students)) for s in seeds]
            continue
        if name in STUDENT_NOTEBOOKS:
            if cohort and len(students) > 1 and STUDENT_NOTEBOOKS[name] == students[0]:
                # the notebook's own defaults (device, epochs, overrides) under what the pipeline passes
                defaults = {k: ast.literal_eval(v["default"]) for k, v in declared.items()}
                steps += [Step("cohort", {**defaults, **params, "seed": int(s)}, out_dir,
                               label=f"seed {s}: {' '.join(students)}", configs=tuple(students)) for s in seeds]
            for s in seeds:
                steps.append(Step(name, {**params, "seed": int(s)}, out_dir / f"{name}_seed{s}.ipynb", label=f"seed {s}"))
        else:
            if "seed" in declared:
                params["seed"] = int(min(seeds)) if name != TRAINING_NOTEBOOK else 0
            steps.append(Step(name, params, out_dir / f"{name}.ipynb"))
    return steps


def run_pipeline(
    profile: str = "cpu",
    seeds: Sequence[int] = (0,),
    runs_dir: str | os.PathLike = "runs",
    data_dir: str | os.PathLike | None = None,
    notebooks: Sequence[str] | None = None,
    figures_dir: str | os.PathLike | None = None,
    parameters: dict[str, Any] | None = None,
    verbose: bool = True,
    ablation: bool = False,
    cohort: bool = True,
    executor: str | None = None,
    scale: dict[str, Any] | None = None,
    train_only: bool = False,
) -> list[Step]:
    """Execute the series; return the executed steps with their wall times.

    ``notebooks``: name prefixes to run (e.g. ``["00", "01"]``); default the series 00–08, plus
    the mask ablation 09 with ``ablation``. ``figures_dir``: where tables and figures go, default
    ``<runs_dir>/<profile>/figures`` (``"figures"`` refreshes the committed reference). ``parameters``: extra
    values for every notebook that declares them (e.g. ``{"epochs": 1}``). Relative paths are
    taken relative to the current directory. ``verbose`` streams the notebooks' printed output
    (training progress) to this process's stdout/stderr. ``cohort``: train the student
    configurations of each seed together first (default), else each in its own notebook.
    ``executor``: ``local`` (default; ``$KDNB_EXECUTOR``), ``ray`` or ``slurm``, with its options in
    ``scale`` (see :mod:`kdnb.executors`): the steps run as a dependency graph of jobs, a failed job
    skips only the jobs that need its output, and the others go on. Every job gets the runs' own
    CPU thread count (the profile's, or ``overrides`` ``threads``), so the numbers do not depend on
    the executor. ``train_only``: only train the runs (the teacher, each seed's cohort), no notebooks.
    Raises :class:`PipelineError` at the end when a job failed, naming every failure.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    name, options = check_executor(executor, scale)
    # the runs' thread count and device (the profile's, or the series' overrides): every job gets them
    runs = make_config("baseline", profile, 0, (parameters or {}).get("overrides"))
    options = {**options, "threads": runs.threads, "device": (parameters or {}).get("device") or runs.device}
    seeds = sorted({int(s) for s in seeds})
    if not seeds or min(seeds) < 0:
        raise ConfigError("--seeds: give one or more seeds >= 0")
    runs_path = Path(runs_dir).expanduser().resolve()
    data = None if data_dir is None else (
        str(data_dir) if str(data_dir) == "synthetic" else str(Path(data_dir).expanduser().resolve()))
    if data is not None and data != "synthetic" and not Path(data).exists():
        raise ConfigError(f"--data-dir {data_dir}: no such directory")
    nb_dir = notebooks_dir()
    figs = figures_dir_for(profile, runs_path, figures_dir)
    steps = plan(profile, seeds, runs_path, data, figs, notebooks, parameters, ablation, cohort, train_only)
    share_compile_cache(runs_path)  # the kernels inherit it: one compile cache for the series
    try:
        (runs_path / profile / "notebooks").mkdir(parents=True, exist_ok=True)  # first step may be a cohort
    except OSError as exc:  # before any job: a read-only or full runs folder is one line
        if not is_storage_fault(exc):
            raise
        raise PipelineError(f"the pipeline cannot start: {storage_error(exc, runs_path / profile / 'notebooks')}",
                            stop=True) from None

    what = "training steps" if train_only else "notebook runs"
    print(f"kdnb pipeline: profile {profile}, seeds {' '.join(map(str, seeds))}, {len(steps)} {what}\n"
          f"  runs    {runs_path / profile}\n  figures {figs}\n  data    {data or 'profile default'}", flush=True)
    t_all = time.perf_counter()
    results = run_jobs(graph(steps), name, options, runs_path / profile / "logs", verbose)
    for step, result in zip(steps, results):
        step.seconds = result.seconds

    errors = [r.error for r in results if r.status == FAILED]
    skips = [r.name for r in results if r.status == SKIPPED]
    print("\nkdnb pipeline finished in " + _duration(time.perf_counter() - t_all)
          + (f": {len(errors)} failed, {len(skips)} skipped" if errors or skips else ""))
    ex, dev = (max((len(getattr(r, k)) for r in results), default=0) for k in ("executor", "device"))
    for r in results:
        print(f"  {r.seconds:8.1f} s  {r.status:7}  {r.executor:{ex}}  {r.device:{dev}}  {r.name}"
              + (f": {r.error}" if r.error else ""))
    table = figs / "results_table.md"
    if table.is_file():
        print(f"results table: {table}")
    print(f"figures:       {figs}\nnotebooks:     {runs_path / profile / 'notebooks'}\nruns:          {runs_path / profile}")
    if figs != nb_dir.parent / "figures":
        print("the committed reference in figures/ is unchanged (--figures-dir figures refreshes it)")
    if any(r.status != DONE for r in results):
        stopped = any(r.stop for r in results)
        raise PipelineError("; ".join(errors) + (f" ({len(skips)} job(s) {'not started' if stopped else 'that need it skipped'}: "
                                                 f"{', '.join(skips)})" if skips else ""), stop=stopped)
    return steps


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"
