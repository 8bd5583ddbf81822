"""Where a run's tables and figures go: under its runs folder, never the committed ``figures/``
unless asked for (a user's one-seed run once overwrote the README's reference table)."""

from __future__ import annotations

from pathlib import Path

import papermill

from kdnb.pipeline import notebooks_dir, run_pipeline
from kdnb.report import notebook as nb

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
    monkeypatch.setattr("kdnb.steps.run_cohort", lambda step, verbose: seen.append(step.parameters) or [])
    monkeypatch.chdir(tmp_path)
    run_pipeline(profile="cpu", runs_dir="runs", verbose=False)
    figs = str(tmp_path.resolve() / "runs" / "cpu" / "figures")
    assert len(seen) == 10 and all(p.get("figures_dir") == figs for p in seen)  # 9 notebooks, 1 cohort
    assert "committed reference in figures/ is unchanged" in capsys.readouterr().out

    seen.clear()
    run_pipeline(profile="cpu", runs_dir="runs", figures_dir=COMMITTED, verbose=False, notebooks=["08"])
    assert [p["figures_dir"] for p in seen] == [str(COMMITTED)]
    assert "unchanged" not in capsys.readouterr().out


def test_pipeline_set_reaches_every_training_run(tmp_path, monkeypatch):
    """``kdnb pipeline --set k=v`` gives each notebook that trains (01–06, and the cohort) the
    override; a key no run has stops the command before any notebook starts."""
    from kdnb.cli import main
    from kdnb.pipeline import cohort_configs

    seen = []
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda src, out, parameters, **kw: seen.append((Path(src).stem, parameters)))
    monkeypatch.setattr("kdnb.steps.run_cohort",
                        lambda step, verbose: seen.append(("cohort", step.parameters, cohort_configs(step))) or [])
    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--profile", "smoke", "--runs-dir", "runs", "--set", "cuda_graphs=true",
                 "--set", "threads=1", "--only", "01", "02", "03"]) == 0
    names = [s[0] for s in seen]
    assert names == ["01_train_teacher", "cohort", "02_baseline", "03_kd"]
    for s in seen:
        assert s[1]["overrides"] == {"cuda_graphs": "true", "threads": "1"}
    cohort = next(s for s in seen if s[0] == "cohort")
    assert all(c.cuda_graphs is True and c.threads == 1 for c in cohort[2])

    seen.clear()
    assert main(["pipeline", "--profile", "smoke", "--runs-dir", "runs", "--set", "cuda_graph=true"]) == 2
    assert seen == []
