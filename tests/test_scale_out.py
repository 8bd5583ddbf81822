"""Scaling out the series (kdnb.jobs, kdnb.executors): the job graph, the executors' input checks,
and on the smoke profile: ``--jobs 2`` and a local Ray instance give the results table of the
sequential series, submitit's local executor trains a seed's cohort, a failed job is reported while
the jobs that do not need it finish.

The series tests start from the teacher of the session's smoke series (``smoke_pipeline``) and
train the students for one epoch; they compare with one sequential series run on one thread per
process, as their jobs are (the CPU's float reductions depend on the thread count).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

from kdnb.cli import main
from kdnb.engine.config import ConfigError
from kdnb.engine.runs import TIMING_FIELDS
from kdnb.executors import check_executor, local
from kdnb.jobs import Job, check_visible, graph
from kdnb.pipeline import PipelineError, Step, plan, run_pipeline

REPO = Path(__file__).resolve().parents[1]
# the series from the session's finished teacher (01 is left out: it would only show it), without the ablation
SERIES = ["00", "02", "03", "04", "05", "06", "07", "08"]
ONE_EPOCH = {"epochs": 1}


@pytest.fixture
def checkout_on_path(monkeypatch):
    """Jobs run in other processes (workers, kernels): make them import this checkout's kdnb."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))


def _with_teacher(smoke_pipeline, runs: Path) -> Path:
    """A runs directory holding the session series' finished teacher (01 then only shows it)."""
    shutil.copytree(smoke_pipeline.runs_dir / "smoke" / "teacher", runs / "smoke" / "teacher")
    return runs


def _numbers(runs: Path) -> pd.DataFrame:
    """The results table without its provenance (hardware threads, training time, date)."""
    table = pd.read_csv(runs / "smoke" / "figures" / "results.csv")
    return table[[c for c in table.columns if not c.startswith("prov_")]]


def test_graph_waits_only_for_what_a_job_reads(tmp_path):
    jobs = graph(plan("smoke", [0, 1], tmp_path, None, tmp_path, ablation=True))
    deps = {j.name.split(":")[0]: [jobs[d].name.split(":")[0] for d in j.deps] for j in jobs}
    assert deps["00_setup_and_data"] == [] and deps["01_train_teacher"] == ["00_setup_and_data"]
    assert deps["cohort (seed 1"] == ["01_train_teacher"]
    assert deps["03_kd (seed 1)"] == ["cohort (seed 1"]  # not seed 0's work
    assert deps["07_masks_and_attention"] == ["cohort (seed 0", "cohort (seed 1"]  # not the display notebooks
    assert deps["09_mask_ablation"] == ["cohort (seed 0", "cohort (seed 1"]  # beside 07, not after it
    # 08 answers RQ2 from 09's runs: it waits for them (and for 07's attention distances)
    assert deps["08_results"] == ["cohort (seed 0", "cohort (seed 1", "07_masks_and_attention", "09_mask_ablation"]
    assert all(d < j.index for j in jobs for d in j.deps)  # plan order (--jobs 1) is a valid order
    alone = {j.name: [d for d in j.deps] for j in graph(plan("smoke", [0], tmp_path, None, tmp_path, cohort=False))}
    assert alone["03_kd (seed 0)"] == [1]  # trained one at a time: each notebook needs the teacher only
    assert alone["08_results"] == [2, 3, 4, 5, 6, 7]  # the five student notebooks and 07
    # producers not in the plan: the step finds its inputs on disk (or names the notebook to run first)
    assert all(not j.deps for j in graph(plan("smoke", [0], tmp_path, None, tmp_path, notebooks=["03"])))


def test_bad_executor_input_is_one_line(monkeypatch, capsys):
    assert main(["pipeline", "--profile", "smoke", "--executor", "dask"]) == 2
    assert capsys.readouterr().err.strip() == "kdnb: error: --executor dask: unknown executor; allowed: local, ray, slurm"
    assert main(["pipeline", "--profile", "smoke", "--jobs", "0"]) == 2
    assert "--jobs 0: give a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--jobs is for the local executor"):
        check_executor("ray", {"jobs": 2})
    monkeypatch.setenv("KDNB_EXECUTOR", "sge")
    with pytest.raises(ConfigError, match="--executor sge: unknown executor"):
        check_executor(None, {})
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # as if ray were not installed
    with pytest.raises(ConfigError, match=r"needs ray, which is not installed: pip install ray"):
        check_executor("ray", {})
    with pytest.raises(ConfigError, match="pip install submitit"):
        check_executor("slurm", {})


def test_local_slots_pin_gpus_and_split_threads(monkeypatch):
    monkeypatch.setattr(local, "cpu_threads", lambda: 16)
    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1"])
    assert [s["CUDA_VISIBLE_DEVICES"] for s in local.slots(4, None)] == ["0", "1", "0", "1"]
    assert {s["OMP_NUM_THREADS"] for s in local.slots(4, None)} == {"4"}
    assert len(local.slots(None, 2)) == 4  # --jobs-per-gpu 2 on two GPUs
    with pytest.raises(ConfigError, match="more than --jobs-per-gpu 1"):
        local.slots(3, 1)
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    assert local.slots(2, None) == [{"OMP_NUM_THREADS": "8"}] * 2
    with pytest.raises(ConfigError, match="no GPU is visible"):
        local.slots(None, 2)


