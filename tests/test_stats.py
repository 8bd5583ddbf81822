"""Across-seed statistics against scipy and hand computation."""

import math

import pandas as pd
import pytest
from scipy import stats as st

from kdnb.evaluation.stats import comparison_table, paired_difference, summarize


def test_summarize_matches_scipy_and_hand_computation():
    values = [93.1, 93.5, 92.8, 93.4]
    s = summarize(values)
    # mean 93.2; deviations -0.1, 0.3, -0.4, 0.2 → Σd² = 0.30, var = 0.1, std = 0.31623
    assert s["n"] == 4 and s["mean"] == pytest.approx(93.2)
    assert s["std"] == pytest.approx(math.sqrt(0.1))
    lo, hi = st.t.interval(0.95, df=3, loc=93.2, scale=math.sqrt(0.1) / 2)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    # t_{0.975, 3} = 3.182446 → half-width 3.182446 · 0.158114 = 0.503188
    assert s["ci_high"] - s["mean"] == pytest.approx(0.503188, abs=1e-6)


def test_summarize_single_value_has_no_interval():
    s = summarize([91.0])
    assert s["mean"] == 91.0 and s["n"] == 1
    assert math.isnan(s["std"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
    with pytest.raises(ValueError):
        summarize([])


def test_paired_difference_significant():
    a = {0: 94.0, 1: 94.4, 2: 93.9}
    b = {2: 93.0, 0: 93.1, 1: 93.3}  # matched by seed, not by order: differences 0.9, 1.1, 0.9
    d = paired_difference(a, b)
    assert d["n"] == 3 and d["mean"] == pytest.approx(29 / 30)
    sd = math.sqrt(((0.9 - 29 / 30) ** 2 * 2 + (1.1 - 29 / 30) ** 2) / 2)
    assert d["std"] == pytest.approx(sd)
    lo, hi = st.t.interval(0.95, df=2, loc=29 / 30, scale=sd / math.sqrt(3))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    assert d["significant"] is True and d["label"] == "significant"


def test_paired_difference_not_significant_when_interval_covers_zero():
    d = paired_difference([93.0, 93.5, 92.9], [93.2, 93.1, 93.0])  # differences -0.2, 0.4, -0.1
    assert d["ci_low"] < 0 < d["ci_high"]
    assert d["significant"] is False and d["label"] == "not significant"


def test_paired_difference_single_seed():
    d = paired_difference({0: 94.0}, {0: 93.0, 1: 92.0})
    assert d["n"] == 1 and d["mean"] == pytest.approx(1.0)
    assert math.isnan(d["ci_low"]) and d["label"] == "n=1: no interval" and d["significant"] is False


def test_paired_difference_input_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_comparison_table():
    rows = []
    for seed, (base, kd, new) in enumerate([(93.0, 93.9, 94.2), (93.2, 94.3, 94.1), (92.9, 93.8, 94.3)]):
        rows += [("baseline", seed, base), ("kd", seed, kd), ("kd+at", seed, new)]
    df = pd.DataFrame(rows, columns=["config", "seed", "accuracy"])
    t = comparison_table(df, "accuracy", reference="baseline", other="kd").set_index("config")
    assert t.loc["baseline", "mean ± std"] == f"{93.0333333:.2f} ± {summarize([93.0, 93.2, 92.9])['std']:.2f}"
    assert t.loc["baseline", "Δ vs baseline sig"] == "reference"
    new_vs_base = paired_difference([94.2, 94.1, 94.3], [93.0, 93.2, 92.9])
    assert t.loc["kd+at", "Δ vs baseline"] == pytest.approx(new_vs_base["mean"])
    assert t.loc["kd+at", "Δ vs baseline CI"] == f"[{new_vs_base['ci_low']:.2f}, {new_vs_base['ci_high']:.2f}]"
    assert t.loc["kd+at", "Δ vs baseline sig"] == "significant"
    assert t.loc["kd+at", "Δ vs kd"] == pytest.approx((0.3 - 0.2 + 0.5) / 3)
    assert t.loc["kd+at", "Δ vs kd sig"] == "not significant"  # differences 0.3, -0.2, 0.5

    # the same data in fully long form (metric/value columns) gives the same table
    long = df.rename(columns={"accuracy": "value"}).assign(metric="accuracy")
    long = pd.concat([long, long.assign(metric="ece", value=0.0)])
    pd.testing.assert_frame_equal(comparison_table(long, "accuracy").set_index("config"), t)
    with pytest.raises(KeyError):
        comparison_table(df, "missing")
