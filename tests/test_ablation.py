"""The mask ablation (notebook 09): run naming, reuse of the main run, and its statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdnb.engine.config import ConfigError, make_config
from kdnb.engine.runs import run_path
from kdnb.report import ablation
from kdnb.report.lookup import MissingInput


def test_variants_none_gradcam_size_matched_random_and_soft():
    labels = [v.label for v in ablation.variants((0.25, 0.5))]
    assert labels == ["none", "random_matched 0.25", "random_matched 0.5", "gradcam 0.25", "gradcam 0.5",
                      "gradcam soft", "gradcampp 0.5", "layercam 0.5"]  # the CAM axis: every other registered method
    labels = [v.label for v in ablation.variants((0.25, 0.5), unmatched=True, cams=())]
    assert labels == ["none", "random_matched 0.25", "random_matched 0.5", "random 0.25", "random 0.5",
                      "gradcam 0.25", "gradcam 0.5", "gradcam soft"]


def test_the_cam_axis_trains_each_method_at_keep_half_in_its_own_folder():
    v = ablation.Variant("gradcam", 0.5, cam="layercam")
    cfg = ablation.variant_config(v, "smoke", 1)
    assert cfg.run_name == "kd_fa_at-layercam-keep0.5" and cfg.cam == "layercam" and cfg.mask_mode == "gradcam"
    assert cfg.to_dict() == make_config("kd_fa_at", "smoke", 1, {"cam": "layercam", "name": cfg.name}).to_dict()


def test_gradcam_at_the_default_keep_is_the_main_run():
    main = ablation.variant_config(ablation.Variant("gradcam", 0.5), "smoke", 1)
    assert main.name is None and main.run_name == "kd_fa_at"
    assert main.to_dict() == make_config("kd_fa_at", "smoke", 1).to_dict()  # identical settings: reuse is exact
    other = ablation.variant_config(ablation.Variant("random", 0.25), "smoke", 1)
    assert other.run_name == "kd_fa_at-random-keep0.25" and other.mask_mode == "random" and other.keep == 0.25
    none = ablation.variant_config(ablation.Variant("none"), "smoke", 1)
    assert none.run_name == "kd_fa_at-none" and none.mask_mode == "none"
    assert ablation.variant_config(ablation.Variant("gradcam", 0.25), "smoke", 1).run_name == "kd_fa_at-gradcam-keep0.25"
    matched = ablation.variant_config(ablation.Variant("random_matched", 0.25), "smoke", 1)
    assert matched.run_name == "kd_fa_at-random_matched-keep0.25" and matched.needs_cam
    soft = ablation.variant_config(ablation.Variant("gradcam", None, "soft"), "smoke", 1)
    assert soft.run_name == "kd_fa_at-gradcam-soft" and soft.cam_type == "soft" and soft.keep == main.keep
    # apart from the mask, the settings are the main run's
    for cfg, mask in ((other, {"mask_mode", "keep"}), (matched, {"mask_mode", "keep"}), (soft, {"cam_type"})):
        differ = {k for k, v in cfg.to_dict().items() if main.to_dict()[k] != v}
        assert differ == {"name", *mask}, cfg.run_name
    # a second teacher's ablation runs get their own folders
    t1 = ablation.variant_config(ablation.Variant("random_matched", 0.25), "smoke", 1, {"teacher_seed": 1})
    assert t1.run_name == "kd_fa_at-random_matched-keep0.25-t1"


def test_run_names_cannot_take_another_configs_folder():
    with pytest.raises(ConfigError, match="taken"):
        make_config("kd", "smoke", overrides={"name": "baseline"})
    with pytest.raises(ConfigError, match="letters"):
        make_config("kd", "smoke", overrides={"name": "../x"})
    assert make_config("kd", "smoke", overrides={"name": "kd"}).run_name == "kd"


def test_plan_marks_who_trains_what(tmp_path):
    plan = ablation.plan("smoke", [0, 1], tmp_path)
    assert len(plan) == 16 and not plan["finished"].any()  # 8 variants (the CAM axis included) x 2 seeds
    assert len(ablation.plan("smoke", [0, 1], tmp_path, unmatched=True)) == 20
    main = plan[plan["variant"] == "gradcam 0.5"]
    assert set(main["run"]) == {"kd_fa_at"} and set(main["trained by"]) == {"06 (main series)"}
    assert set(plan[plan["variant"] != "gradcam 0.5"]["trained by"]) == {"09 (this ablation)"}


def test_collect_names_the_notebook_for_a_missing_run(tmp_path):
    plan = ablation.plan("smoke", [0], tmp_path)
    with pytest.raises(MissingInput, match="09_mask_ablation|06_kd_fa_at"):
        ablation.collect(plan, "smoke", tmp_path)


def _fake_runs(acc: dict[str, list[float]], shares: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Runs as :func:`ablation.collect` returns them; ``shares``: label -> (mask_share, cam_short_share)."""
    rows = []
    for label, values in acc.items():
        mode, _, rest = label.partition(" ")
        soft = rest == "soft"
        keep = float(rest) if rest and not soft else np.nan
        share, short = (shares or {}).get(label, (np.nan, np.nan))
        cam = mode if mode in ("gradcampp", "layercam") else "gradcam"
        mode = "gradcam" if cam != "gradcam" else mode
        for seed, a in enumerate(values):
            rows.append({"variant": label, "mask_mode": mode, "keep": keep, "cam_type": "soft" if soft else "binary",
                         "cam": cam, "seed": seed, "test_acc": a, "best_epoch": 10, "mask_share": share,
                         "cam_short_share": short})
    return pd.DataFrame(rows)


