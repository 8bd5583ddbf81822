"""Finished runs on disk → pandas tables, and the "run notebook X first" checks.

Every notebook after ``01`` reads what earlier notebooks wrote (``<runs_dir>/<profile>/<config>/seed<k>/``)
and never another kernel's memory. When an input is missing it raises :class:`MissingInput`,
whose message is one line naming the notebook to run first.

Accuracies in the tables are percentages (the paper's unit); the run files store fractions.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import CONFIGS, STUDENT_CONFIGS, TEACHER, RunConfig, identity_diff, make_config, run_folder
from .runs import (
    CONFIG_FILE, HISTORY_FILE, METRICS_FILE, atomic_write, is_finished, read_json, run_path, write_text,
)

# The numbered notebooks, in the order the pipeline runs them.
NOTEBOOKS: tuple[str, ...] = (
    "00_setup_and_data", "01_train_teacher", "02_baseline", "03_kd", "04_kd_fa", "05_kd_at",
    "06_kd_fa_at", "07_masks_and_attention", "08_results", "09_mask_ablation",
)
# The notebook that trains each configuration.
NOTEBOOK_FOR: dict[str, str] = {
    TEACHER: "01_train_teacher", "baseline": "02_baseline", "kd": "03_kd", "kd_fa": "04_kd_fa",
    "kd_at": "05_kd_at", "kd_fa_at": "06_kd_fa_at",
}
LABELS: dict[str, str] = {
    TEACHER: "teacher", "baseline": "baseline", "kd": "KD", "kd_fa": "KD+FA", "kd_at": "KD+AT",
    "kd_fa_at": "KD+FA+AT",
}
# The paper's Table (best test accuracy over epochs, one run, %). Reported numbers, not ours.
PAPER_ACCURACY: dict[str, float] = {
    "baseline": 80.56, "kd": 83.64, "kd_fa": 82.78, "kd_at": 83.53, "kd_fa_at": 83.77,
}
PAPER_TEACHER_ACCURACY = 84.61


class MissingInput(RuntimeError):
    """An input that an earlier notebook writes is missing; the message names that notebook.

    In Jupyter the error shows as its one-line message instead of a traceback.
    """

    def _render_traceback_(self) -> list[str]:  # IPython hook: replaces the traceback display
        return [f"{type(self).__name__}: {self}"]


def notebook_hint(config: str, profile: str, seed: int, teacher_seed: int = 0) -> str:
    """The instruction that produces the run ``config``/``seed`` (distilled from teacher seed
    ``teacher_seed``) under ``profile``."""
    nb = NOTEBOOK_FOR[config]
    seed_part = "" if config == TEACHER else f", seed={seed}"
    if config != TEACHER and teacher_seed:
        seed_part += f", overrides={{'teacher_seed': {teacher_seed}}}"
    return f"run notebooks/{nb}.ipynb first (profile={profile!r}{seed_part})"


class RunMismatch(MissingInput):
    """A finished run whose ``config.json`` is not the run a table or figure would claim it is."""


def _require_finished(runs_dir: str | os.PathLike, profile: str, config: str, seed: int,
                      expected: RunConfig | None = None) -> Path:
    """The finished run of ``config``/``seed`` in its folder (``expected``'s, else the config's)."""
    d = run_path(runs_dir, profile, expected.run_name if expected is not None else config, seed)
    if not is_finished(d):
        state = "unfinished run" if (d / CONFIG_FILE).is_file() else "no run"
        teacher_seed = expected.teacher_seed if expected is not None else 0
        raise MissingInput(f"{notebook_hint(config, profile, seed, teacher_seed)}: {state} in {d}")
    return d


def check_identity(run_dir: str | os.PathLike, expected: RunConfig) -> None:
    """:class:`RunMismatch` naming every identity setting in which the run's ``config.json``
    differs from ``expected``, and the way out."""
    diff = identity_diff(read_json(Path(run_dir) / CONFIG_FILE), expected)
    if diff:
        saved = ", ".join(f"{k}={a!r}" for k, (a, _) in diff.items())
        wanted = ", ".join(f"{k}={b!r}" for k, (_, b) in diff.items())
        raise RunMismatch(
            f"{run_dir} was trained with {saved} (its config.json), not as the {expected.run_name} run of profile "
            f"{expected.profile!r} read here ({wanted}): move that run aside (or use another runs_dir) and rerun "
            f"notebooks/{NOTEBOOK_FOR[expected.config]}.ipynb, or give this notebook the overrides it was trained with")


def require_run(runs_dir: str | os.PathLike, profile: str, config: str, seed: int = 0,
                expected: RunConfig | None = None) -> Path:
    """The directory of a finished run, or :class:`MissingInput` naming the notebook that makes it.

    A run is identified by its settings, not its folder: its ``config.json`` must be ``expected``
    (default: ``config`` under ``profile`` as the notebooks make it), or :class:`RunMismatch` names
    the settings that differ. So a 06 run trained with ``overrides={"keep": 0.3}`` is never
    reported as KD+FA+AT at the profile's keep. The run's folder is ``expected``'s
    (:attr:`RunConfig.run_name`: ``<config>-t<k>`` for a student of teacher seed k)."""
    if expected is None and config in CONFIGS:
        expected = make_config(config, profile, seed)
    d = _require_finished(runs_dir, profile, config, seed, expected)
    if expected is not None:
        check_identity(d, expected)
    return d


def teacher_run_config(config: str, profile: str, seed: int, teacher_seed: int = 0) -> RunConfig:
    """The settings of student ``config`` as the notebooks make it, distilled from teacher seed
    ``teacher_seed`` (its own folder when that is not 0)."""
    return make_config(config, profile, seed, {"teacher_seed": teacher_seed})


def finished_seeds(runs_dir: str | os.PathLike, profile: str, config: str) -> list[int]:
    """Seeds with a finished run of ``config`` under ``profile``, ascending."""
    base = Path(runs_dir) / profile / config
    if not base.is_dir():
        return []
    seeds = []
    for d in base.glob("seed*"):
        if d.name[4:].isdigit() and is_finished(d):
            seeds.append(int(d.name[4:]))
    return sorted(seeds)


def resolve_seeds(
    runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int] | None = None,
    configs: Sequence[str] = STUDENT_CONFIGS,
) -> list[int]:
    """``seeds`` checked to be finished for every config, or (``None``) every seed finished for all.

    Raises :class:`MissingInput` naming the first notebook to run.
    """
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        for config in configs:
            for s in seeds:
                _require_finished(runs_dir, profile, config, s)
        return seeds
    per_config = {c: set(finished_seeds(runs_dir, profile, c)) for c in configs}
    for c in configs:
        if not per_config[c]:
            raise MissingInput(f"{notebook_hint(c, profile, 0)}: no finished run in {Path(runs_dir) / profile / c}")
    common = sorted(set.intersection(*per_config.values()))
    if not common:
        c = min(configs, key=lambda k: len(per_config[k]))
        s = min(set.union(*per_config.values()) - per_config[c])
        raise MissingInput(f"{notebook_hint(c, profile, s)}: no seed is finished for every configuration")
    return common


# ---------------------------------------------------------------- tables from run files
def resolve_teacher_seeds(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int],
                          teacher_seeds: Sequence[int] | None = None,
                          configs: Sequence[str] = STUDENT_CONFIGS) -> list[int]:
    """``teacher_seeds`` as ints, or (``None``) 0 and every other finished teacher seed whose students
    are finished for every config and seed (the runs of a second teacher, see :attr:`RunConfig.run_name`)."""
    if teacher_seeds is not None:
        return [int(t) for t in teacher_seeds]
    out = [0]
    for t in finished_seeds(runs_dir, profile, TEACHER):
        if t != 0 and all(is_finished(run_path(runs_dir, profile, teacher_run_config(c, profile, s, t).run_name, s))
                          for c in configs for s in seeds):
            out.append(t)
    return out


def collect_runs(
    runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], configs: Sequence[str] = STUDENT_CONFIGS,
    teacher_seeds: Sequence[int] = (0,),
) -> pd.DataFrame:
    """One row per (teacher seed, config, seed): test/val accuracy (%), losses, best epoch, size and
    time, and the teacher seed from the run's ``config.json``."""
    rows = []
    for teacher_seed in teacher_seeds:
        for config in configs:
            for seed in seeds:
                d = require_run(runs_dir, profile, config, seed,
                                teacher_run_config(config, profile, seed, teacher_seed))
                m = read_json(d / METRICS_FILE)
                rows.append({
                    "config": config, "label": LABELS.get(config, config), "seed": seed,
                    "teacher_seed": int(read_json(d / CONFIG_FILE).get("teacher_seed", 0)),
                    "test_acc": 100 * m["test_acc"], "val_acc": 100 * m["val_acc"],
                    "test_loss": m["test_loss"], "val_loss": m["val_loss"],
                    "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "params": m["params"],
                    "train_seconds": m["train_seconds"], "run_dir": str(d),
                })
    return pd.DataFrame(rows)


