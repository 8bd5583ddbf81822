"""The closing "what this shows" of notebooks 02–07, written from the notebook's own run: every number
in the text is read from the run folder (or the table) just produced, so it cannot drift from it."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

from ..engine.runs import METRICS_FILE, is_finished, read_json, run_path
from .lookup import trained_how
from .series import LABELS

REFERENCES: tuple[str, ...] = ("baseline", "kd")  # a student is set against these of the same seed


def _mean(history: list[dict[str, Any]], key: str) -> float:
    values = [h.get(key) for h in history]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(values) / len(values) if values else math.nan


def _stopping(metrics: dict[str, Any], cfg: Any) -> str:
    best, ran = metrics["best_epoch"], metrics["epochs_run"]
    if metrics.get("stopped_early"):
        return (f"early stopping ended training after epoch {ran}, {ran - best} epochs without a lower validation "
                f"loss than epoch {best}'s (patience {cfg.patience})")
    if best == ran:
        return (f"training reached the {cfg.epochs}-epoch cap with the validation loss still at its lowest in the last "
                "epoch: more epochs might have helped")
    return f"training reached the {cfg.epochs}-epoch cap; the lowest validation loss was at epoch {best}"


def student_findings(result: Any, runs_dir: str | os.PathLike) -> str:
    """Markdown on one finished run (a :class:`kdnb.engine.train.RunResult`): which epoch was kept and
    why training stopped, test and validation accuracy, the gap to training accuracy, the masks' real
    kept share against the ``keep`` asked for, its own training cost, and the difference to the baseline
    and KD runs of the same seed when those are finished."""
    cfg, m, history = result.config, result.metrics, result.history
    label = LABELS.get(cfg.config, cfg.run_name)
    best = next(h for h in history if h["epoch"] == m["best_epoch"])
    parts = [f"**What this shows.** {label}, seed {cfg.seed}: the weights kept are those of epoch {m['best_epoch']} "
             f"of {m['epochs_run']} ({_stopping(m, cfg)}). Test top-1 {100 * m['test_acc']:.2f} %, validation "
             f"{100 * m['val_acc']:.2f} %; at that epoch training accuracy (on augmented images) was "
             f"{100 * best['train_acc']:.1f} %."]
    if cfg.uses_masks and cfg.mask_mode != "none":
        share, short = _mean(history, "mask_share"), _mean(history, "cam_short_share")
        text = (f"The masks kept {100 * share:.1f} % of the positions on average over the epochs, where `keep` asks "
                f"for {100 * cfg.keep:.0f} %")
        if cfg.cam_type == "binary" and math.isfinite(short):
            text += (f": in {100 * short:.1f} % of the images the teacher's Grad-CAM was positive on fewer positions, "
                     "and a binary mask keeps only positive ones")
        parts.append(text + ".")
    own = m.get("own_train_seconds")
    if own:
        steps = sum(h.get("timed_steps", h.get("steps")) or 0 for h in history)
        how = trained_how(result.run_dir)
        parts.append(f"Its own training work (forward, backward, update) took {1000 * own / max(steps, 1):.0f} ms per "
                     f"step; it was trained {how if how == 'alone' else 'in a ' + how}.")
    for ref in REFERENCES:
        if ref == cfg.config:
            continue
        ref_dir = run_path(runs_dir, cfg.profile, ref, cfg.seed)
        if is_finished(ref_dir):
            d = 100 * (m["test_acc"] - read_json(ref_dir / METRICS_FILE)["test_acc"])
            parts.append(f"Against {LABELS[ref]} of the same seed: {d:+.2f} pp test top-1.")
    if any(ref != cfg.config and is_finished(run_path(runs_dir, cfg.profile, ref, cfg.seed)) for ref in REFERENCES):
        parts.append("One seed cannot separate an effect from seed-to-seed noise: `08_results` compares every seed "
                     "with intervals and the smallest effect they could detect.")
    return " ".join(parts)


def attention_findings(distances: pd.DataFrame) -> str:
    """Markdown on 07's attention distances (mean over seeds): which students' attention is closest to
    the teacher's, and whether attention transfer (AT) brought it closer, on how many images."""
    mean = distances.groupby("config", sort=False)["attention_distance"].mean()
    first = distances.iloc[0]
    order = mean.sort_values()
    at = [c for c in mean.index if c in ("kd_at", "kd_fa_at")]
    rest = [c for c in mean.index if c not in at]
    n_seeds = distances["seed"].nunique()
    text = (f"**What this shows.** On {int(first['images']):,} test images ({first.get('images_per_class', 'all')}) at "
            f"`{first['stage']}`, mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}: the attention closest to the "
            f"teacher's is {LABELS.get(order.index[0], order.index[0])}'s ({order.iloc[0]:.3f}), the farthest "
            f"{LABELS.get(order.index[-1], order.index[-1])}'s ({order.iloc[-1]:.3f}; 0 = identical, 2 = disjoint).")
    if at and rest:
        a, r = mean[at].mean(), mean[rest].mean()
        text += (f" The students trained with attention transfer average {a:.3f}, the others {r:.3f}: AT "
                 + ("brings the student's attention closer to the teacher's" if a < r else
                    "does not bring the student's attention closer to the teacher's") + " at this stage.")
    return text