def _scipy_delta(a, b):
    d = np.subtract(a, b)
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    return d.mean(), lo, hi


def test_table_differences_and_mask_statistics():
    acc = {"none": [60.0, 61.0, 59.5], "random_matched 0.5": [60.5, 60.0, 60.1], "random 0.5": [60.9, 60.2, 60.0],
           "gradcam 0.5": [62.0, 63.5, 61.0], "gradcam soft": [61.0, 60.5, 60.0]}
    shares = {"none": (1.0, np.nan), "random_matched 0.5": (0.41, 0.3), "random 0.5": (0.5, np.nan),
              "gradcam 0.5": (0.41, 0.3), "gradcam soft": (0.35, 0.3)}
    tab = ablation.table(_fake_runs(acc, shares))
    for label, ref, col in (("gradcam 0.5", "none", "none"), ("gradcam 0.5", "random_matched 0.5", "matched random"),
                            ("random 0.5", "random_matched 0.5", "matched random")):
        mean, lo, hi = _scipy_delta(acc[label], acc[ref])
        row = tab.loc[label]
        assert row[f"Δ vs {col} (pp)"] == f"{mean:+.2f}"
        assert row[f"95% CI vs {col}"] == f"[{lo:.2f}, {hi:.2f}]"
        assert row[f"vs {col}"] == ("significant" if lo > 0 or hi < 0 else "not significant")
    assert tab.loc["none", "Δ vs none (pp)"] == "0 (reference)"
    assert tab.loc["random_matched 0.5", "Δ vs matched random (pp)"] == "0 (reference)"
    assert tab.loc["gradcam soft", "Δ vs matched random (pp)"] == "–"  # keep does not apply: no matched control
    assert tab.loc["none", "Δ vs matched random (pp)"] == "–"
    assert tab.loc["none", "test top-1 (%)"] == f"{np.mean(acc['none']):.2f} ± {np.std(acc['none'], ddof=1):.2f}"
    assert list(tab["kept (%)"]) == ["100.0", "41.0", "50.0", "41.0", "35.0"]
    # the cam-short share belongs to binary masks built from the cam
    assert list(tab["cam short (%)"]) == ["–", "30.0", "–", "30.0", "–"]