def collect_histories(
    runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], configs: Sequence[str] = STUDENT_CONFIGS
) -> pd.DataFrame:
    """Long per-epoch table (config, label, seed, epoch, train_loss, val_loss, val_acc %, …)."""
    frames = []
    for config in configs:
        for seed in seeds:
            d = require_run(runs_dir, profile, config, seed)
            h = history_frame(read_json(d / HISTORY_FILE))
            h.insert(0, "seed", seed)
            h.insert(0, "label", LABELS.get(config, config))
            h.insert(0, "config", config)
            frames.append(h)
    return pd.concat(frames, ignore_index=True)


# Mask statistics per epoch (fractions): the masks' mean kept share, and the share of images whose
# cam is too sparse for `keep` (cam-based masks). Histories written before a statistic existed lack
# it, and runs without a cam hold null: both read as NaN.
MASK_STATS: tuple[str, ...] = ("mask_share", "cam_short_share")


def history_frame(history: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A run's per-epoch history as a DataFrame, accuracies in %, mask statistics as floats (NaN
    where missing)."""
    h = pd.DataFrame(list(history))
    for col in ("train_acc", "val_acc"):
        if col in h:
            h[col] = 100 * h[col]
    for col in MASK_STATS:
        h[col] = h[col].astype(float) if col in h else float("nan")
    return h


def mask_statistics(history: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean over a run's epochs of each of :data:`MASK_STATS` (NaN when the history lacks it)."""
    h = history_frame(history)
    return {col: float(h[col].mean()) if len(h) and h[col].notna().any() else float("nan") for col in MASK_STATS}


