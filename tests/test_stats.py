"""Across-seed statistics against scipy and hand computation."""

import math

import pandas as pd
import pytest
from scipy import stats as st

from kdnb.evaluation.stats import comparison_table, describe_difference, minimum_detectable_effect, paired_difference, summarize


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


@pytest.mark.parametrize("n", [3, 5, 10])
def test_minimum_detectable_effect_has_80_percent_power_by_simulation(n):
    """Independently of the noncentral-t formula: simulate paired experiments whose true mean
    difference is the MDE and count how often the t-test rejects (should be 80 %), and half the MDE
    (far less often)."""
    import numpy as np

    sd = 1.3
    mde = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(0)
    reps = 40_000

    def power(delta: float) -> float:
        d = rng.normal(delta, sd, size=(reps, n))
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
        return float((np.abs(t) > st.t.ppf(0.975, n - 1)).mean())

    assert power(mde) == pytest.approx(0.80, abs=0.01)
    assert power(mde / 2) < 0.5
    # the normal approximation (z_0.975 + z_0.8)·sd/√n is a lower bound that the exact value approaches
    approx = (st.norm.ppf(0.975) + st.norm.ppf(0.8)) * sd / math.sqrt(n)
    assert mde > approx and (n < 10 or mde < 1.15 * approx)


def test_minimum_detectable_effect_edge_cases_and_tables_carry_it():
    assert math.isnan(minimum_detectable_effect(1.0, 1))
    assert minimum_detectable_effect(0.0, 5) == 0.0
    d = paired_difference([1.0, 2.0, 3.0], [0.5, 2.0, 2.0])
    assert d["mde"] == pytest.approx(minimum_detectable_effect(d["std"], 3))
    assert "detectable: ≥" in describe_difference(d) and d["label"] == "not significant"
    sig = paired_difference([5.0, 6.0, 7.0, 8.0], [1.0, 2.1, 2.9, 4.0])
    assert "detectable" not in describe_difference(sig)
    df = pd.DataFrame({"config": ["baseline"] * 3 + ["kd"] * 3, "seed": [0, 1, 2] * 2,
                       "acc": [1.0, 2.0, 3.0, 1.5, 2.0, 4.0]})
    table = comparison_table(df, "acc", reference="baseline", other=None)
    assert table.loc[1, "Δ vs baseline MDE"] == pytest.approx(paired_difference([1.5, 2.0, 4.0], [1.0, 2.0, 3.0])["mde"])
