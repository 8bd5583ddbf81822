"""Tables of the results notebook: accuracy with seed-paired intervals, per-metric summaries,
robustness pivots, provenance, and the markdown/CSV files 08 writes."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..engine.config import STUDENT_CONFIGS, TEACHER
from ..engine.runs import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, is_finished, read_json, run_path, write_text
from ..evaluation.stats import comparison_table, paired_difference, summarize
from .lookup import teacher_block, teacher_run_config
from .series import LABELS, PAPER_ACCURACY


def paper_table() -> pd.DataFrame:
    """The paper's reported accuracies (one run, best test accuracy over epochs, %)."""
    rows = [{"configuration": LABELS[c], "paper test top-1 (%)": v,
             "paper Δ vs baseline (pp)": round(v - PAPER_ACCURACY["baseline"], 2)}
            for c, v in PAPER_ACCURACY.items()]
    return pd.DataFrame(rows).set_index("configuration")


def _fmt(x: float, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _mean_std(mean: float, std: float, digits: int = 2) -> str:
    return _fmt(mean, digits) if math.isnan(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def _per_teacher(runs: pd.DataFrame, table, index_name: str | None = "teacher seed") -> pd.DataFrame:
    """``table(runs)``, or with runs of several teacher seeds one ``table`` per teacher seed, stacked
    (the teacher seed as the outer index level, or a column when ``index_name`` is None)."""
    if "teacher_seed" not in runs or runs["teacher_seed"].nunique() <= 1:
        return table(runs)
    parts = {int(t): table(g) for t, g in runs.groupby("teacher_seed", sort=True)}
    if index_name is None:
        return pd.concat([p.assign(teacher_seed=t) for t, p in parts.items()], ignore_index=True)
    return pd.concat(parts, names=[index_name])


def accuracy_table(runs: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Per configuration: test top-1 mean ± std over seeds, Δ vs baseline and vs KD (seed-paired,
    95% t-interval, significance), mean best epoch, and the paper's number beside it. With runs of
    several teacher seeds (``teacher_seed`` column), one such table per teacher seed: is a
    conclusion the same with another teacher?"""
    return _per_teacher(runs, lambda r: _accuracy_table(r, digits))


def _accuracy_table(runs: pd.DataFrame, digits: int) -> pd.DataFrame:
    comp = comparison_table(runs, "test_acc", reference="baseline", other="kd", digits=digits)
    best = runs.groupby("config", sort=False)["best_epoch"].mean()
    paper = [PAPER_ACCURACY.get(c) for c in comp["config"]]
    head = pd.DataFrame({"configuration": comp["config"].map(lambda c: LABELS.get(c, c)), "seeds": comp["n"],
                         "test top-1 (%)": [_mean_std(m, s, digits) for m, s in zip(comp["mean"], comp["std"])]})
    tail = pd.DataFrame({
        "best epoch": [_fmt(float(best[c]), 1) for c in comp["config"]],
        "paper (%)": [_fmt(p) if p is not None else "–" for p in paper],
        "paper Δ vs baseline (pp)": [_fmt(p - PAPER_ACCURACY["baseline"], digits, signed=True) if p is not None else "–"
                                     for p in paper]})
    return pd.concat([head, _delta_columns(comp, digits, " (pp)"), tail], axis=1).set_index("configuration")


def accuracy_numbers(runs: pd.DataFrame) -> pd.DataFrame:
    """Machine-readable version of :func:`accuracy_table` (for the CSV): numbers, not strings; a
    ``teacher_seed`` column when several teacher seeds are present."""
    return _per_teacher(runs, _accuracy_numbers, index_name=None)


def _accuracy_numbers(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    base = runs[runs["config"] == "baseline"].set_index("seed")["test_acc"]
    kd = runs[runs["config"] == "kd"].set_index("seed")["test_acc"]
    for c, grp in runs.groupby("config", sort=False):
        values = grp.set_index("seed")["test_acc"]
        s = summarize(values.to_numpy())
        row = {"config": c, "label": LABELS.get(c, c), "n_seeds": s["n"], "test_acc_mean": s["mean"],
               "test_acc_std": s["std"], "test_acc_ci_low": s["ci_low"], "test_acc_ci_high": s["ci_high"],
               "best_epoch_mean": float(grp["best_epoch"].mean()), "paper_test_acc": PAPER_ACCURACY.get(c)}
        for ref_name, ref in (("baseline", base), ("kd", kd)):
            if len(ref) and c != ref_name:
                d = paired_difference(values, ref)
                row.update({f"delta_vs_{ref_name}": d["mean"], f"delta_vs_{ref_name}_ci_low": d["ci_low"],
                            f"delta_vs_{ref_name}_ci_high": d["ci_high"], f"delta_vs_{ref_name}_label": d["label"],
                            f"delta_vs_{ref_name}_mde": d["mde"]})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_metric(df: pd.DataFrame, metric: str, digits: int = 4) -> pd.DataFrame:
    """Per configuration: n, mean ± std over seeds and the seed-paired Δ vs baseline and vs KD
    with 95% intervals and significance labels (``kdnb.evaluation.stats.comparison_table``)."""
    t = comparison_table(df, metric, reference="baseline", other="kd", digits=digits)
    head = pd.DataFrame({"configuration": t["config"].map(lambda c: LABELS.get(c, c)), "seeds": t["n"],
                         f"{metric} (mean ± std)": [_mean_std(m, s, digits) for m, s in zip(t["mean"], t["std"])]})
    return pd.concat([head, _delta_columns(t, digits)], axis=1).set_index("configuration")


# The references every configuration is compared with (comparison_table's key, the label shown).
REFERENCES: tuple[tuple[str, str], ...] = (("baseline", "baseline"), ("kd", "KD"))


def _delta_columns(comp: pd.DataFrame, digits: int, unit: str = "") -> pd.DataFrame:
    """The Δ, 95% CI and verdict columns (as text) vs each of :data:`REFERENCES` present in ``comp``,
    a :func:`kdnb.evaluation.stats.comparison_table`; a reference's own row reads "0 (reference)"."""
    out = {}
    for ref, name in REFERENCES:
        if f"Δ vs {ref}" not in comp.columns:
            continue
        own = comp[f"Δ vs {ref} sig"] == "reference"
        out[f"Δ vs {name}{unit}"] = ["0 (reference)" if o else _fmt(d, digits, signed=True)
                                     for d, o in zip(comp[f"Δ vs {ref}"], own)]
        out[f"95% CI vs {name}"] = list(comp[f"Δ vs {ref} CI"])
        out[f"MDE vs {name}{unit}"] = ["" if o else _fmt(m, digits) for m, o in zip(comp[f"Δ vs {ref} MDE"], own)]
        out[f"vs {name}"] = ["" if o else sig for sig, o in zip(comp[f"Δ vs {ref} sig"], own)]
    return pd.DataFrame(out, index=comp.index)


def robustness_table(robust: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per configuration (rows) × corruption (columns, mean over severities and
    seeds), with the clean accuracy first and the mean over corruptions last."""
    order = [lab for lab in ("teacher", *[LABELS[c] for c in STUDENT_CONFIGS]) if lab in set(robust["label"])]
    t = robust.pivot_table(index="label", columns="corruption", values="accuracy", aggfunc="mean", sort=False) * 100
    cols = ["clean"] + [c for c in t.columns if c != "clean"]
    t = t[cols]
    t["mean corruption"] = t[[c for c in cols if c != "clean"]].mean(axis=1)
    return t.reindex(order).rename_axis("configuration").round(1)


def robustness_pivot(robust: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per (configuration, corruption) × severity, mean over seeds."""
    order = [lab for lab in ("teacher", *[LABELS[c] for c in STUDENT_CONFIGS]) if lab in set(robust["label"])]
    corr = robust[robust["corruption"] != "clean"]
    t = corr.pivot_table(index=["label", "corruption"], columns="severity", values="accuracy", aggfunc="mean",
                         sort=False) * 100
    t = t.reindex(order, level=0)
    t.index.names = ["configuration", "corruption"]
    return t.round(1)


def robustness_by_severity_table(robust: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per configuration × severity (mean over corruptions and seeds; 0 = clean)."""
    order = [lab for lab in ("teacher", *[LABELS[c] for c in STUDENT_CONFIGS]) if lab in set(robust["label"])]
    t = robust.pivot_table(index="label", columns="severity", values="accuracy", aggfunc="mean") * 100
    return t.reindex(order).rename_axis("configuration").round(1)


def provenance(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int],
               configs: Sequence[str] = STUDENT_CONFIGS, teacher_seeds: Sequence[int] = (0,),
               subsets: dict[str, str] | None = None) -> dict[str, Any]:
    """Where the numbers come from: profile, seeds, hardware, data, sizes, the teacher(s), code
    version, training time and date. ``configs``: run folders of teacher seed 0 (configurations or
    the ablation's variant folders); another teacher seed's are those of its block
    (:func:`kdnb.report.lookup.teacher_block`), each run counted once. ``subsets``: each evaluation
    subset's composition, by name."""
    folders = [(c, 0) for c in configs] + [
        (teacher_run_config(c, profile, 0, t).run_name, t) for t in teacher_seeds if t != 0
        for c in teacher_block(runs_dir, profile, seeds, t, configs)]
    dirs = list(dict.fromkeys(run_path(runs_dir, profile, f, s) for f, _ in folders for s in seeds))
    cfgs = [read_json(d / CONFIG_FILE) for d in dirs]
    first = cfgs[0]
    def uniq(key: str) -> str:
        return ", ".join(sorted({str(c.get(key)) for c in cfgs}))

    out = {
        "profile": profile,
        "seeds": ", ".join(str(s) for s in seeds),
        "hardware": uniq("device_name") + f" ({uniq('device_type')}, {uniq('torch_threads')} threads)",
        "data": public_source(first.get("data_source", "?")),
        "train/val/test images": f"{first.get('n_train')} / {first.get('n_val')} / {first.get('n_test')}",
        "student": f"ResNet-18 width {uniq('width')}, batch {uniq('batch_size')}, lr {uniq('lr')}",
        "epochs (max)": f"{uniq('epochs')} (early stopping patience {uniq('patience')})",
        **{f"evaluation subset: {name}": text for name, text in (subsets or {}).items()},
    }
    teachers = []
    for t_seed in sorted({int(c.get("teacher_seed", 0)) for c in cfgs}):
        tdir = run_path(runs_dir, profile, TEACHER, t_seed)
        if is_finished(tdir):
            t, tm = read_json(tdir / CONFIG_FILE), read_json(tdir / METRICS_FILE)
            teachers.append(f"{t.get('arch')}{'+CBAM' if t.get('cbam') else ''} width {t.get('width')}, "
                            f"{t.get('epochs')} epochs, seed {t_seed}: test top-1 {100 * tm['test_acc']:.2f} %")
            dirs = [tdir, *dirs]
    if teachers:
        out["teacher"] = "; ".join(teachers) + (" (one teacher for every student seed)" if len(teachers) == 1 else
                                                " (every student seed distilled from each teacher)")
    run_cfgs = [read_json(d / CONFIG_FILE) for d in dirs]  # the teacher's commit too
    seconds = sum(attributed_train_seconds(d) for d in dirs if is_finished(d))
    out.update({
        TRAINING_TIME: f"{seconds / 60:.1f} min",
        "kdnb": f"{uniq('kdnb_version')} (git {', '.join(sorted({str(c.get('git_commit'))[:10] for c in run_cfgs}))})",
        "torch": uniq("torch_version") + f", {_precision(cfgs)}" + _compiled(cfgs),
        "date": _dt.datetime.now().strftime("%Y-%m-%d"),
    })
    return out


TRAINING_TIME = "training time (wall; a cohort's epoch split among the runs it trained)"


def attributed_train_seconds(run_dir: str | os.PathLike) -> float:
    """A run's share of the wall time that trained it: each epoch's seconds divided by the number of
    runs its cohort trained in that epoch, so that a cohort's epoch counts once in a sum over its
    members (``train_seconds`` is the whole cohort's time, for every member). Runs without a history
    of ``cohort_size`` count as trained alone."""
    run_dir = Path(run_dir)
    if (run_dir / HISTORY_FILE).is_file():
        history = read_json(run_dir / HISTORY_FILE)
        if history and all("seconds" in e for e in history):
            return sum(e["seconds"] / max(int(e.get("cohort_size") or 1), 1) for e in history)
    return float(read_json(run_dir / METRICS_FILE).get("train_seconds", 0.0))


def _compiled(cfgs: Sequence[dict[str, Any]]) -> str:
    """``, compiled`` when every run asked for compile, with the count of runs that trained eager
    after a failed compile (``compiled: false`` in their config.json)."""
    eager = sum(1 for c in cfgs if c.get("compile") and c.get("compiled") is False)
    label = ", compiled" if all(c.get("compile") for c in cfgs) else ""
    return label + (f" ({eager} of {len(cfgs)} runs eager after a failed compile)" if eager else "")


def _precision(cfgs: Sequence[dict[str, Any]]) -> str:
    """The arithmetic the runs trained in. ``amp`` only asks for bf16 autocast; the engine uses it
    where it pays (CUDA, CPUs with AMX) and records what it did as ``amp_active``."""
    used = [c.get("amp_active", "unknown" if c.get("amp") else False) for c in cfgs]
    kinds = set(used)
    if kinds == {True}:
        return "bf16 autocast"
    if kinds == {False}:
        return "fp32"
    if kinds == {"unknown"}:
        return "bf16 autocast asked for (whether it ran is not recorded)"
    return f"bf16 autocast in {used.count(True)} of {len(used)} runs, the others fp32 or not recorded"


def public_source(source: str) -> str:
    """A data source as published tables show it: absolute paths cut to their last folder, so a
    table names the dataset copy, not the machine it was read on."""
    return re.sub(r"(?<![\w.])/(?:[^\s/()]+/)*([^\s/()]+)/?", r"\1", source)


def markdown_table(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    d = df.reset_index() if index and (df.index.name or any(df.index.names)) else df
    cols = [str(c) for c in d.columns]
    def esc(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    return "\n".join(lines)


def write_results(table: pd.DataFrame, numbers: pd.DataFrame, prov: dict[str, Any],
                  figures_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results_table.md`` (table + provenance) and ``results.csv`` into ``figures_dir``."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    md = figures_dir / "results_table.md"
    csv = figures_dir / "results.csv"
    prov_lines = "\n".join(f"- {k}: {v}" for k, v in prov.items())
    write_text(md,
        "# kdnb results: test top-1 accuracy on CIFAR-10\n\n"
        "Written by `notebooks/08_results.ipynb`. Test accuracy of the best-by-validation-loss "
        "checkpoint, mean ± std over seeds; Δ is the seed-paired difference in percentage points with "
        "its 95% Student-t interval (\"not significant\" when the interval covers 0) and the minimum detectable "
        "effect (MDE: the smallest true difference this many seeds detect with 80 % power at α = 0.05, from the "
        "observed SD of the differences; a smaller effect may exist unseen). The paper's "
        "column is its reported best-test-accuracy-over-epochs from one run.\n\n"
        f"{markdown_table(table)}\n\n## Provenance\n\n{prov_lines}\n"
    )
    write_text(csv, numbers.assign(**{f"prov_{k}": v for k, v in prov.items()}).to_csv(index=False))
    return md, csv


def efficiency_view(efficiency: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """:func:`kdnb.report.analyses.efficiency_table` for reading: labels, units, median [IQR]."""
    def spread(med: float, iqr: float, d: int = digits) -> str:
        return "–" if pd.isna(med) else f"{med:.{d}f} (IQR {iqr:.{d}f})"

    out = pd.DataFrame(index=pd.Index(efficiency["label"], name="configuration"))
    out["parameters"] = [f"{int(v):,}" for v in efficiency["parameters"]]
    out["MFLOPs / image"] = [f"{v / 1e6:.1f}" for v in efficiency["flops"]]
    for col in efficiency.columns:
        if col.startswith("latency_bs") and col.endswith("_median_ms_per_image"):
            bs = col.removeprefix("latency_bs").removesuffix("_median_ms_per_image")
            out[f"latency bs={bs} (ms/image)"] = [spread(m, i, 3) for m, i in
                                                 zip(efficiency[col], efficiency[f"latency_bs{bs}_iqr_ms_per_image"])]
    out["own training (ms/step)"] = [spread(m, i, 1) for m, i in
                                     zip(efficiency["own_train_ms_per_step"], efficiency["own_train_ms_per_step_iqr"])]
    ratio_iqr = efficiency.get("own_train_vs_baseline_iqr", pd.Series(float("nan"), index=efficiency.index))
    out["own vs baseline, same epoch"] = ["–" if pd.isna(v) else f"{v:.2f}×" + ("" if pd.isna(i) else f" (IQR {i:.2f})")
                                          for v, i in zip(efficiency["own_train_vs_baseline"], ratio_iqr)]
    out["shared: batch + teacher + CAM (ms/step)"] = [_fmt(v, 1) for v in efficiency["shared_train_ms_per_step"]]
    if "bench_solo_ms_per_step" in efficiency:
        out["bench, alone (ms/step)"] = [spread(m, i, 1) for m, i in
                                         zip(efficiency["bench_solo_ms_per_step"], efficiency["bench_solo_ms_per_step_iqr"])]
    out["device (threads)"] = [f"{d} ({t})" for d, t in zip(efficiency["device"], efficiency["threads"])]
    return out


def robustness_numbers(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and seed: accuracy (%) on the clean robustness subset, on the whole test set,
    and mean over the corruptions of the subset (``robustness.csv``)."""
    return pd.DataFrame({"config": per_run["config"], "seed": per_run["seed"],
                         "clean_acc_subset": per_run["clean_acc_subset"], "test_acc": per_run["test_acc"],
                         "mean_corrupted_acc": per_run["mean_corruption_acc"]})


def write_evidence(figures_dir: str | os.PathLike, per_run: pd.DataFrame, subset: pd.DataFrame,
                   efficiency: pd.DataFrame) -> list[Path]:
    """Write ``robustness.csv`` (:func:`robustness_numbers`), ``robustness_subset.csv`` (``class``,
    ``images``) and ``efficiency.csv`` (per configuration: parameters, FLOPs, own and shared training
    ms/step, latency median and IQR) into ``figures_dir``, beside ``results.csv``."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    out = {"robustness.csv": robustness_numbers(per_run), "robustness_subset.csv": subset,
           "efficiency.csv": efficiency.reset_index()}
    for name, df in out.items():
        write_text(figures_dir / name, df.to_csv(index=False))
    return [figures_dir / n for n in out]
