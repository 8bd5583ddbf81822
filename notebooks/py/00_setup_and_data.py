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
# # 00 · Setup and data
#
# **What.** The data every run uses: where it comes from, a sample grid per class, and the
# train / validation / test split; plus the profiles and the five student configurations of the series.
#
# **Why.** kdnb reproduces *causal-mask knowledge distillation*: a ResNet-50+CBAM teacher is distilled into a
# ResNet-18 student on CIFAR-10 with one objective whose weights select the configuration
# (baseline, KD, KD+FA, KD+AT, KD+FA+AT):
#
# $$\mathcal{L} \;=\; w_{ce}\,\mathrm{CE}(z_s, y) \;+\; w_{kd}\,T^2\,\mathrm{KL}\!\big(\sigma(z_t/T)\,\big\|\,\sigma(z_s/T)\big)
# \;+\; w_{fa}\,\mathcal{L}_{FA}(M) \;+\; w_{at}\,\mathcal{L}_{AT}(M)$$
#
# where $z_s, z_t$ are student and teacher logits and $M$ is the teacher's Grad-CAM causal mask (notebooks
# 04–07). Unlike the paper, every run holds out a validation split from the training images: early stopping
# and checkpoint choice use it, and the test set is evaluated once per run, at the end.
#
# **Reads** the data source (`data_dir`, `$KDNB_DATA_DIR` or a download into `../data`; profile `smoke`
# generates a small synthetic set). **Writes** `00_samples.png` and `00_split.png` into the figures folder.
# Nothing later depends on this notebook: it is the place to check the data before training.

# %% tags=["parameters"]
profile: str = "cpu"                 # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU
data_dir: "Optional[str]" = None     # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"            # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None  # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference

# %%
import kdnb.report.notebook as nb
from kdnb.report import plots

ctx = nb.context(profile, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir)
print(ctx.describe())

# %% [markdown]
# ## Profiles
#
# A profile fixes the data, the widths and the epochs. `smoke` runs in seconds on synthetic data (CI),
# `cpu` trains on real CIFAR-10 on a laptop-class CPU, `paper` is the paper's protocol at full width on a GPU.

# %%
print(nb.profiles_table())

# %% [markdown]
# ## Configurations
#
# The five students differ only in the loss weights (the teacher trains with cross-entropy alone).
# KD uses $T=4$ with CE 0.1 / KD 0.9 (Hinton; RepDistiller) and AT $\beta=1000$ (Zagoruyko & Komodakis).
# FA follows FitNets (a conv–BN–ReLU connector, as in RepDistiller); its weight is chosen so that the FA
# term starts at the size of the KD term (the reasoning is beside `PRESETS` in `kdnb/engine/config.py`).
# Any weight can be changed per run (`overrides` in the notebooks, `--set w_fa=100` on the command line).

# %%
print(nb.presets_table())

# %% [markdown]
# ## Data
#
# The whole dataset is held as uint8 tensors; augmentation (random crop with 4-pixel padding, horizontal flip)
# runs on whole batches during training.

# %%
cfg = ctx.config("baseline")
data = ctx.load_data(cfg)
print(data.source)
print("classes:", ", ".join(data.classes))

# %% [markdown]
# The split below is shared by every run of the profile, teacher included (`val_size`, `train_size`,
# `split_seed` in the run settings), so no model ever trains on another model's validation images.

# %%
split = nb.split_table(data, cfg)
split

# %%
fig = plots.split_bars(split.drop(index="total"))
ctx.save(fig, "00_split")

# %%
fig = plots.sample_grid(data.train_x, data.train_y, data.classes)
ctx.save(fig, "00_samples")

# %% [markdown]
# Next: `01_train_teacher.ipynb` trains the teacher every distilled student learns from.
