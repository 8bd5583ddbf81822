#!/usr/bin/env python
"""Write the notebook series ``notebooks/*.ipynb`` from the cell texts below.

The notebooks are the product (open them in JupyterLab, run them with papermill); this script
only keeps the nine of them consistent — the five student notebooks share one template. Edit a
notebook's text here, then regenerate:

    python tools/make_notebooks.py            # rewrite notebooks/, keeping stored check outputs
    python tools/make_notebooks.py --outputs  # also re-record the outputs of `# NBVAL_CHECK_OUTPUT`
                                              # cells by executing the series on the smoke profile
    python tools/make_notebooks.py --check    # exit 1 if notebooks/ differ from this script

Committed notebooks carry no outputs except those of the cells marked ``# NBVAL_CHECK_OUTPUT``:
nbval compares exactly those (profile-independent numbers: parameter counts, loss values on fixed
inputs, configuration tables), so a changed number fails CI. They print plain text rather than
return a DataFrame, so the comparison does not depend on pandas' HTML rendering. ``tests/test_notebooks.py`` checks
that the notebooks and this script agree.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from kdnb.config import PRESETS  # noqa: E402  (the loss weights quoted in the notebooks' text)
NB_DIR = ROOT / "notebooks"
CHECK = "# NBVAL_CHECK_OUTPUT"

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3", "file_extension": ".py",
                 "mimetype": "text/x-python", "codemirror_mode": {"name": "ipython", "version": 3},
                 "nbconvert_exporter": "python"}


def md(text: str) -> dict:
    return {"type": "markdown", "source": text.strip("\n")}


def code(text: str, tags: tuple[str, ...] = ()) -> dict:
    return {"type": "code", "source": text.strip("\n"), "tags": list(tags)}


def params(text: str) -> dict:
    """The ``parameters`` cell: literal assignments, their help comments aligned in one column
    (``papermill --help-notebook`` prints the comments as help)."""
    rows = [line.split("#", 1) if "  #" in line else [line, None] for line in text.strip("\n").splitlines()]
    width = max(len(a.rstrip()) for a, c in rows if c is not None) + 2
    lines = [a.rstrip() if c is None else f"{a.rstrip():<{width}}# {c.strip()}" for a, c in rows]
    return code("\n".join(lines), ("parameters",))


# ------------------------------------------------------------------------------------------------
COMMON_PATHS = '''
data_dir: "Optional[str]" = None  # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"     # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None  # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference
'''.strip("\n")

PROFILE_LINE = 'profile: str = "cpu"          # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU'

OBJECTIVE = r"""
$$\mathcal{L} \;=\; w_{ce}\,\mathrm{CE}(z_s, y) \;+\; w_{kd}\,T^2\,\mathrm{KL}\!\big(\sigma(z_t/T)\,\big\|\,\sigma(z_s/T)\big)
\;+\; w_{fa}\,\mathcal{L}_{FA}(M) \;+\; w_{at}\,\mathcal{L}_{AT}(M)$$
"""

MASK = r"""
The **causal mask** $M$ comes from the frozen teacher's Grad-CAM for the true class $y$ at stage
`layer3`: $\alpha_k = \frac{1}{HW}\sum_{ij} \partial z_{t,y} / \partial A^k_{ij}$,
$\mathrm{cam} = \mathrm{ReLU}\big(\sum_k \alpha_k A^k\big)$, scaled to $[0,1]$ per image and resized to the
student's feature size; the binary mask keeps the `keep` = 50 % highest positions:
$M_{ij} = \mathbb{1}[\mathrm{cam}_{ij} \text{ is in the top } \texttt{keep}]$.
"""

FA_TEXT = r"""
**Feature alignment** (FitNets-style hint, masked): a 1×1 conv–BN–ReLU connector $r$ maps the
student's `layer3` features to the teacher's channels, and the per-position channel-mean squared
error is averaged over the mask,
$\mathcal{L}_{FA} = \frac{\sum_{ij} M_{ij}\,\frac{1}{C_t}\lVert r(F_s)_{ij} - F_{t,ij}\rVert^2}{\sum_{ij} M_{ij}}$.
The connector is trained with the student and is not part of the deployed network.
"""

AT_TEXT = r"""
**Attention transfer** (Zagoruyko & Komodakis, masked): the attention map of a stage is
$a = \mathrm{vec}\big(\tfrac{1}{C}\sum_c |F_c|^2\big) / \lVert\cdot\rVert_2$ and
$\mathcal{L}_{AT} = \frac{\sum_{ij} M_{ij}\,(a_{s,ij} - a_{t,ij})^2}{\sum_{ij} M_{ij}}$.
"""

def _loss(config: str, suffix: str = "") -> str:
    """The configuration's objective in LaTeX with its weights from ``kdnb.config.PRESETS``."""
    w = PRESETS[config]
    terms = {"ce": r"\mathrm{CE}(z_s, y)",
             "kd": r"T^2\,\mathrm{KL}\big(\sigma(z_t/T)\,\|\,\sigma(z_s/T)\big)",
             "fa": r"\mathcal{L}_{FA}(M)", "at": r"\mathcal{L}_{AT}(M)"}
    parts = [("" if w[f"w_{t}"] == 1 else f"{w[f'w_{t}']:g}" + r"\,") + tex
             for t, tex in terms.items() if w[f"w_{t}"] > 0]
    return r"$$\mathcal{L} = " + " + ".join(parts) + suffix + "$$"