def test_conclusion_follows_the_data():
    clear_win = {"none": [60.0, 61.0, 59.0], "random_matched 0.5": [60.2, 61.1, 59.1], "gradcam 0.5": [65.0, 66.2, 64.1]}
    text = ablation.conclusion(_fake_runs(clear_win, {"gradcam 0.5": (0.4123, 0.25)}))
    assert "beat both no mask and size-matched random masks significantly at keep 0.5" in text
    assert "kept 41.2 % of positions" in text and "in 25.0 % of images" in text
    noise = {"none": [60.0, 61.0, 59.0], "random_matched 0.5": [61.0, 59.5, 60.0], "gradcam 0.5": [59.5, 61.5, 60.0]}
    text = ablation.conclusion(_fake_runs(noise))
    assert "do not show" in text and "not significant" in text and "kept" not in text  # no statistics, no claim
    worse = {"none": [62.0, 63.0, 61.0], "random_matched 0.5": [62.1, 63.2, 61.1], "gradcam 0.5": [58.0, 59.1, 57.2]}
    assert "significantly worse" in ablation.conclusion(_fake_runs(worse))
    # a win over no mask alone is no win: the size-matched control must be beaten too
    only_none = {"none": [60.0, 61.0, 59.0], "random_matched 0.5": [65.1, 66.0, 64.3], "gradcam 0.5": [65.0, 66.2, 64.1]}
    assert "No Grad-CAM variant beats both" in ablation.conclusion(_fake_runs(only_none))
    with_all = {**clear_win, "random 0.5": [61.0, 62.0, 60.5], "gradcam soft": [60.1, 61.2, 59.0]}
    text = ablation.conclusion(_fake_runs(with_all))
    mean, lo, hi = _scipy_delta(with_all["random 0.5"], with_all["random_matched 0.5"])
    assert f"unmatched random masks (exactly keep) vs size-matched {mean:+.2f} pp, 95% CI [{lo:+.2f}, {hi:+.2f}]" in text
    assert "the soft Grad-CAM mask (the cam as weights) vs no mask" in text
    assert "one seed" in ablation.conclusion(_fake_runs({k: v[:1] for k, v in clear_win.items()}))
    # the CAM axis: each other method against Grad-CAM at its keep, and kept out of the Grad-CAM verdict
    cams = {**clear_win, "layercam 0.5": [60.0, 61.2, 59.1]}
    text = ablation.conclusion(_fake_runs(cams))
    mean, lo, hi = _scipy_delta(cams["layercam 0.5"], cams["gradcam 0.5"])
    assert f"masks from layercam vs Grad-CAM at keep 0.5 {mean:+.2f} pp, 95% CI [{lo:+.2f}, {hi:+.2f}]" in text
    assert "beat both no mask and size-matched random masks significantly at keep 0.5" in text
    assert list(ablation.versus_matched(_fake_runs(cams))["mask"]) == ["gradcam 0.5"]
    vm = ablation.versus_matched(_fake_runs(with_all))
    assert list(vm["mask"]) == ["gradcam 0.5", "random 0.5"]
    assert math.isclose(vm.loc[0, "Δ vs matched random (pp)"],
                        np.mean(np.subtract(clear_win["gradcam 0.5"], clear_win["random_matched 0.5"])))


