"""Shared fixtures. ``smoke_pipeline`` runs the whole notebook series once per test session
(papermill, smoke profile) into a temporary directory; the pipeline test checks what it wrote
and the nbval test re-executes every notebook against those finished runs, so nothing is
trained twice. Set ``KDNB_TEST_RUNS_DIR`` to keep and reuse the runs between sessions."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory):
    from kdnb.pipeline import run_pipeline

    keep = os.environ.get("KDNB_TEST_RUNS_DIR")
    runs_dir = Path(keep) if keep else tmp_path_factory.mktemp("kdnb-smoke-runs")
    t0 = time.perf_counter()
    steps = run_pipeline(profile="smoke", seeds=[0], runs_dir=runs_dir, verbose=False)
    return SimpleNamespace(runs_dir=runs_dir.resolve(), profile="smoke", steps=steps,
                           figures_dir=runs_dir.resolve() / "smoke" / "figures", seconds=time.perf_counter() - t0)
