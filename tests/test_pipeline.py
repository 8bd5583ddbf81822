"""``python -m kdnb pipeline`` and the tables/figures it leaves behind (smoke profile)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from kdnb.cli import main
from kdnb.engine.config import STUDENT_CONFIGS, ConfigError, make_config
from kdnb.pipeline import PipelineError, Step, cohort_configs, failing_line, plan, run_pipeline
from kdnb.report.lookup import MissingInput, notebook_hint, resolve_seeds
from kdnb.report.series import LABELS, NOTEBOOKS
from kdnb.steps import _failure

FIGURES = [
    "00_samples", "00_split", "01_teacher_curves",
    *[f"{nb}_seed0_curves" for nb in ("02_baseline", "03_kd", "04_kd_fa", "05_kd_at", "06_kd_fa_at")],
    "07_attention_seed0", "07_attention_distance",
    "08_accuracy", "08_learning_curves", "08_robustness_heatmap", "08_robustness_severity", "08_reliability",
    "09_mask_ablation",
]


def test_smoke_pipeline_writes_table_and_figures(smoke_pipeline):
    figs = smoke_pipeline.figures_dir
    table = pd.read_csv(figs / "results.csv")
    assert list(table["config"]) == list(STUDENT_CONFIGS)
    assert table["test_acc_mean"].between(0, 100).all()
    md = (figs / "results_table.md").read_text()
    for config in STUDENT_CONFIGS:
        assert f"| {LABELS[config]} |" in md
    assert "## Provenance" in md and "profile: smoke" in md
    missing = [f for f in FIGURES if not (figs / f"{f}.png").is_file()]
    assert not missing, f"figures not written: {missing}"
    # the evidence beside results.csv, with the columns issue #29 names
    assert {"config", "seed", "clean_acc_subset", "test_acc", "mean_corrupted_acc"} <= set(
        pd.read_csv(figs / "robustness.csv").columns)
    subset = pd.read_csv(figs / "robustness_subset.csv")
    assert list(subset.columns) == ["class", "images"] and subset["images"].nunique() == 1
    efficiency = pd.read_csv(figs / "efficiency.csv").set_index("config")
    assert {"parameters", "flops", "own_train_ms_per_step", "own_train_ms_per_step_iqr", "own_train_vs_baseline",
            "own_train_vs_baseline_iqr", "shared_train_ms_per_step", "latency_bs1_median_ms_per_image",
            "latency_bs1_iqr_ms_per_image", "threads", "latency_rounds"} <= set(efficiency.columns)
    assert efficiency.loc["kd_fa_at", "own_train_ms_per_step"] > efficiency.loc["baseline", "own_train_ms_per_step"]
    evaluation = smoke_pipeline.runs_dir / "smoke" / "evaluation"
    for csv in ("attention_distance", "efficiency", "per_run", "robustness"):
        assert (evaluation / f"{csv}.csv").is_file()
    ablation = (figs / "ablation_table.md").read_text()
    for variant in ("none", "random_matched 0.25", "random_matched 0.5", "gradcam 0.25", "gradcam 0.5", "gradcam soft"):
        assert f"| {variant} |" in ablation
    assert "## Conclusion" in ablation and "## Provenance" in ablation
    for run in ("kd_fa_at-none", "kd_fa_at-random_matched-keep0.25", "kd_fa_at-random_matched-keep0.5",
                "kd_fa_at-gradcam-keep0.25", "kd_fa_at-gradcam-soft"):
        assert (smoke_pipeline.runs_dir / "smoke" / run / "seed0" / "metrics.json").is_file(), run
    executed = sorted(p.stem for p in (smoke_pipeline.runs_dir / "smoke" / "notebooks").glob("*.ipynb"))
    assert len(executed) == len(NOTEBOOKS)
    # every notebook once, in the series' order except 08, which reads 09's runs and so runs last
    in_order = [nb for nb in NOTEBOOKS if nb != "08_results"] + ["08_results"]
    assert [s.notebook for s in smoke_pipeline.steps if not s.configs] == in_order
    assert all(s.seconds > 0 for s in smoke_pipeline.steps)


def test_smoke_pipeline_trains_the_students_as_a_cohort(smoke_pipeline):
    """By default the five students of a seed train together before their notebooks, which then
    show the finished runs and say how they were trained."""
    cohorts = [s for s in smoke_pipeline.steps if s.configs]
    assert [s.configs for s in cohorts] == [tuple(STUDENT_CONFIGS)]
    first_student = next(i for i, s in enumerate(smoke_pipeline.steps) if s.notebook == "02_baseline")
    assert smoke_pipeline.steps.index(cohorts[0]) == first_student - 1
    for config in STUDENT_CONFIGS:
        saved = json.loads((smoke_pipeline.runs_dir / "smoke" / config / "seed0" / "config.json").read_text())
        assert saved["cohort"] == list(STUDENT_CONFIGS)
    executed = nbformat.read(smoke_pipeline.runs_dir / "smoke" / "notebooks" / "03_kd_seed0.ipynb", as_version=4)
    shown = "".join(str(o.get("data", o.get("text", ""))) for c in executed.cells if c.cell_type == "code"
                    for o in c.outputs)
    assert "cohort with baseline kd_fa kd_at kd_fa_at" in shown
    assert "train_loss" in shown  # the per-epoch history table, shown however the run was trained


def test_pipeline_skips_finished_runs(smoke_pipeline, capsys):
    metrics = smoke_pipeline.runs_dir / "smoke" / "baseline" / "seed0" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    assert main(["pipeline", "--profile", "smoke", "--runs-dir", str(smoke_pipeline.runs_dir), "--only", "02"]) == 0
    assert metrics.stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert "kdnb pipeline finished in" in out and "02_baseline (seed 0)" in out


def test_failure_names_notebook_and_cell(tmp_path, capsys):
    """A student notebook without its teacher stops at its first code cell with one line."""
    assert main(["pipeline", "--profile", "smoke", "--runs-dir", str(tmp_path), "--only", "03"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert "notebook 03_kd (seed 0) failed in cell" in line
    assert "MissingInput: run notebooks/01_train_teacher.ipynb first" in line
    assert not (tmp_path / "smoke" / "kd").exists()


# A training cell whose third line raised, as the kernel reports it (IPython 9, ANSI colours).
CELL = "data = ctx.load_data(cfg)\n# resumes an interrupted run\nresult = train(cfg, ctx.runs_dir, data=data, progress=True)"
TRACEBACK = [
    "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
    "\x1b[31mTrainingError\x1b[39m                             Traceback (most recent call last)",
    "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[6]\x1b[39m\x1b[32m, line 3\x1b[39m\n"
    "\x1b[32m      1\x1b[39m data = ctx.load_data(cfg)\n"
    "\x1b[32m      2\x1b[39m \x1b[38;5;66;03m# resumes an interrupted run\x1b[39;00m\n"
    "\x1b[32m----> \x1b[39m\x1b[32m3\x1b[39m result = \x1b[43mtrain\x1b[49m(cfg, ctx.runs_dir, data=data, "
    "progress=\x1b[38;5;28;01mTrue\x1b[39;00m)\n",
    "\x1b[36mFile \x1b[39m\x1b[32m~/kdnb/kdnb/train.py:412\x1b[39m, in \x1b[36mtrain\x1b[39m\x1b[34m(cfg, runs_dir, data)"
    "\x1b[39m\n\x1b[32m    411\x1b[39m \x1b[38;5;28;01mif\x1b[39;00m \x1b[38;5;129;01mnot\x1b[39;00m finite:\n"
    "\x1b[32m--> \x1b[39m\x1b[32m412\x1b[39m     \x1b[38;5;28;01mraise\x1b[39;00m TrainingError(msg)\n",
    "\x1b[31mTrainingError\x1b[39m: loss term 'ce' became NaN at epoch 2",
]
STEP = Step("02_baseline", {}, Path("runs/cpu/notebooks/02_baseline_seed0.ipynb"), label="seed 0")


def test_failure_quotes_the_line_that_raised():
    exc = PapermillExecutionError(9, 6, CELL, "TrainingError", "loss term 'ce' became NaN at epoch 2", TRACEBACK)
    msg = str(_failure(STEP, exc))
    assert "failed in cell 9 [6] line 3 `result = train(cfg, ctx.runs_dir, data=data, progress=True)`: " \
           "TrainingError: loss term 'ce' became NaN" in msg, msg
    assert "load_data" not in msg and "\x1b" not in msg
    # IPython < 8 names the frame <ipython-input-6-…> and marks the line with an arrow
    old = ["\x1b[0;32m<ipython-input-6-3f2a9c1b7d4e>\x1b[0m in \x1b[0;36m<module>\x1b[0;34m\x1b[0m\n"
           "\x1b[1;32m      1\x1b[0m \x1b[0mdata\x1b[0m \x1b[0;34m=\x1b[0m ctx.load_data(cfg)\n"
           "\x1b[0;32m----> 3\x1b[0;31m \x1b[0mresult\x1b[0m \x1b[0;34m=\x1b[0m train(cfg)\n"]
    assert failing_line(CELL, old, 6) == 3
    assert failing_line(CELL, TRACEBACK, 7) is None  # another cell's frame


def test_failure_without_a_cell_frame_quotes_the_first_statement():
    """MissingInput shows one line instead of a traceback: the cell is named by its first statement."""
    exc = PapermillExecutionError(4, 2, "# check inputs\n" + CELL, "MissingInput", "run notebooks/01 first",
                                  ["MissingInput: run notebooks/01 first"])
    msg = str(_failure(STEP, exc))
    assert "failed in cell 4 [2] `data = ctx.load_data(cfg)`: MissingInput: run notebooks/01 first" in msg, msg


def test_plan_runs_students_once_per_seed(tmp_path):
    assert plan("smoke", [0], tmp_path, None, tmp_path)[-1].notebook == "08_results"  # 09 only on request
    assert plan("smoke", [0], tmp_path, None, tmp_path, notebooks=["09"])[-1].notebook == "09_mask_ablation"
    steps = plan("smoke", [0, 1], tmp_path, None, tmp_path / "figs", ablation=True, cohort=False)
    names = [(s.notebook, s.parameters.get("seed")) for s in steps]
    assert names[:2] == [("00_setup_and_data", None), ("01_train_teacher", 0)]
    # 09 before 08: 08's RQ2 answer is built from the ablation's runs
    assert names[-3:] == [("07_masks_and_attention", 0), ("09_mask_ablation", None), ("08_results", None)]
    only = plan("smoke", [0], tmp_path, None, tmp_path, notebooks=["08", "09"])
    assert [s.notebook for s in only] == ["09_mask_ablation", "08_results"]
    students = names[2:-3]
    assert len(students) == 10 and {s for _, s in students} == {0, 1}
    assert steps[-1].parameters["seeds"] == [0, 1]
    assert all(Path(s.parameters["runs_dir"]).is_absolute() for s in steps)
    assert "epochs" not in steps[0].parameters  # only parameters a notebook declares are passed


def test_plan_puts_one_cohort_per_seed_before_the_student_notebooks(tmp_path):
    steps = plan("smoke", [0, 1], tmp_path, None, tmp_path)
    names = [(s.notebook, s.parameters.get("seed"), s.configs) for s in steps]
    assert names[2:4] == [("cohort", 0, tuple(STUDENT_CONFIGS)), ("cohort", 1, tuple(STUDENT_CONFIGS))]
    assert [n for n, _, _ in names[4:14]] == [nb for nb in NOTEBOOKS[2:7] for _ in (0, 1)]
    only = plan("smoke", [0], tmp_path, None, tmp_path, notebooks=["03", "06"])
    assert [(s.notebook, s.configs) for s in only] == [("cohort", ("kd", "kd_fa_at")), ("03_kd", ()), ("06_kd_fa_at", ())]
    # one student notebook, or --one-at-a-time: the notebooks train their configurations themselves
    assert not any(s.configs for s in plan("smoke", [0], tmp_path, None, tmp_path, notebooks=["03"]))
    assert not any(s.configs for s in plan("smoke", [0], tmp_path, None, tmp_path, cohort=False))


def test_cohort_settings_are_those_the_notebooks_build(tmp_path):
    """The cohort must write the runs the notebooks then ask for, or they would refuse them as
    runs "with different settings": the notebooks' parameter defaults, seen from notebooks/."""
    step = next(s for s in plan("smoke", [2], tmp_path, None, tmp_path, extra={"epochs": 1}) if s.configs)
    # what 03_kd's parameters cell holds (device "auto", overrides {}), with the pipeline's epochs
    expected = [make_config(c, "smoke", 2, {"device": "auto", "epochs": 1}) for c in STUDENT_CONFIGS]
    assert cohort_configs(step) == expected


