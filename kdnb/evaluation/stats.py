"""Across-seed statistics: means with Student-t intervals and seed-paired differences.

With a handful of seeds, a difference between two methods is only worth reporting if its
confidence interval excludes zero. Differences are paired by seed because runs that share a
seed share data order and initialisation, which removes that variance from the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st
from scipy.optimize import brentq as _brentq

NOT_SIGNIFICANT = "not significant"
SIGNIFICANT = "significant"
NO_INTERVAL = "n=1: no interval"


def summarize(values: Sequence[float] | np.ndarray | pd.Series, confidence: float = 0.95) -> dict:
    """Mean, sample std (ddof=1), n and the Student-t interval for the mean (NaN when n=1)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        raise ValueError("summarize() needs at least one non-NaN value")
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "n": 1, "ci_low": math.nan, "ci_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def _paired(a, b) -> np.ndarray:
    """a_i − b_i, matched on shared keys (seed) for mappings/Series, by position for sequences."""
    if isinstance(a, (Mapping, pd.Series)) and isinstance(b, (Mapping, pd.Series)):
        a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
        seeds = a.index.intersection(b.index)
        if len(seeds) == 0:
            raise ValueError(f"no seed in common: {list(a.index)} vs {list(b.index)}")
        return (a[seeds] - b[seeds]).to_numpy()
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    return a - b


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.80) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` pairs with
    difference SD ``sd`` detects with probability ``power`` at level ``alpha`` (NaN for n < 2).

    Exact, from the noncentral t distribution: the test statistic of n differences with mean δ has
    noncentrality δ√n/sd, and the MDE is the δ at which P(|T| > t_crit) equals ``power``. A
    comparison that finds nothing can only rule out effects at least this large."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    crit = float(_st.t.ppf(1 - alpha / 2, df))

    def shortfall(nc: float) -> float:
        lower = float(_st.nct.cdf(-crit, df, nc))  # the far tail: negligible, and NaN in scipy for large nc
        return float(_st.nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower) - power

    hi = crit + float(_st.norm.ppf(power)) + 1.0
    while shortfall(hi) < 0:
        hi *= 2
    return float(_brentq(shortfall, 0.0, hi, xtol=1e-10)) * sd / math.sqrt(n)


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Mean of a_i − b_i over seeds with its t-interval, ``significant`` flag, a label and the
    minimum detectable effect ``mde`` (:func:`minimum_detectable_effect`, 80 % power, from the
    observed SD of the differences).

    ``a``/``b``: {seed: value} mappings or Series (matched by seed) or equal-length sequences
    (matched by position). The label is "significant" when the interval excludes zero,
    "not significant" when it covers zero and "n=1: no interval" with a single seed.
    """
    out = summarize(_paired(a, b), confidence)
    out["mde"] = minimum_detectable_effect(out["std"], out["n"], alpha=1 - confidence)
    if out["n"] == 1:
        out.update(significant=False, label=NO_INTERVAL)
    else:
        sig = bool(out["ci_low"] > 0 or out["ci_high"] < 0)
        out.update(significant=sig, label=SIGNIFICANT if sig else NOT_SIGNIFICANT)
    return out


def interval_text(d: Mapping, digits: int = 2, signed: bool = False) -> str:
    """``[low, high]`` of the interval of ``d`` (:func:`summarize`, :func:`paired_difference`), "–"
    without one (one seed); ``signed`` writes the signs of both ends (for prose)."""
    if math.isnan(d["ci_low"]):
        return "–"
    sign = "+" if signed else ""
    return f"[{d['ci_low']:{sign}.{digits}f}, {d['ci_high']:{sign}.{digits}f}]"


def describe_difference(d: Mapping, digits: int = 2, unit: str = "pp") -> str:
    """A paired difference in prose: ``+1.23 pp, 95% CI [+0.10, +2.36], significant``; a
    non-significant one says what it could have detected (``…, not significant (detectable: ≥ 2.10 pp)``)."""
    u = " " + unit if unit else ""
    ci = "" if math.isnan(d["ci_low"]) else f", 95% CI {interval_text(d, digits, signed=True)}"
    mde = d.get("mde", math.nan)
    power = f" (detectable: ≥ {mde:.{digits}f}{u})" if not d.get("significant") and math.isfinite(mde) else ""
    return f"{d['mean']:+.{digits}f}{u}{ci}, {d['label']}{power}"


def _fmt(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def comparison_table(
    df: pd.DataFrame,
    metric: str,
    reference: str = "baseline",
    other: str | None = "kd",
    config_col: str = "config",
    seed_col: str = "seed",
    digits: int = 2,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per config: n, mean, std, "mean ± std" and Δ vs ``reference`` and vs ``other``.

    ``df`` is long: one row per (config, seed) with the value in column ``metric``, or fully long
    with columns ``metric``/``value`` (then rows whose ``metric`` equals the argument are used).
    Each Δ column pair holds the seed-paired mean difference (config − ref), its t-interval as
    text (:func:`interval_text`), the significance label and the minimum detectable effect (``MDE``);
    comparisons against a config missing from ``df`` are skipped.
    """
    if metric not in df.columns:
        if {"metric", "value"} <= set(df.columns):
            df = df[df["metric"] == metric].rename(columns={"value": metric})
        if metric not in df.columns or df.empty:
            raise KeyError(f"metric {metric!r} not found (columns: {list(df.columns)})")
    per_config = {
        cfg: grp.groupby(seed_col)[metric].mean() for cfg, grp in df.groupby(config_col, sort=False)
    }
    refs = [r for r in dict.fromkeys([reference, other]) if r is not None and r in per_config]
    rows = []
    for cfg, values in per_config.items():
        s = summarize(values.to_numpy(), confidence)
        row = {
            config_col: cfg, "n": s["n"], "mean": s["mean"], "std": s["std"],
            "mean ± std": f"{_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)}",
        }
        for ref in refs:
            if cfg == ref:
                row.update({f"Δ vs {ref}": 0.0, f"Δ vs {ref} CI": "", f"Δ vs {ref} sig": "reference",
                            f"Δ vs {ref} MDE": math.nan})
                continue
            d = paired_difference(values, per_config[ref], confidence)
            row[f"Δ vs {ref}"] = d["mean"]
            row[f"Δ vs {ref} CI"] = interval_text(d, digits)
            row[f"Δ vs {ref} sig"] = d["label"]
            row[f"Δ vs {ref} MDE"] = d["mde"]
        rows.append(row)
    return pd.DataFrame(rows)