STUDENTS = {
    "baseline": {
        "nb": "02_baseline", "title": "Baseline: ResNet-18 with cross-entropy only",
        "why": "The reference every distillation gain is measured against. It uses exactly the "
               "students' architecture and recipe (SGD, lr 0.01, batch 64, early stopping on the "
               "validation loss) and no teacher — unlike the paper's released code, whose baseline kept "
               "a max-pool the distilled students did not have.",
        "loss": _loss("baseline") + " (every other weight 0).",
        "reads": "the data (no teacher)",
    },
    "kd": {
        "nb": "03_kd", "title": "KD: Hinton distillation from the ResNet-50+CBAM teacher",
        "why": "Plain logit distillation: the student matches the teacher's temperature-softened class "
               "distribution. This is the configuration that tells whether the masked feature terms of "
               "04–06 add anything beyond KD itself.",
        "loss": _loss("kd", r",\quad T=4"),
        "reads": "the teacher run of `01_train_teacher` and the data",
    },
    "kd_fa": {
        "nb": "04_kd_fa", "title": "KD + FA: distillation with masked feature alignment",
        "why": "Adds feature alignment inside the teacher's causal mask: the student's `layer3` features "
               "are pulled towards the teacher's only where the teacher's Grad-CAM says the evidence for "
               "the true class lies.",
        "loss": _loss("kd_fa") + "\n\n" + FA_TEXT + "\n" + MASK,
        "reads": "the teacher run of `01_train_teacher` and the data",
    },
    "kd_at": {
        "nb": "05_kd_at", "title": "KD + AT: distillation with masked attention transfer",
        "why": "Adds attention transfer inside the teacher's causal mask: the student's spatial attention "
               "map at `layer3` should match the teacher's where the teacher's Grad-CAM is high.",
        "loss": _loss("kd_at") + "\n\n" + AT_TEXT + "\n" + MASK,
        "reads": "the teacher run of `01_train_teacher` and the data",
    },
    "kd_fa_at": {
        "nb": "06_kd_fa_at", "title": "KD + FA + AT: the paper's full method",
        "why": "The combination the paper proposes: logit distillation plus masked feature alignment and "
               "masked attention transfer, both restricted to the teacher's causal mask.",
        "loss": _loss("kd_fa_at") + "\n\n" + FA_TEXT + "\n" + AT_TEXT + "\n" + MASK,
        "reads": "the teacher run of `01_train_teacher` and the data",
    },
}
NEXT = {"02_baseline": "03_kd", "03_kd": "04_kd_fa", "04_kd_fa": "05_kd_at", "05_kd_at": "06_kd_fa_at",
        "06_kd_fa_at": "07_masks_and_attention"}


def nb00() -> list[dict]:
    return [
        md(r"""
# 00 · Setup and data

**What.** The data every run uses: where it comes from, a sample grid per class, and the
train / validation / test split; plus the profiles and the five student configurations of the series.

**Why.** kdnb reproduces *causal-mask knowledge distillation*: a ResNet-50+CBAM teacher is distilled into a
ResNet-18 student on CIFAR-10 with one objective whose weights select the configuration
(baseline, KD, KD+FA, KD+AT, KD+FA+AT):
""" + OBJECTIVE + r"""
where $z_s, z_t$ are student and teacher logits and $M$ is the teacher's Grad-CAM causal mask (notebooks
04–07). Unlike the paper, every run holds out a validation split from the training images: early stopping
and checkpoint choice use it, and the test set is evaluated once per run, at the end.

**Reads** the data source (`data_dir`, `$KDNB_DATA_DIR` or a download into `../data`; profile `smoke`
generates a small synthetic set). **Writes** `00_samples.png` and `00_split.png` into the figures folder.
Nothing later depends on this notebook: it is the place to check the data before training.
"""),
        params(PROFILE_LINE + "\n" + COMMON_PATHS),
        code("""
import kdnb.notebook as nb
from kdnb import plots

ctx = nb.context(profile, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir)
print(ctx.describe())
"""),
        md("""
## Profiles

A profile fixes the data, the widths and the epochs. `smoke` runs in seconds on synthetic data (CI),
`cpu` trains on real CIFAR-10 on a laptop-class CPU, `paper` is the paper's protocol at full width on a GPU.
"""),
        code(CHECK + "\nprint(nb.profiles_table())"),
        md("""
## Configurations

The five students differ only in the loss weights (the teacher trains with cross-entropy alone).
KD uses $T=4$ with CE 0.1 / KD 0.9 (Hinton; RepDistiller) and AT $\\beta=1000$ (Zagoruyko & Komodakis).
FA follows FitNets (a conv–BN–ReLU connector, as in RepDistiller); its weight is chosen so that the FA
term starts at the size of the KD term (the reasoning is beside `PRESETS` in `kdnb/config.py`).
Any weight can be changed per run (`overrides` in the notebooks, `--set w_fa=100` on the command line).
"""),
        code(CHECK + "\nprint(nb.presets_table())"),
        md("""
## Data

The whole dataset is held as uint8 tensors; augmentation (random crop with 4-pixel padding, horizontal flip)
runs on whole batches during training.
"""),
        code("""
cfg = ctx.config("baseline")
data = ctx.load_data(cfg)
print(data.source)
print("classes:", ", ".join(data.classes))
"""),
        md("""
The split below is shared by every run of the profile, teacher included (`val_size`, `train_size`,
`split_seed` in the run settings), so no model ever trains on another model's validation images.
"""),
        code("""
split = nb.split_table(data, cfg)
split
"""),
        code("""
fig = plots.split_bars(split.drop(index="total"))
ctx.save(fig, "00_split")
"""),
        code("""
fig = plots.sample_grid(data.train_x, data.train_y, data.classes)
ctx.save(fig, "00_samples")
"""),
        md("Next: `01_train_teacher.ipynb` trains the teacher every distilled student learns from."),
    ]