def test_another_cam_methods_masks_are_compared_with_random_masks_of_their_own_size():
    """random_matched shuffles the Grad-CAM mask, so it matches Grad-CAM's size (41 % at keep 0.5), not
    that of masks from a CAM method whose cam never falls short (exactly 50 %): their control is the
    keep-fraction random mask; a method whose cam does fall short has no control of its size."""
    acc = {"none": [60.0, 61.0, 59.5], "random_matched 0.5": [60.5, 60.0, 60.1], "random 0.5": [59.0, 59.4, 58.8],
           "gradcam 0.5": [62.0, 63.5, 61.0], "gradcampp 0.5": [61.0, 62.5, 60.1], "layercam 0.5": [60.0, 61.0, 59.0]}
    shares = {"random_matched 0.5": (0.41, 0.3), "random 0.5": (0.5, np.nan), "gradcam 0.5": (0.41, 0.3),
              "gradcampp 0.5": (0.5, 0.0), "layercam 0.5": (0.45, 0.12)}
    runs = _fake_runs(acc, shares)
    tab = ablation.table(runs)
    assert tab.loc["gradcam 0.5", "matched random"] == "random_matched 0.5"
    assert tab.loc["gradcampp 0.5", "matched random"] == "random 0.5"
    mean, lo, hi = _scipy_delta(acc["gradcampp 0.5"], acc["random 0.5"])
    assert tab.loc["gradcampp 0.5", "Δ vs matched random (pp)"] == f"{mean:+.2f}"
    assert tab.loc["gradcampp 0.5", "95% CI vs matched random"] == f"[{lo:.2f}, {hi:.2f}]"
    assert tab.loc["layercam 0.5", "matched random"] == "–" and tab.loc["layercam 0.5", "Δ vs matched random (pp)"] == "–"
    vm = ablation.versus_matched(runs)
    assert list(zip(vm["mask"], vm["control"])) == [("gradcam 0.5", "random_matched 0.5"),
                                                    ("random 0.5", "random_matched 0.5"), ("gradcampp 0.5", "random 0.5")]
    text = ablation.conclusion(runs)
    assert f"vs random masks of their size (random 0.5: they kept exactly keep) {mean:+.2f} pp" in text
    assert text.count("vs random masks of their size") == 1  # not for layercam


def test_train_missing_trains_only_its_own_runs_one_cohort_per_seed(tmp_path, monkeypatch):
    cohorts = []
    monkeypatch.setattr("kdnb.report.ablation.train_cohort",
                        lambda cfgs, runs_dir, **kw: cohorts.append(sorted((c.seed, c.run_name) for c in cfgs)))
    monkeypatch.setattr("kdnb.report.ablation.require_run", lambda *a, **k: None)  # teacher "present"
    plan = ablation.plan("smoke", [0, 1], tmp_path)
    ablation.train_missing(plan, "smoke", tmp_path)
    own = sorted(["kd_fa_at-none", "kd_fa_at-random_matched-keep0.25", "kd_fa_at-random_matched-keep0.5",
                  "kd_fa_at-gradcam-keep0.25", "kd_fa_at-gradcam-soft", "kd_fa_at-gradcampp-keep0.5",
                  "kd_fa_at-layercam-keep0.5"])
    assert cohorts == [[(0, r) for r in own], [(1, r) for r in own]]
    assert not run_path(tmp_path, "smoke", "kd_fa_at", 0).exists()


def test_a_main_run_trained_with_other_mask_settings_is_not_reported_as_the_variant(tmp_path):
    """06 trained with overrides={"keep": 0.3}: 09 must not call it 'gradcam 0.5'."""
    from kdnb.engine.runs import write_json
    from kdnb.report.lookup import RunMismatch

    plan = ablation.plan("smoke", [0], tmp_path)
    _write_fake_runs(plan, tmp_path, main_extra={"keep": 0.3})
    with pytest.raises(RunMismatch, match=r"kd_fa_at/seed0 was trained with keep=0\.3 .* not as the kd_fa_at run"):
        ablation.collect(plan, "smoke", tmp_path)
    write_json(run_path(tmp_path, "smoke", "kd_fa_at", 0) / "config.json",
               ablation.variant_config(ablation.Variant("gradcam", 0.5), "smoke", 0).to_dict())
    assert len(ablation.collect(plan, "smoke", tmp_path)) == len(plan)