def test_a_node_that_cannot_see_the_runs_is_one_line(tmp_path):
    step = Step("03_kd", {"runs_dir": str(tmp_path / "elsewhere"), "profile": "smoke", "seed": 0},
                tmp_path / "03_kd_seed0.ipynb", label="seed 0")
    with pytest.raises(PipelineError, match=r"03_kd \(seed 0\): node \S+ cannot see the runs directory .*elsewhere/smoke"):
        check_visible(Job(2, step, (1,), needs_teacher=True))
    (tmp_path / "elsewhere" / "smoke" / "notebooks").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"cannot see the teacher run .*smoke/teacher/seed0"):
        check_visible(Job(2, step, (1,), needs_teacher=True))


@pytest.mark.slow
def test_a_failed_job_is_reported_and_independent_jobs_finish(smoke_pipeline, tmp_path, capsys, checkout_on_path):
    """Seed 1's folder holds a run with other settings: its notebook fails, 08 (which needs it) is
    skipped, seed 0's notebook (already trained: it only shows the run) finishes."""
    runs = _with_teacher(smoke_pipeline, tmp_path)
    shutil.copytree(smoke_pipeline.runs_dir / "smoke" / "kd" / "seed0", runs / "smoke" / "kd" / "seed0")
    cfg = json.loads((runs / "smoke" / "kd" / "seed0" / "config.json").read_text())
    (runs / "smoke" / "kd" / "seed1").mkdir()
    (runs / "smoke" / "kd" / "seed1" / "config.json").write_text(json.dumps({**cfg, "seed": 1, "lr": 0.5}))
    args = ["pipeline", "--profile", "smoke", "--runs-dir", str(runs), "--seeds", "0", "1", "--only", "03", "08"]
    assert main(args + ["--jobs", "2"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert "notebook 03_kd (seed 1) failed in cell" in err[0] and "different settings (lr: 0.5 there" in err[0]
    assert err[0].endswith("(1 job(s) that need it skipped: 08_results)")
    summary = captured.out.split("kdnb pipeline finished in")[1]
    assert "1 failed, 1 skipped" in summary
    rows = {name: next(line for line in summary.splitlines() if f"  {name}" in line)
            for name in ("03_kd (seed 0)", "03_kd (seed 1)", "08_results")}
    assert " done " in rows["03_kd (seed 0)"] and " failed " in rows["03_kd (seed 1)"]
    assert " skipped " in rows["08_results"]
    threads = max(1, local.cpu_threads() // 2)  # two jobs share the cores
    assert f" local  {socket.gethostname()} CPU, {threads} thread" in rows["03_kd (seed 0)"]
    assert (runs / "smoke" / "notebooks" / "03_kd_seed0.ipynb").is_file()
    assert (runs / "smoke" / "logs" / "03_kd_seed1.log").is_file()


@pytest.fixture(scope="module")
def one_thread_series(smoke_pipeline, tmp_path_factory):
    """The sequential series (``--jobs 1``) from the session's teacher, every process on one CPU
    thread: the reference for executors running one-thread jobs (on the CPU the thread count is part
    of the numbers, so runs compare bit for bit only at equal threads). One epoch per student."""
    runs = _with_teacher(smoke_pipeline, tmp_path_factory.mktemp("kdnb-one-thread"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the kernels and the cohort's process inherit it
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        run_pipeline(profile="smoke", runs_dir=runs, notebooks=SERIES, parameters=ONE_EPOCH, verbose=False)
    return runs


@pytest.mark.slow
def test_two_local_jobs_give_the_sequential_table(one_thread_series, smoke_pipeline, tmp_path, checkout_on_path):
    runs = _with_teacher(smoke_pipeline, tmp_path)
    steps = run_pipeline(profile="smoke", runs_dir=runs, notebooks=SERIES, parameters=ONE_EPOCH, verbose=False,
                         executor="local", scale={"jobs": 2, "cpus_per_job": 1})
    pd.testing.assert_frame_equal(_numbers(runs), _numbers(one_thread_series))
    executed = sorted(p.name for p in (runs / "smoke" / "notebooks").glob("*.ipynb"))
    assert executed == sorted(p.name for p in (one_thread_series / "smoke" / "notebooks").glob("*.ipynb"))
    assert [s.notebook for s in steps][:3] == ["00_setup_and_data", "cohort", "02_baseline"]


@pytest.mark.slow
def test_ray_local_instance_gives_the_sequential_table(one_thread_series, smoke_pipeline, tmp_path,
                                                       checkout_on_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    runs = _with_teacher(smoke_pipeline, tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        steps = run_pipeline(profile="smoke", runs_dir=runs, notebooks=SERIES, parameters=ONE_EPOCH, verbose=False,
                             executor="ray")
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(_numbers(runs), _numbers(one_thread_series))
    assert all(s.seconds > 0 for s in steps)


@pytest.mark.slow
def test_submitit_local_executor_trains_a_seeds_cohort(one_thread_series, smoke_pipeline, tmp_path,
                                                       checkout_on_path):
    """A smaller graph (00, seed 0's cohort of KD and KD+AT, their notebooks): the runs are those of
    the sequential series."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit)")
    runs = _with_teacher(smoke_pipeline, tmp_path)
    steps = run_pipeline(profile="smoke", runs_dir=runs, notebooks=["00", "03", "05"], parameters=ONE_EPOCH,
                         verbose=False, executor="slurm", scale={"submitit_cluster": "local"})
    assert [s.notebook for s in steps] == ["00_setup_and_data", "cohort", "03_kd", "05_kd_at"]
    timing = TIMING_FIELDS
    for config in ("kd", "kd_at"):
        got, want = (json.loads((r / "smoke" / config / "seed0" / "metrics.json").read_text())
                     for r in (runs, one_thread_series))
        assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in want.items() if k not in timing}
    assert (runs / "smoke" / "notebooks" / "05_kd_at_seed0.ipynb").is_file()