def nb01() -> list[dict]:
    return [
        md(r"""
# 01 · Train the ResNet-50 + CBAM teacher

**What.** Trains the teacher: a CIFAR-stem ResNet-50 with a CBAM module on the residual branch of every
block, with cross-entropy $\mathcal{L} = \mathrm{CE}(z_t, y)$.

CBAM (Woo et al., 2018) refines a block's output $F$ with a channel gate and then a spatial gate:
$$M_c(F) = \sigma\big(\mathrm{MLP}(\mathrm{AvgPool}(F)) + \mathrm{MLP}(\mathrm{MaxPool}(F))\big),\qquad
M_s(F') = \sigma\big(\mathrm{BN}(f^{7\times 7}([\max_c F';\ \mathrm{mean}_c F']))\big)$$
$$F' = M_c(F)\otimes F,\qquad F'' = M_s(F')\otimes F'.$$

**Why.** Every distilled student (03–06) learns from this network's logits, features and Grad-CAM. The paper
does not give the teacher's recipe; kdnb trains it with Nesterov SGD and a one-cycle learning rate
(the students' plain lr 0.01 leaves a reduced-width ResNet-50 weaker than its student). As for every run,
the checkpoint with the lowest validation loss is kept and evaluated once on the test set.

**Reads** the data. **Writes** `<runs_dir>/<profile>/teacher/seed<seed>/` (`config.json`, `history.json`,
`checkpoint.pt` after every epoch, then `best.pt` and `metrics.json`) and `01_teacher_curves.png`.
A finished run is not retrained (delete its folder to start over); an interrupted one resumes.
"""),
        params(PROFILE_LINE + "\n" + 'seed: int = 0                 # the students use the seed-0 teacher (setting teacher_seed)\n'
               + COMMON_PATHS + '\nepochs: "Optional[int]" = None     # None: the profile\'s number of epochs\n'
               'device: str = "auto"          # auto (CUDA if available), cpu, cuda or mps\n'
               'overrides: dict = {}          # any other run setting, e.g. {"lr": 0.05, "batch_size": 128}'),
        code("""
import kdnb.notebook as nb
from kdnb import plots, results
from kdnb.train import train

ctx = nb.context(profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir,
                 epochs=epochs, device=device, overrides=overrides)
print(ctx.describe())
"""),
        md("""
## Architectures

Parameter counts at full width (width 1.0). The `smoke` and `cpu` profiles scale every channel count
by their `width` (below, in the run settings); `paper` uses full width.
"""),
        code(CHECK + "\nprint(nb.architecture_table())"),
        md("## Run settings"),
        code("""
cfg = ctx.config("teacher")
results.config_table(cfg)
"""),
        md("## Training"),
        code("""
data = ctx.load_data(cfg)
result = train(cfg, ctx.runs_dir, data=data, progress=True)
"""),
        code("results.run_summary(result)"),
        code("""
fig = plots.learning_curves(result.history, title="teacher: ResNet-50 + CBAM", best_epoch=result.metrics["best_epoch"])
ctx.save(fig, "01_teacher_curves")
"""),
        md("Next: `02_baseline.ipynb` … `06_kd_fa_at.ipynb` train the students (any order after this one)."),
    ]