def test_a_failing_cohort_is_one_line_naming_the_seed(tmp_path):
    """No teacher: the cohort's process refuses before any work, and the pipeline says which step."""
    with pytest.raises(PipelineError, match=r"cohort training \(seed 0: kd kd_at\) failed: .*teacher"):
        run_pipeline(profile="smoke", runs_dir=tmp_path, notebooks=["03", "05"], verbose=False)
    assert not (tmp_path / "smoke" / "kd").exists()


def test_unknown_notebook_prefix_is_one_line(tmp_path, capsys):
    assert main(["pipeline", "--profile", "smoke", "--runs-dir", str(tmp_path), "--only", "42"]) == 2
    assert "no such notebook" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        plan("smoke", [0], tmp_path, None, tmp_path, notebooks=["19"])


def test_missing_input_message_names_the_notebook(tmp_path):
    with pytest.raises(MissingInput, match=r"run notebooks/02_baseline.ipynb first \(profile='smoke', seed=0\)"):
        resolve_seeds(tmp_path, "smoke")
    assert notebook_hint("teacher", "cpu", 3) == "run notebooks/01_train_teacher.ipynb first (profile='cpu')"
    assert MissingInput("x")._render_traceback_() == ["MissingInput: x"]


def test_pipeline_command_passes_the_figures_dir(monkeypatch, tmp_path):
    """A second cpu run (say in another runs dir) can keep its tables away from the committed figures."""
    seen = {}
    monkeypatch.setattr("kdnb.pipeline.run_pipeline", lambda **kw: seen.update(kw))
    assert main(["pipeline", "--profile", "cpu", "--runs-dir", str(tmp_path), "--figures-dir", str(tmp_path / "f")]) == 0
    assert seen["figures_dir"] == str(tmp_path / "f") and seen["runs_dir"] == str(tmp_path)
    assert seen["cohort"] is True
    main(["pipeline", "--profile", "cpu", "--one-at-a-time"])
    assert seen["figures_dir"] is None  # default: <runs_dir>/cpu/figures (tests/test_pipeline_paths.py)
    assert seen["cohort"] is False


def test_pipeline_passes_a_bench_report_to_08_and_refuses_a_missing_one_first(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr("kdnb.pipeline.run_pipeline", lambda **kw: seen.update(kw))
    assert main(["pipeline", "--profile", "cpu", "--bench-json", str(tmp_path / "none.json")]) == 2
    assert "--bench-json" in capsys.readouterr().err and not seen  # before any notebook
    (tmp_path / "bench.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--profile", "cpu", "--bench-json", "bench.json"]) == 0
    assert seen["parameters"] == {"bench_json": str(tmp_path / "bench.json")}  # absolute: notebooks run elsewhere
    declared = plan("cpu", [0], tmp_path, None, tmp_path, notebooks=["07", "08"], extra=seen["parameters"])
    assert [("bench_json" in s.parameters) for s in declared] == [False, True]  # only 08 declares it