def run_summary(run: Any) -> pd.DataFrame:
    """A finished run's metrics as a one-column table (accuracies in %), and how it was trained.

    ``run``: a :class:`kdnb.train.RunResult` (or its run folder), or a metrics dict alone."""
    run_dir = getattr(run, "run_dir", run if isinstance(run, (str, os.PathLike)) else None)
    metrics = getattr(run, "metrics", None) or (read_json(Path(run_dir) / METRICS_FILE) if run_dir else run)
    keys = ["best_epoch", "epochs_run", "stopped_early", "val_loss", "val_acc", "test_loss", "test_acc",
            "params", "train_seconds", "median_epoch_seconds"]
    out = {}
    for k in keys:
        if k in metrics:
            v = metrics[k]
            out[k + (" (%)" if k.endswith("_acc") else "")] = round(100 * v, 2) if k.endswith("_acc") else v
    if run_dir is not None:
        out["trained"] = trained_how(run_dir)
    return pd.DataFrame({"value": out})


def trained_how(run_dir: str | os.PathLike) -> str:
    """How a run was trained, from its ``config.json``: alone, or in a cohort (one teacher pass per
    batch for all members) with which other runs.

    A cohort member's numbers are those it would have alone (tests/test_cohort.py); its
    ``train_seconds`` is the wall time of the shared epochs, not of this member alone."""
    cohort = read_json(Path(run_dir) / CONFIG_FILE).get("cohort")
    if not cohort:
        return "alone"
    return "cohort with " + " ".join(c for c in cohort if c != Path(run_dir).parent.name)


def config_table(cfg) -> pd.DataFrame:
    """The settings of one run, one row per setting (pandas shows all of them)."""
    d = cfg.to_dict()
    return pd.DataFrame({"value": [str(v) for v in d.values()]}, index=pd.Index(list(d), name="setting"))


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


def _ci_text(ci: str) -> str:
    return "–" if "nan" in str(ci) else ci


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
    from .stats import comparison_table

    comp = comparison_table(runs, "test_acc", reference="baseline", other="kd", digits=digits)
    best = runs.groupby("config", sort=False)["best_epoch"].mean()
    rows = []
    for _, r in comp.iterrows():
        c = r["config"]
        row = {
            "configuration": LABELS.get(c, c), "seeds": int(r["n"]),
            "test top-1 (%)": _mean_std(r["mean"], r["std"], digits),
        }
        for ref, name in (("baseline", "baseline"), ("kd", "KD")):
            if f"Δ vs {ref}" not in comp.columns:
                continue
            if c == ref:
                row[f"Δ vs {name} (pp)"], row[f"95% CI vs {name}"], row[f"vs {name}"] = "0 (reference)", "", ""
            else:
                row[f"Δ vs {name} (pp)"] = _fmt(r[f"Δ vs {ref}"], digits, signed=True)
                row[f"95% CI vs {name}"] = _ci_text(r[f"Δ vs {ref} CI"])
                row[f"vs {name}"] = r[f"Δ vs {ref} sig"]
        row["best epoch"] = _fmt(float(best[c]), 1)
        paper = PAPER_ACCURACY.get(c)
        row["paper (%)"] = _fmt(paper) if paper is not None else "–"
        row["paper Δ vs baseline (pp)"] = (
            _fmt(paper - PAPER_ACCURACY["baseline"], digits, signed=True) if paper is not None else "–")
        rows.append(row)
    return pd.DataFrame(rows).set_index("configuration")