def student_nb(config: str) -> list[dict]:
    s = STUDENTS[config]
    name = s["nb"]
    return [
        md(f"""
# {name[:2]} · {s['title']}

**What.** Trains the ResNet-18 student in configuration `{config}`:

{s['loss']}

**Why.** {s['why']}

All five student notebooks share this layout and the same recipe; only the loss weights differ (see `00`).
The best-by-validation-loss checkpoint is evaluated once on the test set.

**Reads** {s['reads']}. **Writes** `<runs_dir>/<profile>/{config}/seed<seed>/` (`config.json`, `history.json`,
`checkpoint.pt`, `best.pt`, `metrics.json`) and `{name}_seed<seed>_curves.png`. Run it once per seed
(`python -m kdnb pipeline --seeds 0 1 2` does that); a finished run is not retrained, an interrupted one resumes.
"""),
        params(PROFILE_LINE + "\n" + 'seed: int = 0                 # the student\'s seed (initialisation, batch order, augmentation)\n'
               + COMMON_PATHS + '\nepochs: "Optional[int]" = None     # None: the profile\'s number of epochs\n'
               'device: str = "auto"          # auto (CUDA if available), cpu, cuda or mps\n'
               'overrides: dict = {}          # any other run setting, e.g. {"keep": 0.3, "stages": ["layer2", "layer3"]}'),
        code(f"""
import kdnb.notebook as nb
from kdnb import plots, results
from kdnb.train import train

CONFIG = "{config}"
ctx = nb.context(profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir,
                 epochs=epochs, device=device, overrides=overrides)
cfg = ctx.config(CONFIG)
ctx.require_inputs(cfg)  # stops here, naming the notebook to run first, if the teacher is missing
print(ctx.describe())
"""),
        md("""
## The objective on a fixed input

Each active term on a fixed random batch (seed 0), unweighted and weighted. These numbers are pinned by
the tests: a change to a loss function or a weight changes them.
"""),
        code(CHECK + "\nprint(nb.objective_example(CONFIG))"),
        md("## Run settings"),
        code("results.config_table(cfg)"),
        md("""
## Training

`train` trains the configuration, resumes it if it was interrupted, or, when the run is already
finished, loads it without training. `python -m kdnb pipeline` trains the five configurations of a
seed together as a *cohort* before this notebook runs (one teacher pass per batch for all of them;
each run exactly as it would be alone, tested bit for bit), so there this cell loads the finished
run; the summary's last row says how it was trained.
"""),
        code("""
data = ctx.load_data(cfg)
result = train(cfg, ctx.runs_dir, data=data, progress=True)
"""),
        code("results.run_summary(result)"),
        md("Per epoch: the training objective and its terms, accuracies (%), validation loss and the epoch's time."),
        code("results.history_frame(result.history).round(4)"),
        md("""
Learning curves: the training objective and its unweighted terms (left), training and validation
accuracy (right); the dotted line marks the epoch whose weights were kept.
"""),
        code(f"""
fig = plots.learning_curves(result.history, title=f"{{CONFIG}}, seed {{seed}}", best_epoch=result.metrics["best_epoch"])
ctx.save(fig, f"{name}_seed{{seed}}_curves")
"""),
        md(f"Next: `{NEXT[name]}.ipynb`."),
    ]


def nb07() -> list[dict]:
    return [
        md(r"""
# 07 · Causal masks and attention maps

**What.** For the first test image of each class: the image, the teacher's Grad-CAM for the true class,
the binary causal mask at several `keep` values, and the attention maps of the teacher and of every trained
student side by side. Then the mean distance between each student's attention map and the teacher's over
the test set.

Grad-CAM at stage $A$ (`layer3`): $\alpha_k = \frac{1}{HW}\sum_{ij}\partial z_{y}/\partial A^k_{ij}$,
$\mathrm{cam} = \mathrm{ReLU}(\sum_k \alpha_k A^k)$, scaled to $[0,1]$; the binary mask keeps the top `keep`
fraction of positions. Attention map: $a = \mathrm{vec}(\frac{1}{C}\sum_c |F_c|^2)/\lVert\cdot\rVert_2$;
distance $d = \frac{1}{N}\sum_n \lVert a_s^{(n)} - a_t^{(n)}\rVert_2$ (0 = identical maps, at most 2).

**Why.** FA and AT only act inside the mask, so it is worth seeing what the mask keeps; and AT should bring
the students' attention closer to the teacher's than plain KD or the baseline do.

**Reads** the teacher (`01`) and the students of every seed (`02`–`06`). **Writes**
`07_attention_seed<seed>.png`, `07_attention_distance.png` and `<runs_dir>/<profile>/evaluation/attention_distance.csv`
(read by `08_results`).
"""),
        params(PROFILE_LINE + "\n" + 'seed: int = 0                 # the student seed shown in the image grid\n'
               'seeds: "Optional[list]" = None     # seeds for the distances; None: every seed finished for all five configurations\n'
               + COMMON_PATHS + '\nkeeps: list = [0.25, 0.5, 0.75]  # mask fractions to show (training uses keep 0.5)\n'
               'stage: str = "layer3"         # the stage the runs distilled at\n'
               'eval_images: "Optional[int]" = None  # test images for the distances; None: the whole test set\n'
               'device: str = "auto"          # auto (CUDA if available), cpu, cuda or mps'),
        code("""
import kdnb.notebook as nb
from kdnb import plots, results

ctx = nb.context(profile, seed=seed, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir)
ctx.require("teacher", 0)
seeds_used = results.resolve_seeds(ctx.runs_dir, profile, seeds)
print(ctx.describe())
print("seeds:", seeds_used)
"""),
        md("""
## The mask rule on a fixed map

A 4×4 map with values rising towards the bottom-left: each `keep` retains exactly that fraction of positions,
the highest ones (ties broken by position, so masks are deterministic).
"""),
        code(CHECK + "\nprint(results.mask_example(keeps))"),
        md("""
## One test image per class

Columns: the image; the teacher's Grad-CAM for the true class (overlay); the binary causal masks;
the attention maps of the teacher and of each student at the same stage (✓/✗: that model's prediction).
"""),
        code("""
data = ctx.load_data()
panel = results.attention_panel(ctx.runs_dir, profile, seed, data, stage=stage, keeps=keeps)
fig = plots.attention_grid(panel)
ctx.save(fig, f"07_attention_seed{seed}")
"""),
        md("## Attention distance to the teacher (test set)"),
        code("""
distances = results.attention_distances(ctx.runs_dir, profile, seeds_used, data, stage=stage, n_images=eval_images,
                                        device=device, cache_dir=ctx.results_dir)
ctx.save_csv(distances, "attention_distance", index=False)
results.summarize_metric(distances, "attention_distance")
"""),
        code("""
fig = plots.metric_bars(distances, "attention_distance", "‖a_s − a_t‖₂ (mean over test images)",
                        title=f"attention distance to the teacher at {stage}")
ctx.save(fig, "07_attention_distance")
"""),
        md("Next: `08_results.ipynb` collects every run into the results table."),
    ]


