"""Scaling out the series (kdnb.jobs, kdnb.executors): the job graph, the executors' input checks,
and on the smoke profile: ``--jobs 1``, ``--jobs 2``, a local Ray instance and submitit's local
executor train bit-identical runs (every job gets the runs' own thread count); notebooks run as
Ray tasks and as submitit jobs train the runs of the session's sequential series; with ``--jobs 2``
a failed job is reported while the jobs that do not need it finish.

The notebook tests start from the teacher of the session's smoke series (``smoke_pipeline``) and
compare with its runs, so no series is trained twice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import nbformat
import pytest
from test_notebooks import CHECK

from kdnb.cli import main
from kdnb.engine.config import ConfigError
from kdnb.engine.runs import TIMING_FIELDS
from kdnb.executors import check_executor, local
from kdnb.jobs import Job, JobResult, check_visible, graph
from kdnb.pipeline import PipelineError, Step, plan, run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout_on_path(monkeypatch):
    """Jobs run in other processes (workers, kernels): make them import this checkout's kdnb."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))


def _with_runs(smoke_pipeline, runs: Path, configs=("teacher",)) -> Path:
    """A runs directory holding the session series' finished runs of ``configs`` (their notebooks
    then only show them)."""
    for config in configs:
        shutil.copytree(smoke_pipeline.runs_dir / "smoke" / config, runs / "smoke" / config)
    return runs


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


def test_train_only_plans_the_teacher_and_each_seeds_cohort(tmp_path):
    jobs = graph(plan("smoke", [0, 1], tmp_path, None, tmp_path, train_only=True))
    assert [(j.name, j.deps) for j in jobs] == [
        ("teacher (seed 0)", ()),
        ("cohort (seed 0: baseline kd kd_fa kd_at kd_fa_at)", (0,)),
        ("cohort (seed 1: baseline kd kd_fa kd_at kd_fa_at)", (0,))]
    assert jobs[0].step.configs == ("teacher",) and jobs[0].step.parameters["seed"] == 0
    # the notebooks' own defaults under the pipeline's values, as for a cohort before its notebooks
    assert jobs[1].step.parameters == {**jobs[0].step.parameters, "seed": 0}
    only = graph(plan("smoke", [3], tmp_path, None, tmp_path, notebooks=["02", "03"], train_only=True))
    assert [(j.name, j.deps, j.step.configs) for j in only] == [("cohort (seed 3: baseline kd)", (), ("baseline", "kd"))]
    # the ablation's variants train in 09's kernel: asked for with --train-only, they would be left out
    with pytest.raises(ConfigError, match="run --only 09 with the same --seeds instead"):
        plan("smoke", [0], tmp_path, None, tmp_path, ablation=True, train_only=True)


def test_bad_executor_input_is_one_line(monkeypatch, capsys):
    assert main(["pipeline", "--profile", "smoke", "--executor", "dask"]) == 2
    assert capsys.readouterr().err.strip() == "kdnb: error: --executor dask: unknown executor; allowed: local, ray, slurm"
    assert main(["pipeline", "--profile", "smoke", "--jobs", "0"]) == 2
    assert "--jobs 0: give a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--jobs is for the local and ray executors"):
        check_executor("slurm", {"jobs": 2})
    assert check_executor("ray", {"jobs": 2}) == ("ray", {"jobs": 2})  # a cap on Ray's tasks at once
    with pytest.raises(ConfigError, match=r"--cpus-per-job is for ray and slurm.*--set threads=N"):
        check_executor("local", {"cpus_per_job": 1})
    monkeypatch.setenv("KDNB_EXECUTOR", "sge")
    with pytest.raises(ConfigError, match="--executor sge: unknown executor"):
        check_executor(None, {})
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # as if ray were not installed
    with pytest.raises(ConfigError, match=r"needs ray, which is not installed: pip install ray"):
        check_executor("ray", {})
    with pytest.raises(ConfigError, match="pip install submitit"):
        check_executor("slurm", {})