def accuracy_numbers(runs: pd.DataFrame) -> pd.DataFrame:
    """Machine-readable version of :func:`accuracy_table` (for the CSV): numbers, not strings; a
    ``teacher_seed`` column when several teacher seeds are present."""
    return _per_teacher(runs, _accuracy_numbers, index_name=None)


def _accuracy_numbers(runs: pd.DataFrame) -> pd.DataFrame:
    from .stats import paired_difference, summarize

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
                            f"delta_vs_{ref_name}_ci_high": d["ci_high"], f"delta_vs_{ref_name}_label": d["label"]})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- provenance and markdown
def provenance(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int],
               configs: Sequence[str] = STUDENT_CONFIGS, teacher_seeds: Sequence[int] = (0,)) -> dict[str, Any]:
    """Where the numbers come from: profile, seeds, hardware, data, sizes, the teacher(s), code
    version, training time and date. ``configs``: run folders (as for teacher seed 0; those of
    other ``teacher_seeds`` are found by :func:`kdnb.config.run_folder`)."""
    dirs = [run_path(runs_dir, profile, run_folder(c, t), s) for t in teacher_seeds for c in configs for s in seeds]
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
    seconds = sum(read_json(d / METRICS_FILE).get("train_seconds", 0.0) for d in dirs if is_finished(d))
    out.update({
        "training time (sum over these runs)": f"{seconds / 60:.1f} min",
        "kdnb": f"{uniq('kdnb_version')} (git {', '.join(sorted({str(c.get('git_commit'))[:10] for c in run_cfgs}))})",
        "torch": uniq("torch_version") + (", bf16 autocast" if uniq("amp") == "True" else "")
        + (", compiled" if uniq("compile") == "True" else ""),
        "date": _dt.datetime.now().strftime("%Y-%m-%d"),
    })
    return out


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
        "its 95% Student-t interval (\"not significant\" when the interval covers 0). The paper's "
        "column is its reported best-test-accuracy-over-epochs from one run.\n\n"
        f"{markdown_table(table)}\n\n## Provenance\n\n{prov_lines}\n"
    )
    write_text(csv, numbers.assign(**{f"prov_{k}": v for k, v in prov.items()}).to_csv(index=False))
    return md, csv


# ---------------------------------------------------------------- on-disk cache for evaluations
def _run_fingerprint(runs_dir: str | os.PathLike, profile: str, keys: Iterable[tuple[str, int]]) -> list:
    """Identity of the checkpoints an evaluation reads (a retrained run changes it)."""
    from .runs import BEST_FILE

    out = []
    for c, s in keys:
        st = (run_path(runs_dir, profile, c, s) / BEST_FILE).stat()
        out.append([c, s, st.st_mtime_ns, st.st_size])
    return out


def _code_fingerprint(*modules: str) -> str:
    """Hash of the kdnb modules an evaluation runs, so a code change invalidates the cache."""
    import hashlib

    h = hashlib.sha1()
    for m in modules:
        h.update((Path(__file__).parent / f"{m}.py").read_bytes())
    return h.hexdigest()[:12]


def cached(cache_dir: str | os.PathLike | None, name: str, key: dict[str, Any], compute):
    """``compute()``, stored in ``cache_dir`` under a hash of ``key`` and reused while the key is
    the same (no cache when ``cache_dir`` is None). Delete the ``.cache-*`` files to recompute."""
    import hashlib
    import json
    import pickle

    if cache_dir is None:
        return compute()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f".cache-{name}-{digest}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                value = pickle.load(f)
            print(f"{name}: reusing the stored result ({path.name}; delete it to recompute)")
            return value
        except Exception:  # a damaged cache is only recomputed
            pass
    value = compute()
    atomic_write(path, lambda f: pickle.dump(value, f))
    return value


