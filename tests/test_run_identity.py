"""Run identity: a table or figure reads a run by its folder, and checks the run's ``config.json``
against what it claims the run to be (the configuration's weights, masks, networks, data and
profile). Engine settings (device, threads, compile, bf16) and the recipe (epochs, lr, …: a pipeline
may shorten it for every run; the tables' provenance states it) may differ. The thread count and the
recipe fix a run's numbers all the same: a run resumes only with the values it recorded."""

from __future__ import annotations

import pytest

from kdnb.engine.config import make_config
from kdnb.engine.runs import CONFIG_FILE, METRICS_FILE, run_path, write_json
from kdnb.report import notebook as nb
from kdnb.report.lookup import RunMismatch, collect_runs, require_run

METRICS = {"test_acc": 0.5, "val_acc": 0.5, "test_loss": 1.0, "val_loss": 1.0, "best_epoch": 1, "epochs_run": 2,
           "params": 10, "train_seconds": 1.0}


def _run(runs_dir, config: str, seed: int = 0, **saved) -> None:
    d = run_path(runs_dir, "smoke", config, seed)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / CONFIG_FILE, {**make_config(config, "smoke", seed).to_dict(), "git_commit": "x", **saved})
    write_json(d / METRICS_FILE, METRICS)


@pytest.mark.parametrize(("saved", "named"), [
    ({"keep": 0.3}, "keep=0.3"),
    ({"w_at": 0.0}, "w_at=0.0"),
    ({"mask_mode": "random"}, "mask_mode='random'"),
    ({"cam_type": "soft", "cam_stage": "layer2"}, "cam_type='soft', cam_stage='layer2'"),
    ({"profile": "cpu", "width": 0.25}, "profile='cpu', width=0.25"),
])
def test_a_run_trained_otherwise_is_refused_by_the_results_table(tmp_path, saved, named):
    for config in ("baseline", "kd_fa_at"):
        _run(tmp_path, config, **(saved if config == "kd_fa_at" else {}))
    with pytest.raises(RunMismatch, match=rf"kd_fa_at/seed0 was trained with {named.replace('(', '').replace(')', '')}"
                       r" \(its config.json\), not as the kd_fa_at run of profile 'smoke'.*rerun notebooks/06_kd_fa_at"):
        collect_runs(tmp_path, "smoke", [0], configs=["baseline", "kd_fa_at"])


def test_engine_recipe_and_settings_added_later_do_not_matter(tmp_path):
    _run(tmp_path, "kd", device="cuda", threads=16, compile=True, compile_mode="reduce-overhead", amp=False,
         data_dir="/elsewhere", eval_batch_size=7, cohort=["kd", "baseline"], epochs=1, lr=0.1)
    d = run_path(tmp_path, "smoke", "kd", 0)
    assert require_run(tmp_path, "smoke", "kd") == d
    saved = make_config("kd", "smoke", 0).to_dict()
    del saved["cam_type"]  # a config.json written before the setting existed: its default is what ran
    write_json(d / CONFIG_FILE, saved)
    assert require_run(tmp_path, "smoke", "kd") == d
    assert len(collect_runs(tmp_path, "smoke", [0], configs=["kd"])) == 1


def test_resuming_with_another_thread_count_is_refused_in_one_line(tmp_path):
    """Continuing a run with another count would mix two kinds of sums in one run: refused, naming
    the setting that continues it; nothing in the run's folder is touched."""
    from kdnb.engine.errors import TrainingError
    from kdnb.engine.train import _prepare_run_dir

    _run(tmp_path, "kd", threads=2)
    d = run_path(tmp_path, "smoke", "kd", 0)
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(TrainingError, match=r"holds a run with different settings \(threads: 2 there, 1 now\)\. "
                                            r"Continue it with --set threads=2 \(the count it trains with"):
        _prepare_run_dir(d, make_config("kd", "smoke", 0), force=False)
    assert sorted(p.name for p in d.iterdir()) == before
    _prepare_run_dir(d, make_config("kd", "smoke", 0, {"threads": 2}), force=False)
    _run(tmp_path, "kd", threads=None)  # an older run: its count was not recorded, it resumes as before
    _prepare_run_dir(d, make_config("kd", "smoke", 0), force=False)


def test_a_notebook_with_overrides_reads_the_runs_trained_with_them(tmp_path):
    _run(tmp_path, "kd_fa_at", keep=0.3)
    ctx = nb.context("smoke", runs_dir=str(tmp_path), overrides={"keep": 0.3})
    assert ctx.require("kd_fa_at") == run_path(tmp_path, "smoke", "kd_fa_at", 0)
    with pytest.raises(RunMismatch, match="keep=0.3"):
        nb.context("smoke", runs_dir=str(tmp_path)).require("kd_fa_at")