def nb08() -> list[dict]:
    return [
        md(r"""
# 08 · Results

**What.** Collects every finished student run and answers the paper's three questions with numbers:

- **accuracy**: test top-1 per configuration, mean ± std over seeds, the seed-paired difference
  $\Delta = \frac{1}{n}\sum_s (a_s - b_s)$ to the baseline and to plain KD with its 95% Student-t interval
  $\Delta \pm t_{0.975,\,n-1}\, s_\Delta/\sqrt{n}$ (an interval covering 0 is labelled *not significant*),
  and the mean best epoch, next to the paper's table;
- **efficiency**: deployed parameters, FLOPs per image, latency at batch 1 and 256, training time per epoch;
- **robustness**: accuracy under CIFAR-10-C-style corruptions at 5 severities, calibration
  (ECE $=\sum_b \frac{|B_b|}{N}\,|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|$, 15 bins), agreement with the teacher
  and the attention distance from `07`.

**Why.** The paper reports one run per configuration with the epoch chosen on the test set; its margins
(83.53 vs 83.64 vs 83.77) are smaller than typical seed-to-seed noise. Here the test set is used once per run
and differences come with intervals.

**Reads** the runs of `01`–`06` (all requested seeds) and `evaluation/attention_distance.csv` of `07`.
**Writes** `results_table.md` and `results.csv` (figures folder), `08_*.png`, and CSV tables under
`<runs_dir>/<profile>/evaluation/`.
"""),
        params(PROFILE_LINE + "\n" + 'seeds: "Optional[list]" = None     # None: every seed finished for all five configurations\n'
               + COMMON_PATHS + '\nrobustness_images: "Optional[int]" = None  # test images for the corruption study; None: the profile\'s default (smoke 100, cpu 1000, paper all)\n'
               'corruption_seed: int = 0      # seed of the random corruptions (noise, occlusion)\n'
               'cifar10c_dir: "Optional[str]" = None  # a local CIFAR-10-C folder (.npy files): use its corruptions instead\n'
               'latency_repeats: "Optional[int]" = None  # timed passes per latency; None: the profile\'s default\n'
               'device: str = "auto"          # evaluation and latency device: auto (CUDA if available), cpu, cuda or mps'),
        code("""
import kdnb.notebook as nb
from IPython.display import Markdown
from kdnb import plots, results

ctx = nb.context(profile, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir)
seeds_used = results.resolve_seeds(ctx.runs_dir, profile, seeds)
runs = results.collect_runs(ctx.runs_dir, profile, seeds_used)
distances = results.read_attention_distances(ctx.results_dir, seeds_used)
print(ctx.describe())
print("seeds:", seeds_used)
"""),
        md("""
## The paper's table

As reported (one run per configuration, the best test accuracy over epochs). Note that the released code
trained its baseline on a different architecture from the distilled students (see the README).
"""),
        code(CHECK + "\nprint(results.paper_table())"),
        md("## Accuracy (this reproduction)"),
        code("""
table = results.accuracy_table(runs)
table
"""),
        code("""
provenance = results.provenance(ctx.runs_dir, profile, seeds_used)
paths = results.write_results(table, results.accuracy_numbers(runs), provenance, ctx.figures_dir)
print("\\n".join(map(str, paths)))
provenance
"""),
        code("""
fig = plots.accuracy_bars(runs)
ctx.save(fig, "08_accuracy")
"""),
        md("## Learning curves (mean over seeds; band ±1 std)"),
        code("""
histories = results.collect_histories(ctx.runs_dir, profile, seeds_used)
fig = plots.learning_curves_by_config(histories)
ctx.save(fig, "08_learning_curves")
"""),
        md("""
## Efficiency

The students share one architecture, so their deployed cost is the same; distillation is paid for at
training time (a teacher forward per step, plus Grad-CAM's partial backward for FA/AT).
"""),
        code("""
efficiency = results.efficiency_table(ctx.runs_dir, profile, seeds_used, device=device,
                                      repeats=ctx.eval_default("latency_repeats", latency_repeats))
ctx.save_csv(efficiency, "efficiency")
efficiency
"""),
        md("""
## Robustness, calibration and agreement

Corruptions follow CIFAR-10-C (Hendrycks & Dietterich) with its own severity constants, generated on the
first `robustness_images` test images (or read from `cifar10c_dir`). The evaluation is stored in the
evaluation folder and reused while the runs, these settings and the code stay the same.
"""),
        code("""
data = ctx.load_data()
evaluation = results.evaluate_models(
    ctx.runs_dir, profile, seeds_used, data, corruption_seed=corruption_seed, cifar10c_dir=cifar10c_dir,
    robustness_images=ctx.eval_default("robustness_images", robustness_images), device=device,
    cache_dir=ctx.results_dir)
per_run = evaluation["per_run"]
students = per_run.query("config != 'teacher'")
ctx.save_csv(per_run, "per_run", index=False)
ctx.save_csv(evaluation["robustness"], "robustness", index=False)
results.robustness_table(evaluation["robustness"])
"""),
        code("""
fig = plots.robustness_heatmap(evaluation["robustness"])
ctx.save(fig, "08_robustness_heatmap")
"""),
        code("""
fig = plots.robustness_by_severity(evaluation["robustness"])
ctx.save(fig, "08_robustness_severity")
"""),
        md("Per corruption and severity (%, mean over seeds; `robustness_pivot.csv`):"),
        code("""
pivot = results.robustness_pivot(evaluation["robustness"])
ctx.save_csv(pivot, "robustness_pivot")
pivot
"""),
        md("Mean accuracy over all corruptions and severities (%), with seed-paired differences:"),
        code('results.summarize_metric(students, "mean_corruption_acc", digits=2)'),
        md("Expected calibration error (lower is better), with seed-paired differences:"),
        code('results.summarize_metric(students, "ece")'),
        code("""
fig = plots.reliability_diagrams(evaluation["reliability"])
ctx.save(fig, "08_reliability")
"""),
        md("Top-1 agreement with the teacher (%) and the attention distance to it (from `07`):"),
        code('results.summarize_metric(students, "agreement", digits=2)'),
        code('results.summarize_metric(distances, "attention_distance")'),
        md("## Answers to the paper's questions\n\nThe text below is built from the tables above."),
        code("Markdown(results.research_answers(runs, students, efficiency, distances))"),
        md("Next: `09_mask_ablation.ipynb` tests the causal masks against no mask and random masks."),
    ]


