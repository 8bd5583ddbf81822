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
# # 07 · Causal masks and attention maps
#
# **What.** For the first test image of each class: the image, the teacher's Grad-CAM for the true class,
# the binary causal mask at several `keep` values, and the attention maps of the teacher and of every trained
# student side by side. Then the mean distance between each student's attention map and the teacher's over
# the test set.
#
# Grad-CAM at stage $A$ (`layer3`): $\alpha_k = \frac{1}{HW}\sum_{ij}\partial z_{y}/\partial A^k_{ij}$,
# $\mathrm{cam} = \mathrm{ReLU}(\sum_k \alpha_k A^k)$, scaled to $[0,1]$; the binary mask keeps the top `keep`
# fraction of positions. Attention map: $a = \mathrm{vec}(\frac{1}{C}\sum_c |F_c|^2)/\lVert\cdot\rVert_2$;
# distance $d = \frac{1}{N}\sum_n \lVert a_s^{(n)} - a_t^{(n)}\rVert_2$ (0 = identical maps, at most 2).
#
# **Why.** FA and AT only act inside the mask, so it is worth seeing what the mask keeps; and AT should bring
# the students' attention closer to the teacher's than plain KD or the baseline do. An explorer lets you
# pick any test image, the class Grad-CAM explains, `keep`, the stage and the students (in JupyterLab).
#
# **Reads** the teacher (`01`) and the students of every seed (`02`–`06`). **Writes**
# `07_attention_seed<seed>.png`, `07_attention_distance.png` and `<runs_dir>/<profile>/evaluation/attention_distance.csv`
# (read by `08_results`).

# %% tags=["parameters"]
profile: str = "cpu"                 # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU
seed: int = 0                        # the student seed shown in the image grid
seeds: "Optional[list]" = None       # seeds for the distances; None: every seed finished for all five configurations
data_dir: "Optional[str]" = None     # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"            # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None  # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference
keeps: list = [0.25, 0.5, 0.75]      # mask fractions to show (training uses keep 0.5)
stage: str = "layer3"                # the stage the runs distilled at
eval_images: "Optional[int]" = None  # test images for the distances; None: the whole test set
device: str = "auto"                 # auto (CUDA if available), cpu, cuda or mps

# %%
import kdnb.report.notebook as nb
from IPython.display import Markdown
from kdnb.report import analyses, findings, lookup, plots, tables

ctx = nb.context(profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir)
ctx.require("teacher", 0)
seeds_used = lookup.resolve_seeds(ctx.runs_dir, profile, seeds)
print(ctx.describe())
print("seeds:", seeds_used)

# %% [markdown]
# ## The mask rule on a fixed map
#
# A 4×4 map with values rising towards the bottom-left: each `keep` retains exactly that fraction of positions,
# the highest ones (ties broken by position, so masks are deterministic).

# %%
# NBVAL_CHECK_OUTPUT
print(analyses.mask_example(keeps))

# %% [markdown]
# ## One test image per class
#
# Columns: the image; the teacher's Grad-CAM for the true class (overlay); the binary causal masks;
# the attention maps of the teacher and of each student at the same stage (✓/✗: that model's prediction).

# %%
data = ctx.load_data()
panel = analyses.attention_panel(ctx.runs_dir, profile, seed, data, stage=stage, keeps=keeps)
fig = plots.attention_grid(panel)
ctx.save(fig, f"07_attention_seed{seed}")

# %% [markdown]
# ## Explore one image
#
# The grid above fixes the image (the first of each class), the class Grad-CAM explains (the true one),
# the stage and the mask type. Here each is a control: the image (its class, and which of that class's
# test images), the class to explain (ask where the teacher would look for *dog* in a cat), `keep`, the
# stage (cam, mask and attention maps all at that stage), binary or soft mask, and which students to show.
# Under each model: its prediction and probability. The mask's title gives the share of positions it
# really keeps: a binary mask keeps only positions with a positive cam, so a sparse cam keeps fewer
# than `keep`. Run headless (papermill, the tests) this cell shows only the figure of the defaults.

# %%
from kdnb.report.explorer import MaskExplorer

explorer = MaskExplorer(ctx.runs_dir, profile, seed, data)
explorer.show(stage=stage)

# %% [markdown]
# ## Attention distance to the teacher (test set)

# %%
distances = analyses.attention_distances(ctx.runs_dir, profile, seeds_used, data, stage=stage, n_images=eval_images,
                                        device=device, cache_dir=ctx.results_dir)
ctx.save_csv(distances, "attention_distance", index=False)
tables.summarize_metric(distances, "attention_distance")

# %%
fig = plots.metric_bars(distances, "attention_distance", "‖a_s − a_t‖₂ (mean over test images)",
                        title=f"attention distance to the teacher at {stage}")
ctx.save(fig, "07_attention_distance")

# %% [markdown]
# ## What this shows

# %%
Markdown(findings.attention_findings(distances))

# %% [markdown]
# Next: `08_results.ipynb` collects every run into the results table.
