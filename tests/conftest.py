"""Shared fixtures.

- ``smoke_runs``: a runs directory with a finished ``smoke`` teacher (seed 0), trained once per session
  (by the first xdist worker that needs it; each worker gets its own copy).
- ``cli_env``: the environment for ``python -m kdnb`` subprocesses (the checkout importable).
- ``smoke_pipeline``: the whole notebook series run once per session (papermill, ``smoke`` profile)
  into a temporary directory; the pipeline test checks what it wrote and the nbval test re-executes
  every notebook against those finished runs, the reference check compares its runs with the recorded
  ones, and the scale-out tests run one of its notebooks under Ray and submitit, so nothing is trained
  twice. Set ``KDNB_TEST_RUNS_DIR`` to keep and
  reuse these runs between sessions (empty it after a change that alters the numbers: the tests
  compare fresh runs with them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]

# pytest-xdist (pyproject's addopts: one worker per core) runs tests side by side: each worker keeps
# to one thread (OMP_NUM_THREADS also for the kernels and commands it starts), so two workers never
# leave OpenMP threads spinning for a core the other holds. Runs train with their profile's threads.
# Inductor compiles in the same process (no pool of compile workers, each importing torch, per
# process that compiles): the other worker holds the second core anyway.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# The groups that take longest (seconds of work in figures/test_suite_*.log's --durations), handed
# out first: a worker that starts one last would keep the suite running long after the other is done.
LONGEST_FIRST = ("smoke_series", "test_default_engine", "test_scale_out", "test_cohort", "test_engine_train",
                 "test_speedups", "test_compile_cache")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Which tests share a worker (``--dist loadgroup``): every test of the session's smoke series
    (``smoke_pipeline``), which that worker then trains once, and otherwise each module's tests, so
    a module's fixtures (a trained or compiled network) are built once. The longest groups run first
    (in their own order; the rest keep theirs)."""
    group = {}
    for item in items:
        uses_series = "smoke_pipeline" in getattr(item, "fixturenames", ())
        group[item.nodeid] = "smoke_series" if uses_series else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group[item.nodeid]))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group[item.nodeid], len(rank)))


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """A runs folder of this worker's own holding the finished smoke teacher, which the first worker
    to need it trains (once per test session, under a lock) and every worker copies."""
    import shutil

    from filelock import FileLock

    from kdnb.engine.config import make_config
    from kdnb.engine.train import train

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "kdnb-smoke-teacher"
    runs = tmp_path_factory.mktemp("kdnb-smoke-teacher")
    with FileLock(f"{shared}.lock"):
        teacher = train(make_config("teacher", "smoke", 0), shared, progress=False).run_dir  # finished: read only
        shutil.copytree(teacher, runs / teacher.relative_to(shared))
    return runs


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory):
    from kdnb.pipeline import run_pipeline

    keep = os.environ.get("KDNB_TEST_RUNS_DIR")
    runs_dir = Path(keep) if keep else tmp_path_factory.mktemp("kdnb-smoke-runs")
    t0 = time.perf_counter()
    steps = run_pipeline(profile="smoke", seeds=[0], runs_dir=runs_dir, verbose=False, ablation=True)
    return SimpleNamespace(runs_dir=runs_dir.resolve(), profile="smoke", steps=steps,
                           figures_dir=runs_dir.resolve() / "smoke" / "figures", seconds=time.perf_counter() - t0)
