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
# # 01 · Train the ResNet-50 + CBAM teacher
#
# **What.** Trains the teacher: a CIFAR-stem ResNet-50 with a CBAM module on the residual branch of every
# block, with cross-entropy $\mathcal{L} = \mathrm{CE}(z_t, y)$.
#
# CBAM (Woo et al., 2018) refines a block's output $F$ with a channel gate and then a spatial gate:
# $$M_c(F) = \sigma\big(\mathrm{MLP}(\mathrm{AvgPool}(F)) + \mathrm{MLP}(\mathrm{MaxPool}(F))\big),\qquad
# M_s(F') = \sigma\big(\mathrm{BN}(f^{7\times 7}([\max_c F';\ \mathrm{mean}_c F']))\big)$$
# $$F' = M_c(F)\otimes F,\qquad F'' = M_s(F')\otimes F'.$$
#
# **Why.** Every distilled student (03–06) learns from this network's logits, features and Grad-CAM. The paper
# does not give the teacher's recipe; kdnb trains it with Nesterov SGD and a one-cycle learning rate
# (the students' plain lr 0.01 leaves a reduced-width ResNet-50 weaker than its student). As for every run,
# the checkpoint with the lowest validation loss is kept and evaluated once on the test set.
#
# **Reads** the data. **Writes** `<runs_dir>/<profile>/teacher/seed<seed>/` (`config.json`, `history.json`,
# `checkpoint.pt` after every epoch, then `best.pt` and `metrics.json`) and `01_teacher_curves.png`.
# A finished run is not retrained (delete its folder to start over); an interrupted one resumes.

# %% tags=["parameters"]
profile: str = "cpu"                 # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU
seed: int = 0                        # the students use the seed-0 teacher (setting teacher_seed)
data_dir: "Optional[str]" = None     # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"            # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None  # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference
epochs: "Optional[int]" = None       # None: the profile's number of epochs
device: str = "auto"                 # auto (CUDA if available), cpu, cuda or mps
overrides: dict = {}                 # any other run setting, e.g. {"lr": 0.05, "batch_size": 128}

# %%
import kdnb.report.notebook as nb
from kdnb.report import lookup, plots
from kdnb.engine.train import train

ctx = nb.context(profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir,
                 epochs=epochs, device=device, overrides=overrides)
print(ctx.describe())

# %% [markdown]
# ## Architectures
#
# Parameter counts at full width (width 1.0). The `smoke` and `cpu` profiles scale every channel count
# by their `width` (below, in the run settings); `paper` uses full width.

# %%
# NBVAL_CHECK_OUTPUT
print(nb.architecture_table())

# %% [markdown]
# ## Run settings

# %%
cfg = ctx.config("teacher")
lookup.config_table(cfg)

# %% [markdown]
# ## Training

# %%
data = ctx.load_data(cfg)
result = train(cfg, ctx.runs_dir, data=data, progress=True)

# %%
lookup.run_summary(result)

# %%
fig = plots.learning_curves(result.history, title="teacher: ResNet-50 + CBAM", best_epoch=result.metrics["best_epoch"])
ctx.save(fig, "01_teacher_curves")

# %% [markdown]
# Next: `02_baseline.ipynb` … `06_kd_fa_at.ipynb` train the students (any order after this one).