# ---------------------------------------------------------------- models and evaluation (07, 08)
def _device(name: str | Any):
    """``auto`` → CUDA when available, else CPU (as the training engine)."""
    from .train import resolve_device

    return resolve_device(name) if isinstance(name, str) else name


def _subset(data, n: int | None) -> tuple:
    """The first ``n`` test images (all when ``None``); a fixed, class-mixed subset."""
    x, y = data.test_x, data.test_y
    if n is not None and n < len(y):
        x, y = x[:n], y[:n]
    return x, y


def load_students(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int],
                  configs: Sequence[str] = STUDENT_CONFIGS, device: Any = "cpu") -> dict[tuple[str, int], Any]:
    """The best-by-validation model of every (config, seed), in eval mode."""
    from .train import load_trained

    return {(c, s): load_trained(require_run(runs_dir, profile, c, s), device) for c in configs for s in seeds}


def load_teacher_of(runs_dir: str | os.PathLike, profile: str, seed: int = 0, device: Any = "cpu"):
    """The frozen teacher (seed ``seed``) of ``profile``, or :class:`MissingInput` naming notebook 01."""
    from .train import build_student
    from .runs import BEST_FILE, load_torch
    from .config import config_from_dict

    d = require_run(runs_dir, profile, TEACHER, seed)
    tcfg = config_from_dict(read_json(d / CONFIG_FILE))
    model = build_student(tcfg)
    model.load_state_dict(load_torch(d / BEST_FILE)["model"])
    return model.to(device).eval().requires_grad_(False)


def first_per_class(labels, num_classes: int) -> list[int]:
    """Index of the first image of each class (classes without images are left out)."""
    import torch

    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx):
            out.append(int(idx[0]))
    return out


def attention_panel(runs_dir: str | os.PathLike, profile: str, seed: int, data, *, stage: str = "layer3",
                    cam_stage: str = "layer3", keeps: Sequence[float] = (0.25, 0.5, 0.75),
                    configs: Sequence[str] = STUDENT_CONFIGS, teacher_seed: int = 0) -> dict[str, Any]:
    """For the first test image of each class: the image, the teacher's Grad-CAM for the true class
    (at ``cam_stage``), binary causal masks at each ``keep`` (at the student's ``stage`` size) and the
    attention maps (p=2) of the teacher and each student at ``stage``."""
    import torch

    from .data import normalize
    from .losses import attention_map
    from .masks import causal_mask, gradcam

    idx = first_per_class(data.test_y, data.num_classes)
    images, labels = data.test_x[idx], data.test_y[idx]
    x = normalize(images)
    teacher = load_teacher_of(runs_dir, profile, teacher_seed)
    students = load_students(runs_dir, profile, [seed], configs)
    cam = gradcam(teacher, x, cam_stage, labels)
    with torch.no_grad():
        s_feats = {c: students[(c, seed)](x, return_features=True) for c in configs}
        t_logits, t_feats = teacher(x, return_features=True)
    size = tuple(next(iter(s_feats.values()))[1][stage].shape[-2:])
    masks = {float(k): causal_mask(cam, float(k), "binary", size) for k in keeps}

    def amap(feat):
        return attention_map(feat, 2, size=size).view(-1, *size)

    attention = {"teacher": amap(t_feats[stage])}
    predictions = {"teacher": t_logits.argmax(1) == labels}
    for c in configs:
        logits, feats = s_feats[c]
        attention[LABELS[c]] = amap(feats[stage])
        predictions[LABELS[c]] = logits.argmax(1) == labels
    return {"images": images, "labels": labels, "classes": [data.classes[int(i)] for i in labels], "cam": cam,
            "masks": masks, "attention": attention, "predictions": predictions, "stage": stage, "size": size}


def mask_example(keeps: Sequence[float] = (0.25, 0.5, 0.75), size: int = 4) -> pd.DataFrame:
    """Binary causal masks of a fixed ``size``×``size`` cam (values 0..1 in raster order): which
    positions each ``keep`` retains. A deterministic check of the thresholding rule."""
    import torch

    from .masks import causal_mask

    cam = torch.linspace(0, 1, size * size).view(1, size, size).flip(-1)
    rows = {"cam": [" ".join(f"{v:.2f}" for v in r) for r in cam[0].tolist()]}
    for k in keeps:
        m = causal_mask(cam, float(k), "binary")[0]
        rows[f"keep={k:g} ({int(m.sum())}/{size * size})"] = [" ".join(str(int(v)) for v in r) for r in m.tolist()]
    return pd.DataFrame(rows).rename_axis("row")