def nb09() -> list[dict]:
    return [
        md(r"""
# 09 · Causal-mask ablation: Grad-CAM masks against no mask and random masks

**What.** Trains KD+FA+AT (the paper's full method, notebook 06) with three kinds of mask $M$ in
$\mathcal{L}_{FA}(M)$ and $\mathcal{L}_{AT}(M)$:

- `none`: $M \equiv 1$, transfer over the whole feature map;
- `random`: for every image and step a fresh binary mask keeping a random `keep` fraction of positions;
- `gradcam`: the teacher's Grad-CAM causal mask keeping the top `keep` fraction (as in 04–06),

with `keep` ∈ {0.25, 0.5}, over the same seeds, split, teacher and recipe as the main series. The table
gives test top-1 mean ± std and the seed-paired difference to `none`,
$\Delta = \frac{1}{n}\sum_s (a^{mask}_s - a^{none}_s)$ with its 95% Student-t interval, plus Grad-CAM − random
at equal `keep`.

**Why.** The paper's second question is whether restricting transfer to causally relevant regions helps. Its
evidence compares masked transfer with nothing; the two controls here separate "restricting transfer at all"
(random masks) from "restricting it to where the teacher's evidence lies" (Grad-CAM).

**Reads** the teacher (`01`) and the KD+FA+AT runs of `06` (they are the `gradcam 0.5` row). **Writes** the
other ablation runs to `<runs_dir>/<profile>/kd_fa_at-<mask>[-keep<k>]/seed<seed>/`, `ablation_table.md` and
`09_mask_ablation.png` into the figures folder. Finished runs are skipped, interrupted ones resume.
"""),
        params(PROFILE_LINE + "\n" + 'seeds: "Optional[list]" = None     # None: every seed of the finished KD+FA+AT runs (06)\n'
               + COMMON_PATHS + '\nkeeps: list = [0.25, 0.5]     # mask fractions for the random and Grad-CAM variants\n'
               'device: str = "auto"          # auto (CUDA if available), cpu, cuda or mps'),
        code("""
import kdnb.notebook as nb
from IPython.display import Markdown
from kdnb import ablation, plots, results

ctx = nb.context(profile, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir, device=device)
ctx.require("teacher", 0)
seeds_used = results.resolve_seeds(ctx.runs_dir, profile, seeds, configs=[ablation.ABLATION_CONFIG])
print(ctx.describe())
print("seeds:", seeds_used)
"""),
        md("""
## The runs

One row per (mask, seed). The `gradcam 0.5` runs are the main series' KD+FA+AT runs; every other run is
trained here with exactly their settings except `mask_mode` and `keep`.
"""),
        code("""
plan = ablation.plan(profile, seeds_used, ctx.runs_dir, keeps, overrides=ctx.overrides)
plan
"""),
        md("## Training (skips finished runs; the missing variants of a seed train together as one cohort)"),
        code("""
data = ctx.load_data()
trained = ablation.train_missing(plan, profile, ctx.runs_dir, data=data, overrides=ctx.overrides)
print(f"trained {len(trained)} run(s) in this session:", ", ".join(trained) or "none")
"""),
        md("## Results"),
        code("""
runs = ablation.collect(plan, profile, ctx.runs_dir)
table = ablation.table(runs)
table
"""),
        md("Grad-CAM against random masks of the same size (seed-paired):"),
        code("""
versus_random = ablation.gradcam_vs_random(runs)
versus_random
"""),
        code("""
fig = plots.ablation_points(runs)
ctx.save(fig, "09_mask_ablation")
"""),
        md("## Conclusion\n\nBuilt from the table above."),
        code("""
sentence = ablation.conclusion(runs)
provenance = results.provenance(ctx.runs_dir, profile, seeds_used, configs=list(dict.fromkeys(plan["run"])))
print(ablation.write_table(table, versus_random, sentence, provenance, ctx.figures_dir))
Markdown(sentence)
"""),
    ]


