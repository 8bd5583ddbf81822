"""The steps of the series and what executes one: the one module the pipeline (which plans the
steps), the job graph (:mod:`kdnb.jobs`) and the executors (:mod:`kdnb.executors`) import, so
none of them imports another to reach a step (no import cycle among them).

A :class:`Step` is one execution: a notebook run with papermill in a fresh ``python3`` kernel
whose working directory is ``notebooks/``, or (``configs`` set) the training of a cohort of runs in
a fresh process. :func:`execute_step` runs it here; a failure is one :class:`PipelineError` line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.config import ConfigError
from .engine.errors import StorageError, TrainingError, is_storage_fault, storage_error
from .report.notebook import context
from .report.series import NOTEBOOKS

KERNEL = "python3"


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