def attention_distances(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], data, *,
                        stage: str = "layer3", n_images: int | None = None, configs: Sequence[str] = STUDENT_CONFIGS,
                        teacher_seed: int = 0, batch_size: int = 250, device: str = "auto",
                        progress: bool = True, cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per (config, seed): mean over test images of ‖a_s − a_t‖₂, the L2 distance between the
    normalised attention maps (p=2) of student and teacher at ``stage`` (0 = identical, max 2).
    With ``cache_dir`` the result is stored and reused while runs, settings and code are unchanged."""
    keys = [(TEACHER, teacher_seed)] + [(c, s) for c in configs for s in seeds]
    key = {"runs": _run_fingerprint(runs_dir, profile, keys) if all(
               is_finished(run_path(runs_dir, profile, c, s)) for c, s in keys) else None,
           "stage": stage, "n_images": n_images, "data": data.source, "code": _code_fingerprint("results", "evaluate", "losses")}
    if key["runs"] is None:
        cache_dir = None  # let the computation raise MissingInput
    return cached(cache_dir, "attention_distance", key, lambda: _attention_distances(
        runs_dir, profile, seeds, data, stage=stage, n_images=n_images, configs=configs,
        teacher_seed=teacher_seed, batch_size=batch_size, device=device, progress=progress))


def _attention_distances(runs_dir, profile, seeds, data, *, stage, n_images, configs, teacher_seed, batch_size,
                         device, progress) -> pd.DataFrame:
    from .data import normalize
    from .evaluate import attention_distances

    dev = _device(device)
    x_all, _ = _subset(data, n_images)
    teacher = load_teacher_of(runs_dir, profile, teacher_seed, dev)
    students = load_students(runs_dir, profile, seeds, configs, dev)
    dist = attention_distances(students, teacher, x_all, normalize, stage=stage, batch_size=batch_size, device=dev,
                               progress=progress)
    rows = [{"config": c, "label": LABELS[c], "seed": s, "attention_distance": dist[(c, s)],
             "images": len(x_all), "stage": stage} for (c, s) in students]
    return pd.DataFrame(rows)


def summarize_metric(df: pd.DataFrame, metric: str, digits: int = 4) -> pd.DataFrame:
    """Per configuration: n, mean ± std over seeds and the seed-paired Δ vs baseline and vs KD
    with 95% intervals and significance labels (``kdnb.stats.comparison_table``)."""
    from .stats import comparison_table

    t = comparison_table(df, metric, reference="baseline", other="kd", digits=digits)
    out = pd.DataFrame({"configuration": t["config"].map(lambda c: LABELS.get(c, c)), "seeds": t["n"],
                        f"{metric} (mean ± std)": [_mean_std(m, s, digits) for m, s in zip(t["mean"], t["std"])]})
    for ref, name in (("baseline", "baseline"), ("kd", "KD")):
        if f"Δ vs {ref}" not in t.columns:
            continue
        out[f"Δ vs {name}"] = [("0 (reference)" if sig == "reference" else _fmt(d, digits, signed=True))
                               for d, sig in zip(t[f"Δ vs {ref}"], t[f"Δ vs {ref} sig"])]
        out[f"95% CI vs {name}"] = [_ci_text(ci) for ci in t[f"Δ vs {ref} CI"]]
        out[f"vs {name}"] = [("" if sig == "reference" else sig) for sig in t[f"Δ vs {ref} sig"]]
    return out.set_index("configuration")


def evaluate_models(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], data, *,
                    robustness_images: int | None = 1000, corruption_seed: int = 0, cifar10c_dir: str | None = None,
                    configs: Sequence[str] = STUDENT_CONFIGS, teacher_seed: int = 0, n_bins: int = 15,
                    device: str = "auto", progress: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Test-set predictions of the teacher and every student run → calibration (ECE, reliability
    tables pooled over seeds), top-1 agreement with the teacher, and robustness to corruptions on
    the first ``robustness_images`` test images (``kdnb.evaluate.robustness``).

    Returns ``{"per_run": DataFrame, "robustness": long DataFrame, "reliability": {label: table}}``;
    the teacher appears as config ``teacher`` (seed ``teacher_seed``) for reference. With
    ``cache_dir`` the result is stored and reused while runs, settings and code are unchanged.
    """
    keys = [(TEACHER, teacher_seed)] + [(c, s) for c in configs for s in seeds]
    for c, s in keys:
        require_run(runs_dir, profile, c, s)
    key = {"runs": _run_fingerprint(runs_dir, profile, keys), "robustness_images": robustness_images,
           "corruption_seed": corruption_seed, "cifar10c_dir": cifar10c_dir, "n_bins": n_bins, "data": data.source,
           "code": _code_fingerprint("results", "evaluate", "corruptions", "calibration")}
    return cached(cache_dir, "evaluation", key, lambda: _evaluate_models(
        runs_dir, profile, seeds, data, robustness_images=robustness_images, corruption_seed=corruption_seed,
        cifar10c_dir=cifar10c_dir, configs=configs, teacher_seed=teacher_seed, n_bins=n_bins, device=device,
        progress=progress))


