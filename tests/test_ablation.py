"""The mask ablation (notebook 09): run naming, reuse of the main run, and its statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdnb import ablation
from kdnb.config import ConfigError, make_config
from kdnb.results import MissingInput
from kdnb.runs import run_path


def test_variants_cover_none_random_and_gradcam_at_each_keep():
    labels = [v.label for v in ablation.variants((0.25, 0.5))]
    assert labels == ["none", "random 0.25", "random 0.5", "gradcam 0.25", "gradcam 0.5"]


def test_gradcam_at_the_default_keep_is_the_main_run():
    main = ablation.variant_config(ablation.Variant("gradcam", 0.5), "smoke", 1)
    assert main.name is None and main.run_name == "kd_fa_at"
    assert main.to_dict() == make_config("kd_fa_at", "smoke", 1).to_dict()  # identical settings: reuse is exact
    other = ablation.variant_config(ablation.Variant("random", 0.25), "smoke", 1)
    assert other.run_name == "kd_fa_at-random-keep0.25" and other.mask_mode == "random" and other.keep == 0.25
    none = ablation.variant_config(ablation.Variant("none"), "smoke", 1)
    assert none.run_name == "kd_fa_at-none" and none.mask_mode == "none"
    # apart from the mask, the settings are the main run's
    differ = {k for k, v in other.to_dict().items() if main.to_dict()[k] != v}
    assert differ == {"name", "mask_mode", "keep"}


def test_run_names_cannot_take_another_configs_folder():
    with pytest.raises(ConfigError, match="taken"):
        make_config("kd", "smoke", overrides={"name": "baseline"})
    with pytest.raises(ConfigError, match="letters"):
        make_config("kd", "smoke", overrides={"name": "../x"})
    assert make_config("kd", "smoke", overrides={"name": "kd"}).run_name == "kd"


def test_plan_marks_who_trains_what(tmp_path):
    plan = ablation.plan("smoke", [0, 1], tmp_path)
    assert len(plan) == 10 and not plan["finished"].any()
    main = plan[plan["variant"] == "gradcam 0.5"]
    assert set(main["run"]) == {"kd_fa_at"} and set(main["trained by"]) == {"06 (main series)"}
    assert set(plan[plan["variant"] != "gradcam 0.5"]["trained by"]) == {"09 (this ablation)"}


def test_collect_names_the_notebook_for_a_missing_run(tmp_path):
    plan = ablation.plan("smoke", [0], tmp_path)
    with pytest.raises(MissingInput, match="09_mask_ablation|06_kd_fa_at"):
        ablation.collect(plan, "smoke", tmp_path)


def _fake_runs(acc: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for label, values in acc.items():
        mode, _, keep = label.partition(" ")
        for seed, a in enumerate(values):
            rows.append({"variant": label, "mask_mode": mode, "keep": float(keep) if keep else np.nan,
                         "seed": seed, "test_acc": a, "best_epoch": 10})
    return pd.DataFrame(rows)


def test_table_differences_match_scipy():
    acc = {"none": [60.0, 61.0, 59.5], "random 0.5": [60.5, 60.0, 60.1], "gradcam 0.5": [62.0, 63.5, 61.0]}
    tab = ablation.table(_fake_runs(acc))
    d = np.array(acc["gradcam 0.5"]) - np.array(acc["none"])
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    row = tab.loc["gradcam 0.5"]
    assert row["Δ vs none (pp)"] == f"{d.mean():+.2f}"
    assert row["95% CI vs none"] == f"[{lo:.2f}, {hi:.2f}]"
    assert row["vs none"] == ("significant" if lo > 0 or hi < 0 else "not significant")
    assert tab.loc["none", "Δ vs none (pp)"] == "0 (reference)"
    assert tab.loc["none", "test top-1 (%)"] == f"{np.mean(acc['none']):.2f} ± {np.std(acc['none'], ddof=1):.2f}"


def test_conclusion_follows_the_data():
    clear_win = {"none": [60.0, 61.0, 59.0], "random 0.5": [60.2, 61.1, 59.1], "gradcam 0.5": [65.0, 66.2, 64.1]}
    text = ablation.conclusion(_fake_runs(clear_win))
    assert "beat both controls significantly at keep 0.5" in text
    noise = {"none": [60.0, 61.0, 59.0], "random 0.5": [61.0, 59.5, 60.0], "gradcam 0.5": [59.5, 61.5, 60.0]}
    text = ablation.conclusion(_fake_runs(noise))
    assert "do not show" in text and "not significant" in text
    worse = {"none": [62.0, 63.0, 61.0], "random 0.5": [62.1, 63.2, 61.1], "gradcam 0.5": [58.0, 59.1, 57.2]}
    assert "significantly worse" in ablation.conclusion(_fake_runs(worse))
    vr = ablation.gradcam_vs_random(_fake_runs(clear_win))
    assert math.isclose(vr.loc[0, "Δ gradcam − random (pp)"], np.mean(np.subtract(clear_win["gradcam 0.5"],
                                                                                   clear_win["random 0.5"])))


def test_train_missing_trains_only_its_own_runs_one_cohort_per_seed(tmp_path, monkeypatch):
    cohorts = []
    monkeypatch.setattr("kdnb.train.train_cohort",
                        lambda cfgs, runs_dir, **kw: cohorts.append(sorted((c.seed, c.run_name) for c in cfgs)))
    monkeypatch.setattr("kdnb.results.require_run", lambda *a, **k: None)  # teacher "present"
    plan = ablation.plan("smoke", [0, 1], tmp_path)
    ablation.train_missing(plan, "smoke", tmp_path)
    own = sorted(["kd_fa_at-none", "kd_fa_at-random-keep0.25", "kd_fa_at-random-keep0.5", "kd_fa_at-gradcam-keep0.25"])
    assert cohorts == [[(0, r) for r in own], [(1, r) for r in own]]
    assert not run_path(tmp_path, "smoke", "kd_fa_at", 0).exists()


def test_a_main_run_trained_with_other_mask_settings_is_not_reported_as_the_variant(tmp_path):
    """06 trained with overrides={"keep": 0.3}: 09 must not call it 'gradcam 0.5'."""
    from kdnb.results import RunMismatch
    from kdnb.runs import write_json

    plan = ablation.plan("smoke", [0], tmp_path)
    for r in plan.itertuples():
        d = run_path(tmp_path, "smoke", r.run, r.seed)
        cfg = ablation.variant_config(ablation.Variant(r.mask_mode, None if pd.isna(r.keep) else r.keep), "smoke", 0)
        write_json(d / "config.json", {**cfg.to_dict(), **({"keep": 0.3} if r.run == "kd_fa_at" else {})})
        write_json(d / "metrics.json", {"test_acc": 0.5, "val_acc": 0.5, "best_epoch": 1, "train_seconds": 1.0})
    with pytest.raises(RunMismatch, match=r"kd_fa_at/seed0 was trained with keep=0\.3 .* not as the kd_fa_at run"):
        ablation.collect(plan, "smoke", tmp_path)
    write_json(run_path(tmp_path, "smoke", "kd_fa_at", 0) / "config.json",
               ablation.variant_config(ablation.Variant("gradcam", 0.5), "smoke", 0).to_dict())
    assert len(ablation.collect(plan, "smoke", tmp_path)) == len(plan)
