"""Shared fixtures.

- ``smoke_runs``: a runs directory with a finished ``smoke`` teacher (seed 0), trained once per session.
- ``cli_env``: the environment for ``python -m kdnb`` subprocesses (the checkout importable).
- ``smoke_pipeline``: the whole notebook series run once per session (papermill, ``smoke`` profile)
  into a temporary directory; the pipeline test checks what it wrote and the nbval test re-executes
  every notebook against those finished runs, and the scale-out tests compare the runs other
  executors train with its runs, so nothing is trained twice. Set ``KDNB_TEST_RUNS_DIR`` to keep and
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
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Which tests share a worker (``--dist loadgroup``): every test of the session's smoke series
    (``smoke_pipeline``), which that worker then trains once, and otherwise each module's tests, so
    a module's fixtures (a trained or compiled network) are built once."""
    for item in items:
        uses_series = "smoke_pipeline" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("smoke_series" if uses_series else item.module.__name__))


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    from kdnb.engine.config import make_config
    from kdnb.engine.train import train

    runs = tmp_path_factory.mktemp("kdnb-smoke-teacher")
    train(make_config("teacher", "smoke", 0), runs, progress=False)
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