def notebooks() -> dict[str, list[dict]]:
    out = {"00_setup_and_data": nb00(), "01_train_teacher": nb01()}
    for config, spec in STUDENTS.items():
        out[spec["nb"]] = student_nb(config)
    out["07_masks_and_attention"] = nb07()
    out["08_results"] = nb08()
    out["09_mask_ablation"] = nb09()
    return out


# ------------------------------------------------------------------------------------------------
INJECTED = "injected-parameters"  # papermill's tag for the cell holding a run's parameter values


def _kept_cells(old: nbformat.NotebookNode | None) -> dict:
    """Outputs of ``old`` by cell source (kept while the source is unchanged). A papermill
    ``injected-parameters`` cell is dropped: in a committed notebook it would undo a JupyterLab
    user's edits of the parameters cell and point at the reference run's paths."""
    kept = {}
    for c in (old.cells if old is not None else []):
        if c.cell_type == "code" and c.get("outputs") and INJECTED not in c.metadata.get("tags", []):
            kept[c.source] = (c.get("outputs", []), c.get("execution_count"))
    return kept


def build(name: str, cells: list[dict], old: nbformat.NotebookNode | None) -> nbformat.NotebookNode:
    """A notebook with deterministic cell ids. Outputs are kept from ``old`` for every cell whose
    source is unchanged (check cells, and a reference run's outputs stored by ``--from-run``)."""
    kept = _kept_cells(old)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}
    if old is not None and "kdnb" in old.metadata and kept:
        nb.metadata["kdnb"] = copy.deepcopy(old.metadata["kdnb"])
    for i, spec in enumerate(cells):
        cid = f"{name[:2]}-{i:02d}"
        if spec["type"] == "markdown":
            cell = nbformat.v4.new_markdown_cell(spec["source"], id=cid)
        else:
            cell = nbformat.v4.new_code_cell(spec["source"], id=cid)
            if spec["tags"]:
                cell.metadata["tags"] = list(spec["tags"])
            # nbval only compares cells that were run: checked cells keep their execution count
            outputs, count = kept.get(spec["source"], ([], None))
            cell.outputs = copy.deepcopy(outputs)
            cell.execution_count = count if cell.outputs else None
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def signature(nb: nbformat.NotebookNode) -> list:
    """What the generator owns: cell ids, types, sources and tags, and the check cells' outputs
    (a reference run's other outputs and its injected parameters cell are data, not source)."""
    out = []
    for c in nb.cells:
        if INJECTED in c.metadata.get("tags", []):
            continue
        checked = c.cell_type == "code" and c.source.startswith(CHECK)
        out.append((c.get("id"), c.cell_type, c.source, c.metadata.get("tags", []),
                    [dict(o) for o in c.get("outputs", [])] if checked else None))
    return out