def _write_fake_runs(plan: pd.DataFrame, runs_dir, main_extra: dict | None = None, history: bool = True) -> None:
    """Finished run folders for every row of ``plan``: config.json as the variant's (the main run's with
    ``main_extra``), metrics and a two-epoch history whose mask statistics follow from the variant."""
    from kdnb.engine.runs import write_json

    for r in plan.itertuples():
        d = run_path(runs_dir, "smoke", r.run, r.seed)
        cfg = ablation.variant_config(ablation._variant(r), "smoke", r.seed)
        write_json(d / "config.json", {**cfg.to_dict(), **((main_extra or {}) if r.run == "kd_fa_at" else {})})
        write_json(d / "metrics.json", {"test_acc": 0.5 + 0.01 * r.seed, "val_acc": 0.5, "best_epoch": 1,
                                        "train_seconds": 1.0})
        if history:
            short = 0.2 if cfg.needs_cam else None
            write_json(d / "history.json", [{"epoch": e, "mask_share": 0.4 + 0.1 * e, "cam_short_share": short}
                                            for e in (1, 2)])


def test_collect_reads_mask_statistics_and_old_histories(tmp_path):
    from kdnb.engine.runs import write_json

    plan = ablation.plan("smoke", [0, 1], tmp_path)
    _write_fake_runs(plan, tmp_path)
    # a history written before cam_short_share existed (and one before mask_share) still loads
    old = run_path(tmp_path, "smoke", "kd_fa_at-gradcam-keep0.25", 1) / "history.json"
    write_json(old, [{"epoch": 1, "mask_share": 0.3}])
    write_json(run_path(tmp_path, "smoke", "kd_fa_at-none", 1) / "history.json", [{"epoch": 1}])
    runs = ablation.collect(plan, "smoke", tmp_path)
    by = runs.set_index(["variant", "seed"])
    assert by.loc[("gradcam 0.5", 0), "mask_share"] == pytest.approx(0.55)  # mean over the two epochs
    assert by.loc[("gradcam 0.5", 0), "cam_short_share"] == pytest.approx(0.2)
    assert math.isnan(by.loc[("none", 0), "cam_short_share"])  # no cam: null in the history
    assert by.loc[("gradcam 0.25", 1), "mask_share"] == pytest.approx(0.3)
    assert math.isnan(by.loc[("gradcam 0.25", 1), "cam_short_share"])
    assert math.isnan(by.loc[("none", 1), "mask_share"])
    tab = ablation.table(runs)
    assert tab.loc["gradcam 0.25", "kept (%)"] == f"{100 * (0.55 + 0.3) / 2:.1f}"  # over epochs, then seeds
    assert tab.loc["gradcam 0.25", "cam short (%)"] == "20.0"  # the seed that has it
    assert tab.loc["random_matched 0.25", "cam short (%)"] == "20.0"
    assert tab.loc["none", "cam short (%)"] == "–"
    sentence = ablation.conclusion(runs)
    assert "Grad-CAM vs size-matched random masks" in sentence and "soft Grad-CAM" in sentence


def test_saved_runs_only_when_09_has_run(tmp_path):
    assert ablation.saved_runs(tmp_path, "smoke", [0, 1]) is None
    plan = ablation.plan("smoke", [0, 1], tmp_path)
    _write_fake_runs(plan[plan["seed"] == 0], tmp_path)
    runs = ablation.saved_runs(tmp_path, "smoke", [0, 1])
    assert set(runs["seed"]) == {0} and len(runs) == len(plan) // 2  # seed 1 is not finished: left out
    # the unmatched random masks join once finished for every ready seed, as 09's conclusion has them
    full = ablation.plan("smoke", [0, 1], tmp_path, unmatched=True)
    unmatched = full[(full["mask_mode"] == "random") & (full["seed"] == 0)]
    _write_fake_runs(unmatched.iloc[:1], tmp_path)  # each variant joins once finished for every ready seed
    runs = ablation.saved_runs(tmp_path, "smoke", [0, 1])
    assert list(runs[runs["mask_mode"] == "random"]["variant"]) == [unmatched["variant"].iloc[0]]
    _write_fake_runs(unmatched.iloc[1:], tmp_path)
    runs = ablation.saved_runs(tmp_path, "smoke", [0, 1])
    assert sorted(runs[runs["mask_mode"] == "random"]["variant"]) == ["random 0.25", "random 0.5"]
    assert "unmatched random masks (exactly keep) vs size-matched" in ablation.conclusion(runs)
