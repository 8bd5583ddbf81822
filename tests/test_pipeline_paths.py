"""Where a run's tables and figures go: under its runs folder, never the committed ``figures/``
unless asked for (a user's one-seed run once overwrote the README's reference table)."""

from __future__ import annotations

from pathlib import Path

import papermill

from kdnb import notebook as nb
from kdnb.pipeline import notebooks_dir, run_pipeline

COMMITTED = notebooks_dir().parent / "figures"


def test_default_figures_dir_is_under_the_runs_dir_for_every_profile(tmp_path):
    for profile in ("smoke", "cpu", "paper"):
        assert nb.figures_dir_for(profile, tmp_path / "runs", None) == (tmp_path / "runs").resolve() / profile / "figures"
    # relative paths are taken from base (the notebooks' working directory)
    assert nb.figures_dir_for("cpu", "../runs", None, base=notebooks_dir()) == COMMITTED.parent / "runs" / "cpu" / "figures"
    # refreshing the committed reference is explicit
    assert nb.figures_dir_for("cpu", "../runs", "../figures", base=notebooks_dir()) == COMMITTED


def test_notebook_context_defaults_keep_away_from_the_committed_figures():
    ctx = nb.context("cpu", base=notebooks_dir())  # the parameters cell's defaults, as in JupyterLab
    assert ctx.figures_dir == COMMITTED.parent / "runs" / "cpu" / "figures"


def test_cpu_pipeline_passes_figures_under_the_runs_dir(tmp_path, monkeypatch, capsys):
    """The planned notebook parameters of a default ``cpu`` run (nothing is executed)."""
    seen = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, parameters, **kw: seen.append(parameters))
    monkeypatch.setattr("kdnb.pipeline.run_cohort", lambda step, verbose: seen.append(step.parameters) or [])
    monkeypatch.chdir(tmp_path)
    run_pipeline(profile="cpu", runs_dir="runs", verbose=False)
    figs = str(tmp_path.resolve() / "runs" / "cpu" / "figures")
    assert len(seen) == 10 and all(p.get("figures_dir") == figs for p in seen)  # 9 notebooks, 1 cohort
    assert "committed reference in figures/ is unchanged" in capsys.readouterr().out

    seen.clear()
    run_pipeline(profile="cpu", runs_dir="runs", figures_dir=COMMITTED, verbose=False, notebooks=["08"])
    assert [p["figures_dir"] for p in seen] == [str(COMMITTED)]
    assert "unchanged" not in capsys.readouterr().out