def _evaluate_models(runs_dir, profile, seeds, data, *, robustness_images, corruption_seed, cifar10c_dir, configs,
                     teacher_seed, n_bins, device, progress) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from .calibration import expected_calibration_error, reliability_table
    from .data import normalize
    from .evaluate import accuracy, agreement, predict, robustness, robustness_summary

    dev = _device(device)
    x, y = data.test_x, data.test_y
    xr, yr = _subset(data, robustness_images)
    models = {("teacher", teacher_seed): load_teacher_of(runs_dir, profile, teacher_seed, dev)}
    models.update(load_students(runs_dir, profile, seeds, configs, dev))
    logits: dict[tuple[str, int], torch.Tensor] = {}
    rows, robust = [], []
    corrupted: dict = {}  # every model sees the same corrupted sets, made once
    for (c, s), model in tqdm(models.items(), desc="evaluating runs", disable=not progress):
        lg = logits[(c, s)] = predict(model, x, normalize, device=dev)
        rb = robustness(model, xr, yr, normalize, seed=corruption_seed, cifar10c_dir=cifar10c_dir, device=dev,
                        cache=corrupted)
        summ = robustness_summary(rb)
        robust.append(rb.assign(config=c, label=LABELS[c], seed=s))
        rows.append({
            "config": c, "label": LABELS[c], "seed": s,
            "test_acc": 100 * accuracy(lg, y),
            "ece": expected_calibration_error(lg, y, n_bins, from_logits=True),
            "agreement": 100 * agreement(lg, logits[("teacher", teacher_seed)]),
            "clean_acc_subset": 100 * summ["clean"],
            "mean_corruption_acc": 100 * summ["mean_corruption"],
            "corruption_images": len(yr),
        })
    per_run = pd.DataFrame(rows)
    reliability = {}
    for c in ["teacher", *configs]:
        keys = [k for k in logits if k[0] == c]
        pooled = torch.cat([logits[k] for k in keys])
        reliability[LABELS[c]] = reliability_table(pooled, y.repeat(len(keys)), n_bins, from_logits=True)
    robust_df = pd.concat(robust, ignore_index=True)
    return {"per_run": per_run, "robustness": robust_df, "reliability": reliability}


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