def test_local_slots_pin_gpus_and_give_every_job_the_runs_threads(monkeypatch):
    monkeypatch.setattr(local, "cpu_cores", lambda: 2)
    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1"])
    # GPUs: one job per GPU as before, each with the runs' threads; the cores do not hold GPU jobs back
    envs, note = local.slots(4, None, 4)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in envs] == ["0", "1", "0", "1"] and note is None
    assert {s["OMP_NUM_THREADS"] for s in envs} == {"4"}
    assert len(local.slots(None, 2, 4)[0]) == 4  # --jobs-per-gpu 2 on two GPUs
    with pytest.raises(ConfigError, match="more than --jobs-per-gpu 1"):
        local.slots(3, 1, 2)
    # the CPU: never a share of the cores (that changes the numbers), fewer jobs at once instead
    envs, note = local.slots(2, None, 2, device="cpu")
    assert envs == [{"OMP_NUM_THREADS": "2"}] and note == (
        "local executor: --jobs 2 at 2 threads each (the runs' thread count, part of their numbers) needs 4 cores, "
        "this machine has 2: running 1 job(s) at once, which finishes first with the same results (more would "
        "share cores and run slower)")
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    monkeypatch.setattr(local, "cpu_cores", lambda: 16)
    assert local.slots(3, None, 4) == ([{"OMP_NUM_THREADS": "4"}] * 3, None)
    assert len(local.slots(8, None, 4)[0]) == 4  # 16 cores, 4 threads each
    monkeypatch.setattr(local, "cpu_cores", lambda: 2)
    assert local.slots(1, None, 4) == ([{"OMP_NUM_THREADS": "4"}], "local executor: the runs use 4 threads (their "
                                       "thread count, part of their numbers) on 2 cores: the same numbers, slower; "
                                       "--set threads=2 trains other runs")
    with pytest.raises(ConfigError, match="no GPU is visible"):
        local.slots(None, 2, 2)


def test_a_node_that_cannot_see_the_runs_is_one_line(tmp_path):
    step = Step("03_kd", {"runs_dir": str(tmp_path / "elsewhere"), "profile": "smoke", "seed": 0},
                tmp_path / "03_kd_seed0.ipynb", label="seed 0")
    with pytest.raises(PipelineError, match=r"03_kd \(seed 0\): node \S+ cannot see the runs directory .*elsewhere/smoke"):
        check_visible(Job(2, step, (1,), needs_teacher=True))
    (tmp_path / "elsewhere" / "smoke" / "notebooks").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"cannot see the teacher run .*smoke/teacher/seed0"):
        check_visible(Job(2, step, (1,), needs_teacher=True))


@pytest.mark.slow
def test_a_failed_job_is_reported_and_independent_jobs_finish(smoke_pipeline, tmp_path, capsys, checkout_on_path,
                                                                monkeypatch):
    """Seed 1's folder holds a run with other settings: its notebook fails, 08 (which needs it) is
    skipped, seed 0's notebook (already trained: it only shows the run) finishes."""
    runs = _with_runs(smoke_pipeline, tmp_path)
    shutil.copytree(smoke_pipeline.runs_dir / "smoke" / "kd" / "seed0", runs / "smoke" / "kd" / "seed0")
    cfg = json.loads((runs / "smoke" / "kd" / "seed0" / "config.json").read_text())
    (runs / "smoke" / "kd" / "seed1").mkdir()
    (runs / "smoke" / "kd" / "seed1" / "config.json").write_text(json.dumps({**cfg, "seed": 1, "lr": 0.5}))
    args = ["pipeline", "--profile", "smoke", "--runs-dir", str(runs), "--seeds", "0", "1", "--only", "03", "08"]
    monkeypatch.setattr(local, "cpu_cores", lambda: 2)  # room for two 1-thread jobs: the pool runs them
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
    row = rows["03_kd (seed 0)"]
    assert f" local  {socket.gethostname()} CPU, 1 thread" in row and "1 threads" not in row  # the profile's
    assert (runs / "smoke" / "notebooks" / "03_kd_seed0.ipynb").is_file()
    assert (runs / "smoke" / "logs" / "03_kd_seed1.log").is_file()


