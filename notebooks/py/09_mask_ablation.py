# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Causal-mask ablation: Grad-CAM masks against no mask and size-matched random masks
#
# **What.** Trains KD+FA+AT (the paper's full method, notebook 06) with these masks $M$ in
# $\mathcal{L}_{FA}(M)$ and $\mathcal{L}_{AT}(M)$:
#
# - `none`: $M \equiv 1$, transfer over the whole feature map;
# - `gradcam`: the teacher's binary Grad-CAM causal mask (as in 04–06), the top `keep` fraction of the positions
#   where the cam is positive, at each `keep` ∈ {0.25, 0.5};
# - `random_matched`: the control. For every image and step, the Grad-CAM mask's positions shuffled at random: the
#   same number of kept positions $|M_i| = \min(|\{\mathrm{cam}_i > 0\}|,\ \lceil \texttt{keep}\cdot hw\rceil)$,
#   anywhere. Where the cam is positive on fewer positions than `keep` asks for, the Grad-CAM mask keeps fewer,
#   and so does its control;
# - `gradcam soft`: the cam itself as weights, $M = \mathrm{cam}$ (`keep` does not apply);
# - `random` (unmatched; `unmatched=False` leaves it out): exactly `keep` of the positions at random, whatever the
#   cam; larger than the Grad-CAM mask wherever the cam is sparse, so it is not the control the table compares
#   against, but it shows whether the control's size matters;
# - `gradcampp 0.5`, `layercam 0.5`: the binary causal mask at `keep` 0.5 built from another CAM method
#   (Grad-CAM++, LayerCAM; `kdnb.method.cams`) instead of Grad-CAM. Does the choice of CAM matter? `random_matched`
#   copies Grad-CAM's mask sizes, not theirs: where their cam never falls short of `keep` (the table's *cam short*),
#   they keep exactly `keep`, and the unmatched `random` mask at that keep is their size-matched control (the
#   table's *matched random* column names each row's control).
#
# Same seeds, split, teacher and recipe as the main series. The table gives test top-1 mean ± std, the seed-paired
# difference $\Delta = \frac{1}{n}\sum_s (a^{mask}_s - a^{ref}_s)$ with its 95% Student-t interval against `none`
# and against the size-matched control at the same `keep`, and the masks' statistics from the runs' histories: the
# mean kept share (over epochs and seeds; for the soft mask the mean weight) and the share of images whose cam is
# positive on fewer positions than `keep` asks for.
#
# **Why.** The paper's second question is whether restricting transfer to causally relevant regions helps. Its
# evidence compares masked transfer with nothing; the controls here separate "restricting transfer at all, to a
# mask of this size" (size-matched random masks) from "restricting it to where the teacher's evidence lies"
# (Grad-CAM).
#
# **Reads** the teacher (`01`) and the KD+FA+AT runs of `06` (they are the `gradcam 0.5` row). **Writes** the
# other ablation runs to `<runs_dir>/<profile>/kd_fa_at-<mask>[-soft][-keep<k>]/seed<seed>/`, `ablation_table.md`
# and `09_mask_ablation.png` into the figures folder. Finished runs are skipped, interrupted ones resume.

# %% tags=["parameters"]
profile: str = "cpu"                 # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU
seeds: "Optional[list]" = None       # None: every seed of the finished KD+FA+AT runs (06)
data_dir: "Optional[str]" = None     # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"            # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None  # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference
keeps: list = [0.25, 0.5]            # mask fractions for the Grad-CAM and random variants
unmatched: bool = True               # also train the unmatched random masks (exactly keep of the positions)
device: str = "auto"                 # auto (CUDA if available), cpu, cuda or mps

# %%
import kdnb.report.notebook as nb
from IPython.display import Markdown
from kdnb.report import ablation, lookup, plots, tables

ctx = nb.context(profile, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir, device=device)
ctx.require("teacher", 0)
seeds_used = lookup.resolve_seeds(ctx.runs_dir, profile, seeds, configs=[ablation.ABLATION_CONFIG])
print(ctx.describe())
print("seeds:", seeds_used)

# %% [markdown]
# ## The runs
#
# One row per (mask, seed). The `gradcam 0.5` runs are the main series' KD+FA+AT runs; every other run is
# trained here with exactly their settings except `mask_mode`, `keep`, `cam_type` and `cam`.

# %%
plan = ablation.plan(profile, seeds_used, ctx.runs_dir, keeps, overrides=ctx.overrides, unmatched=unmatched)
plan

# %% [markdown]
# ## Training (skips finished runs; the missing variants of a seed train together as one cohort)

# %%
data = ctx.load_data()
trained = ablation.train_missing(plan, profile, ctx.runs_dir, data=data, overrides=ctx.overrides)
print(f"trained {len(trained)} run(s) in this session:", ", ".join(trained) or "none")

# %% [markdown]
# ## Results

# %%
runs = ablation.collect(plan, profile, ctx.runs_dir, overrides=ctx.overrides)
table = ablation.table(runs)
table

# %% [markdown]
# Grad-CAM (and, when trained, the unmatched random masks) against the size-matched random control (seed-paired):

# %%
versus = ablation.versus_matched(runs)
versus

# %%
fig = plots.ablation_points(runs)
ctx.save(fig, "09_mask_ablation")

# %% [markdown]
# ## Conclusion
#
# Built from the table above.

# %%
sentence = ablation.conclusion(runs)
provenance = tables.provenance(ctx.runs_dir, profile, seeds_used, configs=list(dict.fromkeys(plan["run"])))
print(ablation.write_table(table, versus, sentence, provenance, ctx.figures_dir))
Markdown(sentence)