def efficiency_table(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], *, repeats: int = 20,
                     device: str = "auto", configs: Sequence[str] = STUDENT_CONFIGS, teacher_seed: int = 0,
                     batch_sizes: Sequence[int] = (1, 256)) -> pd.DataFrame:
    """Per model: deployed parameters (FA connectors excluded: they live in the objective), FLOPs
    per 32×32 image, median latency per sample at each batch size on ``device`` (after warm-up;
    the device is named), and training seconds per epoch relative to the baseline (run histories)."""
    from .efficiency import count_parameters, flops_per_image, measure_latency, training_cost_ratio

    device = _device(device)
    models = {"teacher": load_teacher_of(runs_dir, profile, teacher_seed, device)}
    first = min(seeds)
    models.update({c: m for (c, _), m in load_students(runs_dir, profile, [first], configs, device).items()})
    hist = collect_histories(runs_dir, profile, seeds, configs)
    ratio = training_cost_ratio(
        {c: [g.to_dict("records") for _, g in hist[hist["config"] == c].groupby("seed")] for c in configs})
    rows = []
    for c, model in models.items():
        row = {"configuration": LABELS[c], "parameters": count_parameters(model),
               "MFLOPs / image": flops_per_image(model) / 1e6}
        for bs in batch_sizes:
            lat = measure_latency(model, bs, device, warmup=max(2, repeats // 5), repeats=repeats)
            row[f"latency bs={bs} (ms/image)"] = lat["median_ms_per_sample"]
            row["device"] = lat["device"]
        row["train s/epoch (median)"] = ratio.loc[c, "median_seconds_per_epoch"] if c in ratio.index else float("nan")
        row["train time vs baseline"] = ratio.loc[c, "ratio"] if c in ratio.index else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("configuration")


def _and(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# The paper's techniques, each added to KD alone; RQ1 asks whether their combination (kd_fa_at) beats each.
SINGLE_TECHNIQUES: tuple[str, ...] = ("kd", "kd_fa", "kd_at")


def research_answers(runs: pd.DataFrame, per_run: pd.DataFrame, efficiency: pd.DataFrame,
                     distances: pd.DataFrame | None = None, ablation_runs: pd.DataFrame | None = None) -> str:
    """Markdown answering the paper's three questions under its numbering, from the numbers just
    computed: RQ1 does the combination (KD+FA+AT) improve accuracy, generalisation and robustness over
    each technique alone; RQ2 does transferring only the causally relevant regions help (from 09's
    ablation runs, ``ablation_runs`` as :func:`kdnb.ablation.saved_runs` returns them; None: "run 09");
    RQ3 accuracy against inference efficiency. ``runs`` may hold several teacher seeds (the lowest is
    the main series; the others add a sentence each). Every number in the text comes from the arguments."""
    from .ablation import conclusion
    from .stats import paired_difference, summarize

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
        ci = "" if math.isnan(d["ci_low"]) else f", 95% CI [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"
        return f"{d['mean']:+.{digits}f}{' ' + unit if unit else ''}{ci}, {d['label']}", d

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
        rq1 += (f" With teacher seed {t} (test top-1): KD+FA+AT − baseline {diff(other, 'kd_fa_at', 'baseline', 'test_acc')[0]}; "
                f"− KD {diff(other, 'kd_fa_at', 'kd', 'test_acc')[0]}.")
    rq2 = "**RQ2 — does transferring only the causally relevant regions help?** "
    if ablation_runs is None or ablation_runs.empty:
        rq2 += ("Not answered for these runs yet: run 09_mask_ablation (`notebooks/09_mask_ablation.ipynb` with this "
                "profile and seeds), which trains KD+FA+AT with no mask, Grad-CAM masks and random masks matched to "
                "their size; this answer is then built from its runs.")
    else:
        rq2 += "From the mask ablation (09): " + conclusion(ablation_runs)
    stud = efficiency.drop(index="teacher", errors="ignore")
    lat_col = next(c for c in efficiency.columns if c.startswith("latency bs=1"))
    rq3 = (f"**RQ3 — accuracy against inference efficiency.** Every student deploys the same network: "
           f"{int(stud['parameters'].iloc[0]):,} parameters and {stud['MFLOPs / image'].iloc[0]:.1f} MFLOPs per image "
           f"(teacher: {int(efficiency.loc['teacher', 'parameters']):,} and "
           f"{efficiency.loc['teacher', 'MFLOPs / image']:.1f}); batch-1 latency "
           f"{stud[lat_col].min():.2f}–{stud[lat_col].max():.2f} ms/image on {efficiency['device'].iloc[0]}. So "
           f"whatever accuracy distillation adds (KD+FA+AT − baseline {diff(main, 'kd_fa_at', 'baseline', 'test_acc')[0]}) "
           f"costs nothing at inference; it is paid in training: KD+FA+AT takes "
           f"{efficiency.loc['KD+FA+AT', 'train time vs baseline']:.2f}× the baseline's time per epoch "
           f"(KD {efficiency.loc['KD', 'train time vs baseline']:.2f}×).")
    return "\n\n".join([rq1, rq2, rq3])


def read_attention_distances(results_dir: str | os.PathLike, seeds: Sequence[int],
                             configs: Sequence[str] = STUDENT_CONFIGS) -> pd.DataFrame:
    """The attention distances ``07_masks_and_attention`` wrote, for ``seeds``, or :class:`MissingInput`."""
    path = Path(results_dir) / "attention_distance.csv"
    hint = f"run notebooks/07_masks_and_attention.ipynb first (seeds={list(seeds)})"
    if not path.is_file():
        raise MissingInput(f"{hint}: {path} not found")
    df = pd.read_csv(path)
    have = set(zip(df["config"], df["seed"]))
    missing = [(c, s) for c in configs for s in seeds if (c, s) not in have]
    if missing:
        raise MissingInput(f"{hint}: {path} has no distance for {missing[0][0]} seed {missing[0][1]}")
    return df[df["seed"].isin(list(seeds)) & df["config"].isin(list(configs))].reset_index(drop=True)
