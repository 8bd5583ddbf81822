"""Finished runs on disk → pandas tables, and the "run notebook X first" checks.

Every notebook after ``01`` reads what earlier notebooks wrote (``<runs_dir>/<profile>/<config>/seed<k>/``)
and never another kernel's memory. When an input is missing it raises :class:`MissingInput`,
whose message is one line naming the notebook to run first.

Accuracies in the tables are percentages (the paper's unit); the run files store fractions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..engine.config import CONFIGS, STUDENT_CONFIGS, TEACHER, RunConfig, identity_diff, make_config
from ..engine.runs import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, is_finished, read_json, run_path
from .series import LABELS, NOTEBOOK_FOR


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


def teacher_block(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], teacher_seed: int,
                  configs: Sequence[str] = STUDENT_CONFIGS, strict: bool = True) -> list[str]:
    """The configurations of ``configs`` in teacher seed ``teacher_seed``'s block of the tables: for the
    main series (0) all of them; for another teacher those without a teacher (their runs are shared:
    a baseline has no teacher seed) and the distilled ones finished for every seed, so a second
    teacher may repeat only part of the series (e.g. KD and KD+FA+AT). A distilled configuration
    finished for some seeds only is a run in progress: :class:`MissingInput` naming the next run
    (with ``strict``), else the teacher has no block (``[]``)."""
    if teacher_seed == 0:
        return list(configs)
    block = []
    for c in configs:
        cfgs = [teacher_run_config(c, profile, s, teacher_seed) for s in seeds]
        if not cfgs[0].needs_teacher:
            block.append(c)
            continue
        done = [is_finished(run_path(runs_dir, profile, cfg.run_name, cfg.seed)) for cfg in cfgs]
        if all(done):
            block.append(c)
        elif any(done):
            if not strict:
                return []
            s = seeds[done.index(False)]
            raise MissingInput(f"{notebook_hint(c, profile, s, teacher_seed)}: the runs of teacher seed {teacher_seed} "
                               f"are finished for some seeds only")
    return block if any(teacher_run_config(c, profile, seeds[0], teacher_seed).needs_teacher for c in block) else []


def resolve_teacher_seeds(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int],
                          teacher_seeds: Sequence[int] | None = None,
                          configs: Sequence[str] = STUDENT_CONFIGS) -> list[int]:
    """``teacher_seeds`` as ints, or (``None``) 0 and every other finished teacher seed with a block
    (:func:`teacher_block`: distilled runs finished for every seed; the runs of a second teacher, see
    :attr:`RunConfig.run_name`)."""
    if teacher_seeds is not None:
        return [int(t) for t in teacher_seeds]
    return [0] + [t for t in finished_seeds(runs_dir, profile, TEACHER)
                  if t != 0 and teacher_block(runs_dir, profile, seeds, t, configs, strict=False)]


def collect_runs(
    runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], configs: Sequence[str] = STUDENT_CONFIGS,
    teacher_seeds: Sequence[int] = (0,),
) -> pd.DataFrame:
    """One row per (teacher seed, config, seed) of each teacher's block (:func:`teacher_block`):
    test/val accuracy (%), losses, best epoch, size and time. A configuration without a teacher
    appears in every block with its one run (the reference of each block's differences)."""
    rows = []
    for teacher_seed in teacher_seeds:
        block = teacher_block(runs_dir, profile, seeds, teacher_seed, configs)
        if not block:
            raise MissingInput(f"{notebook_hint('kd', profile, seeds[0], teacher_seed)}: teacher seed {teacher_seed} "
                               "has no finished distilled runs")
        for config in block:
            for seed in seeds:
                d = require_run(runs_dir, profile, config, seed,
                                teacher_run_config(config, profile, seed, teacher_seed))
                m = read_json(d / METRICS_FILE)
                rows.append({
                    "config": config, "label": LABELS.get(config, config), "seed": seed, "teacher_seed": teacher_seed,
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

    ``run``: a :class:`kdnb.engine.train.RunResult` (or its run folder), or a metrics dict alone."""
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
