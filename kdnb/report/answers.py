"""The paper's three research questions answered in prose, every number taken from the tables just built."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..evaluation.efficiency import latency_difference
from ..evaluation.stats import describe_difference, paired_difference, summarize
from .ablation import conclusion
from .series import LABELS, PAPER_ACCURACY, SINGLE_TECHNIQUES


def _and(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def research_answers(runs: pd.DataFrame, per_run: pd.DataFrame, efficiency: pd.DataFrame,
                     distances: pd.DataFrame | None = None, ablation_runs: pd.DataFrame | None = None) -> str:
    """Markdown answering the paper's three questions under its numbering, from the numbers just
    computed: RQ1 does the combination (KD+FA+AT) improve accuracy, generalisation and robustness over
    each technique alone; RQ2 does transferring only the causally relevant regions help (from 09's
    ablation runs, ``ablation_runs`` as :func:`kdnb.report.ablation.saved_runs` returns them; None: "run 09");
    RQ3 accuracy against inference efficiency. ``runs`` may hold several teacher seeds (the lowest is
    the main series; the others add a sentence each). Every number in the text comes from the arguments."""
    teacher_seeds = sorted(runs["teacher_seed"].unique()) if "teacher_seed" in runs else [0]
    main = runs[runs["teacher_seed"] == teacher_seeds[0]] if "teacher_seed" in runs else runs

    def by_seed(df, config, col):
        return df[df["config"] == config].set_index("seed")[col]

    def mean_sd(df, config, col, digits=2):
        s = summarize(by_seed(df, config, col).to_numpy())
        sd = "" if math.isnan(s["std"]) else f" ± {s['std']:.{digits}f}"
        return f"{s['mean']:.{digits}f}{sd}"

    def diff(df, a, b, col, unit="pp", digits=2) -> tuple[str, dict]:
        d = paired_difference(by_seed(df, a, col), by_seed(df, b, col))
        return describe_difference(d, digits, unit), d

    n = main["seed"].nunique()
    singles = ", ".join(LABELS[c] for c in SINGLE_TECHNIQUES)
    # (name, table, column, +1 when higher is better, unit, digits)
    measures = [("accuracy", "test top-1, %", main, "test_acc", 1, "pp", 2),
                ("generalisation", "test cross-entropy, lower is better", main, "test_loss", -1, "", 3),
                ("robustness", "mean accuracy over corruptions, %", per_run, "mean_corruption_acc", 1, "pp", 2)]
    sentences, better = [], []
    for name, what, df, col, sign, unit, digits in measures:
        values = ", ".join(f"{LABELS[c]} {mean_sd(df, c, col, digits)}" for c in ("kd_fa_at", "baseline", *SINGLE_TECHNIQUES))
        texts, beats_each = [], True
        for c in ("baseline", *SINGLE_TECHNIQUES):
            text, d = diff(df, "kd_fa_at", c, col, unit, digits)
            texts.append(f"− {LABELS[c]} {text}")
            if c in SINGLE_TECHNIQUES:
                beats_each = beats_each and d["significant"] and sign * d["mean"] > 0
        if beats_each:
            better.append(name)
        sentences.append(f"*{name.capitalize()}* ({what}): {values}; KD+FA+AT {'; '.join(texts)}.")
    if n < 2:
        verdict = "With one seed no difference can be called significant; run more seeds (`--seeds 0 1 2`)."
    elif better:
        rest = [m[0] for m in measures if m[0] not in better]
        verdict = (f"KD+FA+AT is significantly better than each of {singles} in {_and(better)}"
                   + (f", not in {_and(rest)}" if rest else "") + f" (Student-t over {n} seed-paired differences).")
    else:
        verdict = (f"In none of accuracy, generalisation and robustness is KD+FA+AT significantly better than each "
                   f"of {singles} (Student-t over {n} seed-paired differences).")
    paper = (f"The paper reports {PAPER_ACCURACY['kd_fa_at']:.2f} % (KD+FA+AT) vs {PAPER_ACCURACY['baseline']:.2f} "
             f"(baseline) and {PAPER_ACCURACY['kd']:.2f} (KD) from one run.")
    rq1 = ("**RQ1 — does the combination improve accuracy, generalisation and robustness over each technique "
           f"alone?** {' '.join(sentences)} {verdict} {paper} Calibration (ECE, lower is better): KD+FA+AT "
           f"{mean_sd(per_run, 'kd_fa_at', 'ece', 3)}, baseline {mean_sd(per_run, 'baseline', 'ece', 3)}.")
    if distances is not None and len(distances):
        rq1 += (f" Attention distance to the teacher: KD+FA+AT "
                f"{mean_sd(distances, 'kd_fa_at', 'attention_distance', 3)}, KD+AT "
                f"{mean_sd(distances, 'kd_at', 'attention_distance', 3)}, baseline "
                f"{mean_sd(distances, 'baseline', 'attention_distance', 3)}.")
    for t in teacher_seeds[1:]:
        other = runs[runs["teacher_seed"] == t]
        pairs = [f"{LABELS[ref]} {diff(other, 'kd_fa_at', ref, 'test_acc')[0]}"
                 for ref in ("baseline", "kd") if {"kd_fa_at", ref} <= set(other["config"])]
        if pairs:
            rq1 += f" With teacher seed {t} (test top-1): KD+FA+AT − {'; − '.join(pairs)}."
    rq2 = "**RQ2 — does transferring only the causally relevant regions help?** "
    if ablation_runs is None or ablation_runs.empty:
        rq2 += ("Not answered for these runs yet: run 09_mask_ablation (`notebooks/09_mask_ablation.ipynb` with this "
                "profile and seeds), which trains KD+FA+AT with no mask, Grad-CAM masks and random masks matched to "
                "their size; this answer is then built from its runs.")
    else:
        rq2 += "From the mask ablation (09): " + conclusion(ablation_runs)
    rq3 = _efficiency_answer(efficiency, diff(main, "kd_fa_at", "baseline", "test_acc")[0])
    return "\n\n".join([rq1, rq2, rq3])


def _latency(row: pd.Series, bs: int) -> dict[str, float]:
    return {f"{q}_ms_per_sample": row[f"latency_bs{bs}_{q}_ms_per_image"] for q in ("median", "q1", "q3")}


def _efficiency_answer(efficiency: pd.DataFrame, accuracy_gain: str) -> str:
    """RQ3 from :func:`kdnb.report.analyses.efficiency_table`: what the students cost to deploy (one
    network; latency differences only where they exceed the rounds' spread) and to train (each
    configuration's own work per step, and the shared teacher pass)."""
    stud = efficiency.drop(index="teacher", errors="ignore")
    teacher = efficiency.loc["teacher"]
    first = stud.iloc[0]
    lat = [_latency(r, 1) for _, r in stud.iterrows()]
    overlap = max(x["q1_ms_per_sample"] for x in lat) <= min(x["q3_ms_per_sample"] for x in lat)
    one_network = stud["parameters"].nunique() == 1 and stud["flops"].nunique() == 1
    if overlap:
        latency = "no measurable difference between the students (their interquartile ranges overlap)"
    elif one_network:  # identical networks whose IQRs do not overlap: the IQR understates the noise
        medians = stud["latency_bs1_median_ms_per_image"]
        spread = 100 * (medians.max() / medians.min() - 1)
        iqrs = [100 * (x["q3_ms_per_sample"] - x["q1_ms_per_sample"]) / x["median_ms_per_sample"] for x in lat]
        latency = (f"no measurable difference between the students: they are one network, yet not all their "
                   f"interquartile ranges overlap (medians up to {spread:.1f} % apart; each model's IQR "
                   f"{min(iqrs):.1f}–{max(iqrs):.1f} % of its median), so a single model's IQR understates the noise "
                   f"between models, and {spread:.1f} % is what this measurement resolves between two of them")
    else:
        latency = "KD+FA+AT against the baseline: " + latency_difference(_latency(stud.loc["kd_fa_at"], 1),
                                                                         _latency(stud.loc["baseline"], 1))
    text = (f"**RQ3 — accuracy against inference efficiency.** Every student deploys the same network: "
            f"{int(first['parameters']):,} parameters and {first['flops'] / 1e6:.1f} MFLOPs per image (teacher: "
            f"{int(teacher['parameters']):,} and {teacher['flops'] / 1e6:.1f}). Batch-1 latency, median of "
            f"{int(first['latency_rounds'])} rounds: {stud['latency_bs1_median_ms_per_image'].min():.2f}–"
            f"{stud['latency_bs1_median_ms_per_image'].max():.2f} ms/image on {first['device']} ({int(first['threads'])} "
            f"threads), {latency}. So whatever accuracy distillation adds (KD+FA+AT − baseline {accuracy_gain}) "
            f"costs nothing at inference; it is paid in training.")
    if math.isfinite(float(stud.loc["kd_fa_at", "own_train_ms_per_step"])):
        own = stud["own_train_ms_per_step"]
        def ratio(c: str) -> str:
            iqr = stud.loc[c].get("own_train_vs_baseline_iqr", float("nan"))
            return f"{stud.loc[c, 'own_train_vs_baseline']:.2f}×" + ("" if pd.isna(iqr) else f", IQR {iqr:.2f}")

        text += (f" Per training step, a configuration's own work (forward, backward, update) takes "
                 f"{own['baseline']:.1f} ms for the baseline, {own['kd']:.1f} ms for KD ({ratio('kd')}) and "
                 f"{own['kd_fa_at']:.1f} ms for KD+FA+AT ({ratio('kd_fa_at')}; ratios of the same epoch of the same "
                 f"cohort); the shared part of a cohort's step (the batch, the teacher pass and its Grad-CAM) takes "
                 f"{stud.loc['kd_fa_at', 'shared_train_ms_per_step']:.1f} ms, paid once per step for every student "
                 f"trained in the cohort.")
    else:
        text += (" The runs did not record their own training cost (trained before kdnb measured it, or with "
                 "steps replayed as CUDA graphs, which cannot be split per student).")
    return text