def _relative(text: str, root: str) -> str:
    """No machine's paths in committed outputs: the data folder shows as ``$KDNB_DATA_DIR``, paths
    in this checkout relative to it, anything else beside it as ``<local>/``."""
    data = os.environ.get("KDNB_DATA_DIR")
    if data:
        text = text.replace(str(Path(data).resolve()), "$KDNB_DATA_DIR")
    return text.replace(root + "/", "").replace(str(Path(root).parent) + "/", "<local>/")


def _clean_outputs(outputs: list, root: str) -> list:
    """A reference run's outputs as committed: no progress widgets or stderr (compile warnings,
    progress bars), and paths relative to the repository."""
    kept = []
    for o in outputs:
        if o.get("output_type") == "stream" and o.get("name") == "stderr":
            continue
        data = o.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            continue
        o = copy.deepcopy(o)
        if o.get("output_type") == "stream":
            o["text"] = _relative(o["text"], root)
        for mime in ("text/plain", "text/html", "text/markdown"):
            if mime in data:
                text = "".join(data[mime]) if isinstance(data[mime], list) else data[mime]
                o["data"][mime] = _relative(text, root)
        kept.append(o)
    return kept


def from_run(nbs: dict[str, nbformat.NotebookNode], run_dir: Path, description: dict) -> None:
    """Store the outputs of the executed notebooks in ``run_dir`` (a pipeline's ``notebooks/``
    folder; student notebooks from their lowest seed) in the generated notebooks, cell by cell id.
    Check cells keep their recorded outputs: those are compared by nbval in CI."""
    root = str(ROOT)
    for name, nb in nbs.items():
        path = run_dir / f"{name}.ipynb"
        if not path.is_file():
            seeds = sorted(run_dir.glob(f"{name}_seed*.ipynb"), key=lambda p: int(p.stem.rsplit("seed", 1)[1]))
            if not seeds:
                print(f"{run_dir}: no executed copy of {name}; its notebook keeps only the checked outputs")
                continue
            path = seeds[0]
        ran = nbformat.read(path, as_version=4)
        by_id = {c.get("id"): c for c in ran.cells}
        injected = next((c for c in ran.cells if INJECTED in c.metadata.get("tags", [])), None)
        for cell in nb.cells:
            src = by_id.get(cell.id)
            if cell.cell_type != "code" or cell.source.startswith(CHECK) or src is None or src.source != cell.source:
                continue
            cell.outputs = _clean_outputs(src.get("outputs", []), root)
            cell.execution_count = src.get("execution_count") if cell.outputs else None
        # the values the outputs came from go into the metadata, not into a cell that would run
        parameters = _relative(injected.source, root).replace(root, ".") if injected is not None else None
        nb.metadata["kdnb"] = {"outputs_from": {**description, "executed_copy": path.name, "parameters": parameters}}
        nbformat.validate(nb)


def record_outputs(nbs: dict[str, nbformat.NotebookNode]) -> None:
    """Execute the series on the smoke profile and store the outputs of the check cells."""
    sys.path.insert(0, str(ROOT))
    from kdnb.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="kdnb-notebooks-") as tmp:
        for name, nb in nbs.items():
            nbformat.write(nb, NB_DIR / f"{name}.ipynb")
        run_pipeline(profile="smoke", seeds=[0], runs_dir=tmp, verbose=False)
        executed = Path(tmp) / "smoke" / "notebooks"
        for name, nb in nbs.items():
            path = executed / f"{name}.ipynb"
            if not path.is_file():
                path = executed / f"{name}_seed0.ipynb"
            ran = {c.get("id"): c for c in nbformat.read(path, as_version=4).cells}
            for cell in nb.cells:
                if cell.cell_type == "code" and cell.source.startswith(CHECK):
                    cell.outputs = copy.deepcopy(ran[cell.id].get("outputs", []))
                    cell.execution_count = ran[cell.id].get("execution_count")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outputs", action="store_true", help="re-record check-cell outputs (runs the smoke series)")
    ap.add_argument("--check", action="store_true", help="exit 1 if notebooks/ differ from this script")
    ap.add_argument("--from-run", metavar="DIR", help="store the outputs of the executed notebooks in DIR "
                    "(e.g. runs/cpu/notebooks) in the committed notebooks; check cells keep theirs")
    ap.add_argument("--describe", metavar="TEXT", default="", help="with --from-run: what run it was")
    args = ap.parse_args(argv)
    specs = notebooks()
    built = {}
    for name, cells in specs.items():
        path = NB_DIR / f"{name}.ipynb"
        old = nbformat.read(path, as_version=4) if path.is_file() else None
        built[name] = build(name, cells, old)
    if args.check:
        stale = [name for name, nb in built.items()
                 if not (NB_DIR / f"{name}.ipynb").is_file()
                 or signature(nb) != signature(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4))]
        for name in stale:
            print(f"notebooks/{name}.ipynb differs from tools/make_notebooks.py")
        return 1 if stale else 0
    if args.outputs:
        record_outputs(built)
    if args.from_run:
        from_run(built, Path(args.from_run).resolve(), {"run": args.describe})
    NB_DIR.mkdir(exist_ok=True)
    for name, nb in built.items():
        nbformat.write(nb, NB_DIR / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
