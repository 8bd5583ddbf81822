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
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.config import PROFILES, ConfigError
from .engine.errors import StorageError, TrainingError, is_storage_fault, storage_error
from .report.notebook import context, figures_dir_for, share_compile_cache
from .report.series import NOTEBOOKS, STUDENT_NOTEBOOKS

KERNEL = "python3"
# Studies beyond the series (teacher + five configurations + evaluation): run when asked for, with
# ``--ablation`` or by name in ``--only``, because they multiply the training cost.
OPTIONAL_NOTEBOOKS = ("09_mask_ablation",)
RESULTS_NOTEBOOK = "08_results"  # reads every other notebook's outputs, so it runs last


class PipelineError(TrainingError):
    """A notebook of the pipeline failed; the message names it, the cell and the error. ``stop``: a
    storage fault (a full or read-only disk), which every later job would meet too, so the pipeline
    starts no other job."""

    def __init__(self, message: str, stop: bool = False):
        super().__init__(message)
        self.stop = stop

    def __reduce__(self):  # crosses process boundaries (the local pool, Ray) with its flag
        return type(self), (str(self), self.stop)


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of this checkout."""
    d = Path(__file__).resolve().parent.parent / "notebooks"
    if not (d / f"{NOTEBOOKS[0]}.ipynb").is_file():
        raise PipelineError(f"notebook folder {d} not found: run the pipeline from a kdnb checkout (pip install -e .)")
    return d


@dataclass
class Step:
    """One execution of the series: a notebook, or (``configs`` set) the cohort training of a
    seed's student configurations that precedes their notebooks."""

    notebook: str
    parameters: dict[str, Any]
    output: Path
    seconds: float = 0.0
    label: str = ""
    configs: tuple[str, ...] = ()


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
         ablation: bool = False, cohort: bool = True) -> list[Step]:
    """The executions, in order: notebooks (students once per seed) and, with ``cohort`` and two
    or more student notebooks chosen, one cohort training step per seed before the first of them."""
    import papermill

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
                params["seed"] = int(min(seeds)) if name != "01_train_teacher" else 0
            steps.append(Step(name, params, out_dir / f"{name}.ipynb"))
    return steps


def cohort_configs(step: Step) -> list:
    """The run settings of a cohort step: exactly those its student notebooks will build from the
    same parameters (``nb.context`` from ``notebooks/``), so they find the runs finished."""
    p = step.parameters
    ctx = context(p["profile"], seed=p["seed"], data_dir=p.get("data_dir"), runs_dir=p["runs_dir"],
                  figures_dir=p.get("figures_dir"), epochs=p["epochs"], device=p["device"],
                  overrides=p["overrides"], base=notebooks_dir())
    return [ctx.config(c) for c in step.configs]


def _train_cohort_job(cfgs: list, runs_dir: str, progress: bool) -> list[str]:
    """Runs in a fresh process: train the cohort, return one summary line per member."""
    from .engine.train import train_cohort

    lines = []
    for r in train_cohort(cfgs, runs_dir, progress=progress):
        lines.append(f"{r.config.run_name} seed{r.config.seed}: best epoch {r.metrics['best_epoch']}, "
                     f"test acc {100 * r.metrics['test_acc']:.2f} %")
    return lines


