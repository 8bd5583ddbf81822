"""The causal-mask ablation of notebook 09: does restricting FA/AT to Grad-CAM regions help?

The paper's second research question compares masked transfer with nothing; the controls it never
ran are *no mask* (FA/AT over the whole map) and *random masks of the same size*. One distillation
configuration (KD+FA+AT by default) is trained with ``mask_mode`` ∈ {none, random, gradcam} and,
where a mask exists, ``keep`` ∈ {0.25, 0.5}; everything else (seeds, split, teacher, recipe) is
the main series'. The Grad-CAM variant at the profile's own ``keep`` *is* the main series' run
(notebook 06), so it is read, not retrained.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .config import RunConfig, make_config
from .runs import METRICS_FILE, is_finished, read_json, run_path, write_text

ABLATION_CONFIG = "kd_fa_at"
KEEPS: tuple[float, ...] = (0.25, 0.5)
REFERENCE = "none"


@dataclass(frozen=True)
class Variant:
    """One mask setting of the ablation."""

    mask_mode: str
    keep: float | None = None  # None for mask_mode "none"

    @property
    def label(self) -> str:
        return self.mask_mode if self.keep is None else f"{self.mask_mode} {self.keep:g}"


def variants(keeps: Sequence[float] = KEEPS) -> list[Variant]:
    """``none``, then ``random`` and ``gradcam`` at every ``keep``."""
    out = [Variant("none")]
    for mode in ("random", "gradcam"):
        out += [Variant(mode, float(k)) for k in keeps]
    return out


def variant_config(variant: Variant, profile: str, seed: int, overrides: dict[str, Any] | None = None,
                   config: str = ABLATION_CONFIG) -> RunConfig:
    """The run settings of ``variant``; its folder is ``<config>-<mode>[-keep<k>]`` unless it is
    exactly the main series' run (Grad-CAM at the default ``keep``), which keeps the config's folder."""
    base = make_config(config, profile, seed, overrides)
    keep = base.keep if variant.keep is None else variant.keep
    main = variant.mask_mode == base.mask_mode and keep == base.keep
    name = None if main else f"{config}-{variant.mask_mode}" + ("" if variant.keep is None else f"-keep{keep:g}")
    return make_config(config, profile, seed, {**(overrides or {}), "mask_mode": variant.mask_mode,
                                               "keep": keep, "name": name})


def plan(profile: str, seeds: Sequence[int], runs_dir: str | os.PathLike, keeps: Sequence[float] = KEEPS,
         overrides: dict[str, Any] | None = None, config: str = ABLATION_CONFIG) -> pd.DataFrame:
    """One row per (variant, seed): its settings, run folder, and whether it is finished."""
    rows = []
    for v in variants(keeps):
        for s in seeds:
            cfg = variant_config(v, profile, int(s), overrides, config)
            d = run_path(runs_dir, profile, cfg.run_name, cfg.seed)
            rows.append({"variant": v.label, "mask_mode": v.mask_mode, "keep": v.keep, "seed": int(s),
                         "run": cfg.run_name, "finished": is_finished(d),
                         "trained by": "06 (main series)" if cfg.name is None else "09 (this ablation)"})
    return pd.DataFrame(rows)


def train_missing(plan_df: pd.DataFrame, profile: str, runs_dir: str | os.PathLike, data=None,
                  overrides: dict[str, Any] | None = None, config: str = ABLATION_CONFIG,
                  progress: bool = True) -> list[str]:
    """Train (or resume) every ablation run of ``plan_df`` that this ablation owns; the main
    series' runs are left to notebook 06. The missing variants of a seed train together as a
    cohort (one teacher pass per batch; each run as it would be alone). Returns the run folders
    trained in this call."""
    from .results import require_run
    from .train import train_cohort

    by_seed: dict[int, list[RunConfig]] = {}
    for r in plan_df.itertuples(index=False):
        cfg = variant_config(Variant(r.mask_mode, None if pd.isna(r.keep) else float(r.keep)), profile,
                             int(r.seed), overrides, config)
        if cfg.name is not None and not is_finished(run_path(runs_dir, profile, cfg.run_name, cfg.seed)):
            by_seed.setdefault(cfg.seed, []).append(cfg)
    done = []
    for seed, cfgs in sorted(by_seed.items()):
        require_run(runs_dir, profile, "teacher", cfgs[0].teacher_seed)
        train_cohort(cfgs, runs_dir, data=data, progress=progress)
        done += [f"{cfg.run_name}/seed{seed}" for cfg in cfgs]
    return done


def collect(plan_df: pd.DataFrame, profile: str, runs_dir: str | os.PathLike,
            overrides: dict[str, Any] | None = None, config: str = ABLATION_CONFIG) -> pd.DataFrame:
    """Test/validation accuracy (%) and best epoch of every run in ``plan_df`` (all must be finished,
    each trained with exactly its variant's settings: a main-series run trained with other mask
    settings is not reported as a variant)."""
    from .results import MissingInput, check_identity, notebook_hint

    rows = []
    for r in plan_df.itertuples(index=False):
        d = run_path(runs_dir, profile, r.run, r.seed)
        if not is_finished(d):
            where = (notebook_hint(config, profile, r.seed) if r.run == config
                     else "run notebooks/09_mask_ablation.ipynb (it trains its runs)")
            raise MissingInput(f"{where}: no finished run in {d}")
        check_identity(d, variant_config(Variant(r.mask_mode, None if pd.isna(r.keep) else float(r.keep)),
                                         profile, int(r.seed), overrides, config))
        m = read_json(d / METRICS_FILE)
        rows.append({"variant": r.variant, "mask_mode": r.mask_mode, "keep": r.keep, "seed": r.seed,
                     "test_acc": 100 * m["test_acc"], "val_acc": 100 * m["val_acc"], "best_epoch": m["best_epoch"],
                     "train_seconds": m["train_seconds"], "run_dir": str(d)})
    return pd.DataFrame(rows)


def table(runs: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Per variant: test top-1 mean ± std over seeds and the seed-paired Δ vs ``none`` (95% t-interval)."""
    from .stats import comparison_table

    t = comparison_table(runs, "test_acc", reference=REFERENCE, other=None, config_col="variant", digits=digits)
    best = runs.groupby("variant", sort=False)["best_epoch"].mean()
    out = pd.DataFrame({
        "mask": t["variant"], "seeds": t["n"], "test top-1 (%)": t["mean ± std"],
        "Δ vs none (pp)": [("0 (reference)" if s == "reference" else f"{d:+.{digits}f}")
                           for d, s in zip(t["Δ vs none"], t["Δ vs none sig"])],
        "95% CI vs none": t["Δ vs none CI"].replace("", "–"),
        "vs none": t["Δ vs none sig"].replace("reference", ""),
        "best epoch": [f"{best[v]:.1f}" for v in t["variant"]],
    })
    return out.set_index("mask")


