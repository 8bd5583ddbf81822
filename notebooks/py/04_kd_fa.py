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
# # 04 · KD + FA: distillation with masked feature alignment
#
# **What.** Trains the ResNet-18 student in configuration `kd_fa`:
#
# $$\mathcal{L} = 0.1\,\mathrm{CE}(z_s, y) + 0.9\,T^2\,\mathrm{KL}\big(\sigma(z_t/T)\,\|\,\sigma(z_s/T)\big) + \mathcal{L}_{FA}(M)$$
#
#
# **Feature alignment** (FitNets-style hint, masked): a 1×1 conv–BN–ReLU connector $r$ maps the
# student's `layer3` features to the teacher's channels, and the per-position channel-mean squared
# error is averaged over the mask,
# $\mathcal{L}_{FA} = \frac{\sum_{ij} M_{ij}\,\frac{1}{C_t}\lVert r(F_s)_{ij} - F_{t,ij}\rVert^2}{\sum_{ij} M_{ij}}$.
# The connector is trained with the student and is not part of the deployed network.
#
#
# The **causal mask** $M$ comes from the frozen teacher's Grad-CAM for the true class $y$ at stage
# `layer3`: $\alpha_k = \frac{1}{HW}\sum_{ij} \partial z_{t,y} / \partial A^k_{ij}$,
# $\mathrm{cam} = \mathrm{ReLU}\big(\sum_k \alpha_k A^k\big)$, scaled to $[0,1]$ per image and resized to the
# student's feature size; the binary mask keeps the `keep` = 50 % highest *positive* positions (where the
# cam is zero on more than half of them, fewer: the share each epoch really kept is recorded in the history
# as `mask_share`, and quoted at the end):
# $M_{ij} = \mathbb{1}[\mathrm{cam}_{ij} > 0 \text{ and } \mathrm{cam}_{ij} \text{ is in the top } \texttt{keep}]$.
#
#
# **Why.** Adds feature alignment inside the teacher's causal mask: the student's `layer3` features are pulled towards the teacher's only where the teacher's Grad-CAM says the evidence for the true class lies.
#
# All five student notebooks share this layout and the same recipe; only the loss weights differ (see `00`).
# The best-by-validation-loss checkpoint is evaluated once on the test set.
#
# **Reads** the teacher run of `01_train_teacher` and the data. **Writes** `<runs_dir>/<profile>/kd_fa/seed<seed>/` (`config.json`, `history.json`,
# `checkpoint.pt`, `best.pt`, `metrics.json`) and `04_kd_fa_seed<seed>_curves.png`. Run it once per seed
# (`python -m kdnb pipeline --seeds 0 1 2` does that); a finished run is not retrained, an interrupted one resumes.

# %% tags=["parameters"]
profile: str = "cpu"                 # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU
seed: int = 0                        # the student's seed (initialisation, batch order, augmentation)
data_dir: "Optional[str]" = None     # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"            # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None  # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference
epochs: "Optional[int]" = None       # None: the profile's number of epochs
device: str = "auto"                 # auto (CUDA if available), cpu, cuda or mps
overrides: dict = {}                 # any other run setting, e.g. {"keep": 0.3, "stages": ["layer2", "layer3"]}

# %%
from kdnb.report.student import StudentNotebook

# stops here, naming the notebook to run first, if the teacher is missing
run = StudentNotebook("kd_fa", profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir,
                      epochs=epochs, device=device, overrides=overrides)
print(run.describe())

# %% [markdown]
# ## The objective on a fixed input
#
# Each active term on a fixed random batch (seed 0), unweighted and weighted. These numbers are pinned by
# the tests: a change to a loss function or a weight changes them.

# %%
# NBVAL_CHECK_OUTPUT
print(run.objective())

# %% [markdown]
# ## Run settings

# %%
run.settings()

# %% [markdown]
# ## Training
#
# `train` trains the configuration, resumes it if it was interrupted, or, when the run is already
# finished, loads it without training. `python -m kdnb pipeline` trains the five configurations of a
# seed together as a *cohort* before this notebook runs (one teacher pass per batch for all of them;
# each run exactly as it would be alone, tested bit for bit), so there this cell loads the finished
# run; the summary's last row says how it was trained.

# %%
run.train()

# %% [markdown]
# Per epoch: the training objective and its terms, accuracies (%), validation loss and the epoch's time.

# %%
run.history()

# %% [markdown]
# Learning curves: the training objective and its unweighted terms (left), training and validation
# accuracy (right); the dotted line marks the epoch whose weights were kept.

# %%
run.curves()

# %% [markdown]
# ## What this shows
#
# Built from this run's own folder (and, when they are finished, the baseline and KD runs of the same seed).

# %%
run.findings()

# %% [markdown]
# Next: `05_kd_at.ipynb`.