def run_cohort(step: Step, verbose: bool = True) -> list[str]:
    """Train a cohort step's configurations in a fresh process (like a notebook's kernel: its own
    threads, compile state and memory), so a crash or kill takes only that process down.
    User errors come back as :class:`PipelineError` naming the seed; a finished member is skipped
    and an interrupted one resumes, exactly as the notebooks would do."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from .engine.data import DataError

    cfgs = cohort_configs(step)
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_train_cohort_job, cfgs, step.parameters["runs_dir"], verbose).result()
    except (ConfigError, DataError, TrainingError) as exc:
        raise PipelineError(f"cohort training ({step.label}) failed: {exc}", stop=isinstance(exc, StorageError)) from None
    except OSError as exc:
        if not is_storage_fault(exc):
            raise
        raise PipelineError(f"cohort training ({step.label}) failed: {storage_error(exc)}", stop=True) from None
    except BrokenProcessPool:
        raise PipelineError(f"cohort training ({step.label}): its process died (killed, or out of memory); "
                            "rerun the pipeline to resume from the last completed epochs") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# How IPython names a cell's frame: "Cell In[6], line 3" (IPython >= 8), "<ipython-input-6-...>" (older,
# the line then marked "----> 3").
_CELL_FRAME = re.compile(r"Cell In\[(\d+)\], line (\d+)|<ipython-input-(\d+)-\w+>")
_ARROW = re.compile(r"^-+>\s*(\d+)", re.M)


def failing_line(source: str, traceback: Sequence[str], exec_count: int | None = None) -> int | None:
    """The 1-based line of the cell ``source`` where the error was raised, read from the cell's
    frame in IPython's traceback (``None`` when it has none, e.g. MissingInput's one-line display).

    Taken from the first frame of the cell in the last exception of a chain: later frames of the
    same cell (a generator expression defined there) may point at other lines."""
    line = None
    for entry in traceback:
        text = _ANSI.sub("", entry)
        if "above exception" in text:  # "During handling of the above exception…": a chained one follows
            line = None
            continue
        m = _CELL_FRAME.search(text)
        if line is not None or m is None or (exec_count is not None and int(m[1] or m[3]) != exec_count):
            continue
        arrow = _ARROW.search(text)
        n = int(m[2]) if m[2] else int(arrow[1]) if arrow else 0
        if 1 <= n <= len(source.splitlines()):
            line = n
    return line


def _failure(step: Step, exc: Exception) -> PipelineError:
    """One line: notebook, cell, the cell's failing line and the error (papermill's execution
    error carries them), so the user sees which statement to look at without opening the copy.
    A storage fault (in a cell, or papermill writing the executed copy) stops the pipeline."""
    seed = f" ({step.label})" if step.label else ""
    if is_storage_fault(exc):  # papermill could not write the executed copy
        return PipelineError(f"notebook {step.notebook}{seed} failed: {storage_error(exc)}", stop=True)
    cell = getattr(exc, "exec_count", None)
    index = getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    src = getattr(exc, "source", "") or ""
    lines = src.splitlines()
    n = failing_line(src, getattr(exc, "traceback", None) or [], cell)
    # not in the traceback: quote the cell's first statement, which identifies the cell (no line number)
    quoted = n or next((i for i, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")), 0)
    quote = f" `{lines[quoted - 1].strip()[:60]}`" if quoted else ""
    where = f"cell {index}" if index is not None else "startup"
    if cell is not None:
        where += f" [{cell}]"
    if n is not None:
        where += f" line {n}"
    return PipelineError(f"notebook {step.notebook}{seed} failed in {where}{quote}: {ename}: {evalue.strip()} "
                         f"(executed copy: {step.output})", stop=ename == StorageError.__name__)


def execute_step(step: Step, verbose: bool = True) -> list[str]:
    """Run one step in this process exactly as the series always has: a cohort in a fresh process
    (its summary lines come back), a notebook with papermill in a fresh kernel whose working
    directory is ``notebooks/``. A failure is a :class:`PipelineError` of one line."""
    import papermill

    if step.configs:
        return run_cohort(step, verbose)
    nb_dir = notebooks_dir()
    try:
        papermill.execute_notebook(
            str(nb_dir / f"{step.notebook}.ipynb"), str(step.output), parameters=step.parameters,
            kernel_name=KERNEL, cwd=str(nb_dir), progress_bar=False,
            stdout_file=sys.stdout if verbose else None, stderr_file=sys.stderr if verbose else None,
        )
    except Exception as exc:  # the cell's error (PapermillExecutionError), kernel died, notebook unreadable, …
        raise _failure(step, exc) from None
    return []


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
    skips only the jobs that need its output, and the others go on.
    Raises :class:`PipelineError` at the end when a job failed, naming every failure.
    """
    from .executors import check_executor, run_jobs
    from .jobs import DONE, FAILED, SKIPPED, graph

    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    name, options = check_executor(executor, scale)
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
    steps = plan(profile, seeds, runs_path, data, figs, notebooks, parameters, ablation, cohort)
    share_compile_cache(runs_path)  # the kernels inherit it: one compile cache for the series
    try:
        (runs_path / profile / "notebooks").mkdir(parents=True, exist_ok=True)  # first step may be a cohort
    except OSError as exc:  # before any job: a read-only or full runs folder is one line
        if not is_storage_fault(exc):
            raise
        raise PipelineError(f"the pipeline cannot start: {storage_error(exc, runs_path / profile / 'notebooks')}",
                            stop=True) from None

    print(f"kdnb pipeline: profile {profile}, seeds {' '.join(map(str, seeds))}, {len(steps)} notebook runs\n"
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