def gradcam_vs_random(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed-paired Δ (gradcam − random) at each ``keep``: does *where* the mask falls matter?"""
    from .stats import paired_difference

    rows = []
    for keep in sorted(runs["keep"].dropna().unique()):
        g = runs[(runs["mask_mode"] == "gradcam") & (runs["keep"] == keep)].set_index("seed")["test_acc"]
        r = runs[(runs["mask_mode"] == "random") & (runs["keep"] == keep)].set_index("seed")["test_acc"]
        if len(g) and len(r):
            d = paired_difference(g, r)
            rows.append({"keep": keep, "Δ gradcam − random (pp)": d["mean"], "ci_low": d["ci_low"],
                         "ci_high": d["ci_high"], "verdict": d["label"], "seeds": d["n"]})
    return pd.DataFrame(rows)


def conclusion(runs: pd.DataFrame, config_label: str = "KD+FA+AT") -> str:
    """Sentences, built from ``runs``, on whether Grad-CAM masks beat no mask and random masks."""
    from .stats import paired_difference

    none = runs[runs["mask_mode"] == REFERENCE].set_index("seed")["test_acc"]
    n = runs["seed"].nunique()
    parts, wins, losses = [], [], []
    for keep in sorted(runs["keep"].dropna().unique()):
        g = runs[(runs["mask_mode"] == "gradcam") & (runs["keep"] == keep)].set_index("seed")["test_acc"]
        r = runs[(runs["mask_mode"] == "random") & (runs["keep"] == keep)].set_index("seed")["test_acc"]
        vs_none, vs_rand = paired_difference(g, none), paired_difference(g, r)

        def say(d: dict) -> str:
            ci = "" if pd.isna(d["ci_low"]) else f", 95% CI [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            return f"{d['mean']:+.2f} pp{ci}, {d['label']}"

        parts.append(f"at keep {keep:g}, Grad-CAM vs no mask {say(vs_none)}; Grad-CAM vs random masks of the "
                     f"same size {say(vs_rand)}")
        if vs_none["significant"] and vs_rand["significant"] and vs_none["mean"] > 0 and vs_rand["mean"] > 0:
            wins.append(f"{keep:g}")
        if (vs_none["significant"] and vs_none["mean"] < 0) or (vs_rand["significant"] and vs_rand["mean"] < 0):
            losses.append(f"{keep:g}")
    if n < 2:
        verdict = "With one seed there are no intervals, so no verdict can be drawn."
    elif wins:
        verdict = (f"Grad-CAM masks beat both controls significantly at keep {', '.join(wins)}: at this scale, "
                   "where the transfer is applied matters.")
    elif losses:
        verdict = (f"Grad-CAM masks did significantly worse than a control at keep {', '.join(losses)}, and beat "
                   "neither control significantly: at this scale the causal restriction does not help.")
    else:
        verdict = ("No Grad-CAM variant beats both controls significantly: at this scale the data do not show that "
                   "restricting transfer to the teacher's Grad-CAM regions helps.")
    return (f"{config_label}, {n} seed{'s' if n != 1 else ''}, seed-paired differences in test top-1: "
            + "; ".join(parts) + ". " + verdict)


def write_table(tab: pd.DataFrame, versus_random: pd.DataFrame, sentence: str, prov: dict[str, Any],
                figures_dir: str | os.PathLike) -> "os.PathLike":
    """Write ``ablation_table.md`` (table, gradcam-vs-random, conclusion, provenance) into ``figures_dir``."""
    from pathlib import Path

    from .results import markdown_table

    path = Path(figures_dir) / "ablation_table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    vr = versus_random.copy()
    if not vr.empty:
        vr["95% CI"] = [f"[{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) else "–" for lo, hi in zip(vr["ci_low"], vr["ci_high"])]
        vr["Δ gradcam − random (pp)"] = vr["Δ gradcam − random (pp)"].map(lambda d: f"{d:+.2f}")
        vr = vr.drop(columns=["ci_low", "ci_high"])
    prov_lines = "\n".join(f"- {k}: {v}" for k, v in prov.items())
    write_text(path,
        "# kdnb causal-mask ablation: test top-1 accuracy on CIFAR-10\n\n"
        "Written by `notebooks/09_mask_ablation.ipynb`. One configuration trained with no mask, random masks "
        "and Grad-CAM masks; mean ± std over seeds and the seed-paired Δ vs no mask with its 95% Student-t "
        "interval.\n\n" + markdown_table(tab) + "\n\n## Grad-CAM vs random masks of the same size\n\n"
        + (markdown_table(vr, index=False) if not vr.empty else "(no pairs)") + f"\n\n## Conclusion\n\n{sentence}\n\n"
        f"## Provenance\n\n{prov_lines}\n"
    )
    return path
