"""08's answers under the paper's numbering (RQ1 combination vs each technique, RQ2 causal regions from
09's runs, RQ3 accuracy vs efficiency) and teacher seed as a factor (run folders, tables, provenance)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from kdnb.engine.config import STUDENT_CONFIGS, ConfigError, make_config
from kdnb.engine.runs import CONFIG_FILE, METRICS_FILE, run_path, write_json
from kdnb.report import answers, lookup, tables
from kdnb.report.lookup import MissingInput
from kdnb.report.series import LABELS

# test top-1 (%) per config over three seeds: KD+FA+AT clearly best
ACC = {"baseline": [60.0, 61.0, 59.0], "kd": [62.0, 63.0, 61.5], "kd_fa": [62.2, 62.9, 61.0],
       "kd_at": [62.5, 63.1, 61.2], "kd_fa_at": [66.0, 67.1, 65.2]}


def _runs(teacher_seeds=(0,)) -> pd.DataFrame:
    rows = [{"config": c, "label": LABELS[c], "seed": s, "teacher_seed": t, "test_acc": a + t,
             "test_loss": 1.5 - a / 100, "best_epoch": 5}
            for t in teacher_seeds for c, accs in ACC.items() for s, a in enumerate(accs)]
    return pd.DataFrame(rows)


def _per_run() -> pd.DataFrame:
    return pd.DataFrame([{"config": c, "seed": s, "mean_corruption_acc": a - 10, "ece": 0.05}
                         for c, accs in ACC.items() for s, a in enumerate(accs)])


def _efficiency(latency_q=(0.9, 1.3)) -> pd.DataFrame:
    """As analyses.efficiency_table returns it (index: config)."""
    configs = ["teacher", *STUDENT_CONFIGS]
    return pd.DataFrame({
        "label": ["teacher", *[LABELS[c] for c in STUDENT_CONFIGS]],
        "parameters": [9_000_000] + [700_000] * 5, "flops": [300e6] + [35e6] * 5,
        "latency_bs1_median_ms_per_image": [5.0, 1.0, 1.1, 1.0, 1.2, 1.1],
        "latency_bs1_q1_ms_per_image": [4.8] + [latency_q[0]] * 5,
        "latency_bs1_q3_ms_per_image": [5.3] + [latency_q[1]] * 5, "device": "cpu-x", "threads": 2, "latency_rounds": 5,
        "own_train_ms_per_step": [np.nan, 40.0, 60.0, 80.0, 90.0, 100.0],
        "own_train_vs_baseline": [np.nan, 1.0, 1.5, 2.0, 2.25, 2.5], "own_train_vs_baseline_iqr": [np.nan, 0, .1, .1, .1, .1],
        "shared_train_ms_per_step": [np.nan, 70.0, 70.0, 70.0, 70.0, 70.0]},
        index=pd.Index(configs, name="config"))


def test_rq3_states_own_training_cost_and_only_measurable_latency_differences():
    rq3 = answers.research_answers(_runs(), _per_run(), _efficiency()).split("\n\n")[2]
    assert "no measurable difference between the students" in rq3
    assert "40.0 ms for the baseline" in rq3 and "100.0 ms for KD+FA+AT (2.50×, IQR 0.10;" in rq3
    assert "(the batch, the teacher pass and its Grad-CAM) takes 70.0 ms" in rq3
    apart = _efficiency()
    apart.loc["kd_fa_at", ["latency_bs1_q1_ms_per_image", "latency_bs1_q3_ms_per_image",
                           "latency_bs1_median_ms_per_image"]] = [1.18, 1.22, 1.2]
    apart.loc["baseline", ["latency_bs1_q1_ms_per_image", "latency_bs1_q3_ms_per_image"]] = [0.98, 1.02]
    rq3 = answers.research_answers(_runs(), _per_run(), apart).split("\n\n")[2]
    # one network whose rounds' IQRs do not overlap: the spread between models is the resolution
    assert ("no measurable difference between the students: they are one network, yet not all their interquartile "
            "ranges overlap (medians up to 20.0 % apart; each model's IQR 3.3–40.0 % of its median)") in rq3
    assert "and 20.0 % is what this measurement resolves between two of them" in rq3
    apart.loc["kd_fa_at", "parameters"] = 900_000  # a different network: its difference is measured
    rq3 = answers.research_answers(_runs(), _per_run(), apart).split("\n\n")[2]
    assert "KD+FA+AT against the baseline: 1.20× slower" in rq3


def test_answers_follow_the_papers_numbering_without_the_ablation():
    text = answers.research_answers(_runs(), _per_run(), _efficiency())
    rq = re.findall(r"\*\*(RQ\d) — ([^*]+)\*\*", text)
    assert [n for n, _ in rq] == ["RQ1", "RQ2", "RQ3"]
    assert "accuracy, generalisation and robustness over each technique alone" in rq[0][1]
    assert "causally relevant regions" in rq[1][1] and "inference efficiency" in rq[2][1]
    rq1, rq2, rq3 = text.split("\n\n")
    assert "*Robustness* (mean accuracy over corruptions" in rq1 and "*Generalisation*" in rq1
    assert "KD+FA+AT is significantly better than each of KD, KD+FA, KD+AT in accuracy" in rq1
    assert "run 09_mask_ablation" in rq2
    assert "700,000 parameters" in rq3 and "(2.50×, IQR 0.10;" in rq3
    d = np.subtract(ACC["kd_fa_at"], ACC["kd_at"]).mean()
    assert f"− KD+AT {d:+.2f} pp" in rq1


def test_rq2_is_answered_from_the_ablation_runs():
    from test_ablation import _fake_runs

    from kdnb.report import ablation

    abl = _fake_runs({"none": [60.0, 61.0, 59.0], "random_matched 0.5": [60.2, 61.1, 59.1],
                      "gradcam 0.5": [60.1, 61.0, 59.2]})
    rq2 = answers.research_answers(_runs(), _per_run(), _efficiency(), ablation_runs=abl).split("\n\n")[1]
    assert rq2.startswith("**RQ2") and "run 09" not in rq2
    assert ablation.conclusion(abl) in rq2


def test_one_seed_draws_no_verdict_and_other_teachers_add_a_sentence():
    one = answers.research_answers(_runs().query("seed == 0"), _per_run().query("seed == 0"), _efficiency())
    assert "With one seed no difference can be called significant" in one
    two = answers.research_answers(_runs((0, 1)), _per_run(), _efficiency())
    assert "With teacher seed 1 (test top-1): KD+FA+AT − baseline" in two


def test_accuracy_table_per_teacher_seed_when_several():
    assert "teacher seed" not in tables.accuracy_table(_runs()).index.names
    tab = tables.accuracy_table(_runs((0, 1)))
    assert tab.index.names == ["teacher seed", "configuration"]
    assert tab.loc[(1, "KD+FA+AT"), "test top-1 (%)"] == f"{np.mean(ACC['kd_fa_at']) + 1:.2f} ± " \
                                                          f"{np.std(ACC['kd_fa_at'], ddof=1):.2f}"
    numbers = tables.accuracy_numbers(_runs((0, 1)))
    assert list(numbers["teacher_seed"]) == [0] * 5 + [1] * 5
    assert "teacher_seed" not in tables.accuracy_numbers(_runs())


def test_second_teacher_runs_get_their_own_folders():
    assert make_config("kd", "smoke", 0).run_name == "kd"
    assert make_config("kd", "smoke", 0, {"teacher_seed": 1}).run_name == "kd-t1"
    assert make_config("baseline", "smoke", 2, {"teacher_seed": 3}).run_name == "baseline"  # no teacher, no teacher seed
    assert make_config("baseline", "smoke", 2, {"teacher_seed": 3}).teacher_seed == 0
    assert make_config("kd", "smoke", 0, {"teacher_seed": 1, "name": "kd-x"}).run_name == "kd-x-t1"
    assert make_config("teacher", "smoke", 1).run_name == "teacher"  # teacher seeds are seed folders
    with pytest.raises(ConfigError, match="reserved for runs of teacher seed"):
        make_config("kd", "smoke", 0, {"name": "kd-t1"})


def _fake_run(runs_dir, config: str, seed: int, teacher_seed: int = 0) -> None:
    cfg = make_config(config, "smoke", seed, {"teacher_seed": teacher_seed} if config != "teacher" else None)
    d = run_path(runs_dir, "smoke", cfg.run_name, seed)
    write_json(d / CONFIG_FILE, {**cfg.to_dict(), "git_commit": f"{teacher_seed}" * 40, "kdnb_version": "0.1.0",
                                 "data_source": "synthetic", "device_name": "cpu-x", "device_type": "cpu",
                                 "torch_threads": 2, "torch_version": "2", "n_train": 10, "n_val": 2, "n_test": 5})
    write_json(d / METRICS_FILE, {"test_acc": 0.5 + 0.01 * teacher_seed, "val_acc": 0.5, "test_loss": 1.0,
                                  "val_loss": 1.0, "best_epoch": 1, "epochs_run": 2, "params": 10,
                                  "train_seconds": 60.0})


def test_collect_runs_and_provenance_with_two_teachers(tmp_path):
    configs = ["baseline", "kd", "kd_fa_at"]
    for t in (0, 1):
        _fake_run(tmp_path, "teacher", t, t)  # (its test top-1 tells the teachers apart)
        for c in configs:
            for s in (0, 1):
                if t == 0 or (c == "kd" and s == 0):  # teacher 1: KD only (seed 1 still missing), no baseline of its own
                    _fake_run(tmp_path, c, s, t)
    assert not run_path(tmp_path, "smoke", "baseline-t1", 0).exists()  # one baseline serves both teachers
    assert lookup.resolve_teacher_seeds(tmp_path, "smoke", [0, 1], configs=configs) == [0]  # kd-t1 in progress
    with pytest.raises(MissingInput, match=r"03_kd.ipynb first \(profile='smoke', seed=1, overrides=\{'teacher_seed': 1\}\)"):
        lookup.collect_runs(tmp_path, "smoke", [0, 1], configs, teacher_seeds=[0, 1])
    _fake_run(tmp_path, "kd", 1, 1)
    assert lookup.resolve_teacher_seeds(tmp_path, "smoke", [0, 1], configs=configs) == [0, 1]
    assert lookup.resolve_teacher_seeds(tmp_path, "smoke", [0, 1], [1], configs) == [1]
    assert lookup.teacher_block(tmp_path, "smoke", [0, 1], 1, configs) == ["baseline", "kd"]  # kd_fa_at not repeated
    runs = lookup.collect_runs(tmp_path, "smoke", [0, 1], configs, teacher_seeds=[0, 1])
    assert list(runs["teacher_seed"]) == [0] * 6 + [1] * 4
    second = runs[runs["teacher_seed"] == 1]
    assert list(second["run_dir"].str.extract(r"/(\w[\w-]*)/seed\d$")[0]) == ["baseline"] * 2 + ["kd-t1"] * 2
    assert second["test_acc"].tolist() == [50.0, 50.0, 51.0, 51.0]  # the shared baseline, then teacher 1's KD
    assert list(lookup.collect_runs(tmp_path, "smoke", [0, 1], configs)["teacher_seed"]) == [0] * 6
    table = tables.accuracy_table(runs)
    assert table.loc[(1, "KD"), "Δ vs baseline (pp)"] == "+1.00" and (1, "KD+FA+AT") not in table.index
    prov = tables.provenance(tmp_path, "smoke", [0, 1], configs, teacher_seeds=[0, 1])
    assert "seed 0: test top-1 50.00 %" in prov["teacher"] and "seed 1: test top-1 51.00 %" in prov["teacher"]
    assert "distilled from each teacher" in prov["teacher"]
    assert prov[tables.TRAINING_TIME] == "10.0 min"  # 2 teachers + 6 runs of teacher 0 + 2 of kd-t1
    assert "one teacher" in tables.provenance(tmp_path, "smoke", [0, 1], configs)["teacher"]
    with pytest.raises(MissingInput, match="teacher seed 2 has no finished distilled runs"):
        lookup.collect_runs(tmp_path, "smoke", [0, 1], configs, teacher_seeds=[0, 2])