# One notebook of the series (05, KD+AT) as a Ray task and as a submitit job, on the session series'
# finished runs: the notebook job of each executor, whose checked outputs must be the ones the
# sequential series printed. Training under each executor (cohorts, both seeds at once) is the
# bit-identical test's below.
SMALL = ["05"]


def _assert_notebook_of_the_session_series(runs: Path, smoke_pipeline, name: str = "05_kd_at_seed0") -> None:
    got, want = (nbformat.read(r / "smoke" / "notebooks" / f"{name}.ipynb", as_version=4)
                 for r in (runs, smoke_pipeline.runs_dir))

    def checked(nb) -> list[str]:
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        return [o.get("text", "") for c in nb.cells if c.cell_type == "code" and c.source.startswith(CHECK)
                for o in c.outputs]

    assert checked(got) == checked(want) != []


@pytest.mark.slow
def test_ray_local_instance_runs_a_notebook_of_the_sequential_series(smoke_pipeline, tmp_path, checkout_on_path):
    """A notebook runs as a Ray task and prints what it printed in the sequential series."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    runs = _with_runs(smoke_pipeline, tmp_path, ("teacher", "kd_at"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        steps = run_pipeline(profile="smoke", runs_dir=runs, notebooks=SMALL, verbose=False,
                             executor="ray", scale={"cpus_per_job": 1})
    finally:
        ray.shutdown()
    assert [s.notebook for s in steps] == ["05_kd_at"]
    assert all(s.seconds > 0 for s in steps)
    _assert_notebook_of_the_session_series(runs, smoke_pipeline)


@pytest.mark.slow
def test_submitit_local_executor_runs_a_notebook_of_the_sequential_series(smoke_pipeline, tmp_path,
                                                                          checkout_on_path):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit)")
    runs = _with_runs(smoke_pipeline, tmp_path, ("teacher", "kd_at"))
    steps = run_pipeline(profile="smoke", runs_dir=runs, notebooks=SMALL, verbose=False, executor="slurm",
                         scale={"submitit_cluster": "local"})
    assert [s.notebook for s in steps] == ["05_kd_at"]
    _assert_notebook_of_the_session_series(runs, smoke_pipeline)


# A 2-seed smoke series trained without its notebooks (the teacher, each seed's cohort of KD and
# KD+FA+AT: logits, features and Grad-CAM masks, the parts whose arithmetic a thread count changes), on
# a smaller synthetic set for one epoch: what is compared is the scheduling, not the recipe. --jobs 1
# and --jobs 2 train the teacher; Ray and submitit start from a copy of --jobs 1's.
TINY = {"overrides": {"synthetic_train": 300, "synthetic_test": 100, "val_size": 60, "epochs": 1}}
RUNS = [("teacher", 0)] + [(c, s) for s in (0, 1) for c in ("kd", "kd_fa_at")]


def _train_series(runs: Path, teacher_from: Path | None = None, **how) -> dict[tuple[str, int], dict]:
    """Train the series into ``runs`` (its teacher too, unless ``teacher_from`` holds one to copy)."""
    if teacher_from is not None:
        shutil.copytree(teacher_from / "smoke" / "teacher", runs / "smoke" / "teacher")
    notebooks = ["03", "06"] if teacher_from is not None else ["01", "03", "06"]
    run_pipeline(profile="smoke", seeds=[0, 1], runs_dir=runs, notebooks=notebooks, parameters=TINY, verbose=False,
                 train_only=True, **how)
    return {(c, s): {k: v for k, v in json.loads((runs / "smoke" / c / f"seed{s}" / "metrics.json").read_text()).items()
                     if k not in TIMING_FIELDS} for c, s in RUNS}


def _threads(runs: Path, config: str = "kd_fa_at", seed: int = 1) -> int:
    return json.loads((runs / "smoke" / config / f"seed{seed}" / "config.json").read_text())["threads"]


@pytest.mark.slow
def test_jobs_1_jobs_2_ray_and_submitit_train_bit_identical_runs(tmp_path, monkeypatch, checkout_on_path, capsys):
    """--jobs 1, --jobs 2 (two 1-thread jobs at once on 2 cores), a local Ray instance (both seeds'
    cohorts at once) and submitit's local executor give every run of the series the same metrics,
    bit for bit, and the same recorded thread count: the profile's."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit)")
    first = tmp_path / "jobs1"
    reference = _train_series(first)
    assert _threads(first) == 1
    monkeypatch.setattr(local, "cpu_cores", lambda: 2)
    assert _train_series(tmp_path / "jobs2", executor="local", scale={"jobs": 2}) == reference
    assert "local executor: up to 2 jobs at once" in capsys.readouterr().out
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert _train_series(tmp_path / "ray", first, executor="ray") == reference
    finally:
        ray.shutdown()
    assert _train_series(tmp_path / "slurm", first, executor="slurm", scale={"submitit_cluster": "local"}) == reference
    assert [_threads(tmp_path / runs) for runs in ("jobs2", "ray", "slurm")] == [1, 1, 1]
    assert _threads(tmp_path / "jobs2", "teacher", 0) == 1


class _Ref:
    """A fake ObjectRef: hashable, holding its task's result."""

    def __init__(self, result: JobResult):
        self.result = result


class _FakeRay:
    """Just enough of Ray for the executor's submission loop: tasks finish in submission order."""

    def __init__(self, cpus: float):
        self.cpus, self.open, self.most, self.requests = cpus, 0, 0, []

    def cluster_resources(self) -> dict:
        return {"CPU": self.cpus}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **request):
                fake.requests.append(request)
                return self

            def remote(self, job, threads, log, *upstream):
                fake.open += 1
                fake.most = max(fake.most, fake.open)
                return _Ref(JobResult(job.name, "done", device=f"{threads} threads"))

        return Task()

    def wait(self, refs, num_returns=1):
        self.open -= 1
        return refs[:1], refs[1:]

    def get(self, ref):
        return ref.result


def test_ray_asks_for_the_runs_threads_and_takes_jobs_as_a_cap(tmp_path, capsys):
    from kdnb.executors import ray as ray_executor

    steps = [Step("03_kd", {"seed": s}, tmp_path / f"{s}.ipynb", label=f"seed {s}") for s in range(5)]
    jobs = [Job(i, s) for i, s in enumerate(steps)]
    fake = _FakeRay(cpus=8)
    results = ray_executor._submit_and_collect(fake, jobs, {"threads": 2, "jobs": 2}, tmp_path)
    assert fake.most == 2 and [r.device for r in results] == ["2 threads"] * 5
    assert {r["num_cpus"] for r in fake.requests} == {2}  # Ray starts no more jobs than its CPUs give 2 threads
    assert "at most 2 at once" in capsys.readouterr().out
    fake = _FakeRay(cpus=8)
    ray_executor._submit_and_collect(fake, jobs, {"threads": 2, "cpus_per_job": 1}, tmp_path)
    assert fake.most == 5 and {r["num_cpus"] for r in fake.requests} == {1}
    assert ("ray executor: each job asks for 1 CPU(s) but its runs use 2 threads (their thread count, part of their "
            "numbers): results are unchanged, jobs may share cores and run slower") in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"asks for 2 CPUs \(its runs' threads\) but this Ray instance has 1: give "
                                          r"--cpus-per-job 1"):
        ray_executor._submit_and_collect(_FakeRay(cpus=1), jobs, {"threads": 2}, tmp_path, local_instance=True)
