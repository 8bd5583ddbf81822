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
# # 08 · Results
#
# **What.** Collects every finished student run and answers the paper's three research questions, under its
# numbering, with numbers:
#
# - **RQ1**, does the combination (KD+FA+AT) improve accuracy, generalisation and robustness over each technique
#   alone: test top-1 per configuration, mean ± std over seeds, the seed-paired difference
#   $\Delta = \frac{1}{n}\sum_s (a_s - b_s)$ with its 95% Student-t interval
#   $\Delta \pm t_{0.975,\,n-1}\, s_\Delta/\sqrt{n}$ (an interval covering 0 is labelled *not significant*) and the
#   minimum detectable effect (MDE: the true $\Delta$ a paired t-test over these seeds detects with 80 % power at
#   $\alpha = 0.05$, from the noncentral t with noncentrality $\Delta\sqrt{n}/s_\Delta$; "not significant" rules out
#   only effects of about that size or more), next to the paper's table; test cross-entropy; accuracy under CIFAR-10-C-style corruptions at 5 severities,
#   calibration (ECE $=\sum_b \frac{|B_b|}{N}\,|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|$, 15 bins), agreement with
#   the teacher and the attention distance from `07`;
# - **RQ2**, does transferring only the causally relevant regions help: answered from the mask ablation's runs
#   (`09`: Grad-CAM masks against no mask and size-matched random masks) when they exist, else it says to run `09`;
# - **RQ3**, accuracy against inference efficiency: deployed parameters, FLOPs per image, latency at batch 1 and
#   a large batch (256; smoke 32) (median and IQR of 5 rounds), each configuration's own training cost per step and the shared batch and teacher pass.
#
# With students of more than one teacher seed (a second teacher's runs live in `<config>-t<k>/`), the accuracy
# table is given per teacher seed; everything else uses teacher seed 0, the main series. A second teacher may
# repeat only part of the series (e.g. KD and KD+FA+AT); the baseline has no teacher, so its runs serve every block.
#
# **Why.** The paper reports one run per configuration with the epoch chosen on the test set; its margins
# (83.53 vs 83.64 vs 83.77) are smaller than typical seed-to-seed noise. Here the test set is used once per run
# and differences come with intervals.
#
# **Reads** the runs of `01`–`06` (all requested seeds and teacher seeds), `evaluation/attention_distance.csv` of
# `07` and, when they exist, the ablation runs of `09`.
# **Writes** `results_table.md` and `results.csv` (figures folder), `08_*.png`, and CSV tables under
# `<runs_dir>/<profile>/evaluation/`.

# %% tags=["parameters"]
profile: str = "cpu"                       # smoke: seconds, synthetic data (CI) · cpu: CIFAR-10 on 2 CPU cores, ~1 h · paper: GPU
seeds: "Optional[list]" = None             # None: every seed finished for all five configurations
teacher_seeds: "Optional[list]" = None     # None: 0 and every other teacher seed with distilled runs finished for every seed
data_dir: "Optional[str]" = None           # None: the profile's own source (smoke: synthetic), else $KDNB_DATA_DIR, else ../data
runs_dir: str = "../runs"                  # runs are written to <runs_dir>/<profile>/<config>/seed<k>/
figures_dir: "Optional[str]" = None        # None: <runs_dir>/<profile>/figures; "../figures" refreshes the committed reference
robustness_images: "Optional[int]" = None  # test images for the corruption study, the same number per class; None: the profile's default (smoke 50, cpu 2000, paper all)
corruption_seed: int = 0                   # seed of the random corruptions (noise, occlusion)
cifar10c_dir: "Optional[str]" = None       # a local CIFAR-10-C folder (.npy files): use its corruptions instead
latency_repeats: "Optional[int]" = None    # timed passes per latency round (5 rounds); None: the profile's default
latency_batch: "Optional[int]" = None      # the large batch of the latency study (beside batch 1); None: the profile's default (smoke 32, cpu and paper 256)
bench_json: "Optional[str]" = None         # a `python -m kdnb bench --json` report to quote beside the runs' own costs; None: none
device: str = "auto"                       # evaluation and latency device: auto (CUDA if available), cpu, cuda or mps

# %%
import kdnb.report.notebook as nb
from IPython.display import Markdown
from kdnb.report import ablation, analyses, answers, lookup, plots, tables

ctx = nb.context(profile, data_dir=data_dir, runs_dir=runs_dir, figures_dir=figures_dir)
seeds_used = lookup.resolve_seeds(ctx.runs_dir, profile, seeds)
teacher_seeds_used = lookup.resolve_teacher_seeds(ctx.runs_dir, profile, seeds_used, teacher_seeds)
runs = lookup.collect_runs(ctx.runs_dir, profile, seeds_used)  # teacher seed 0: the main series
runs_by_teacher = lookup.collect_runs(ctx.runs_dir, profile, seeds_used, teacher_seeds=teacher_seeds_used)
distances = lookup.read_attention_distances(ctx.results_dir, seeds_used)
print(ctx.describe())
print("seeds:", seeds_used, " teacher seeds:", teacher_seeds_used)

# %% [markdown]
# ## The paper's table
#
# As reported (one run per configuration, the best test accuracy over epochs). Note that the released code
# trained its baseline on a different architecture from the distilled students (see docs/released-notebook.md).

# %%
print(tables.paper_table())

# %% [markdown]
# ## Accuracy (this reproduction)
#
# With more than one teacher seed, one block per teacher seed: does a conclusion depend on the teacher?

# %%
table = tables.accuracy_table(runs_by_teacher)
table

# %%
data = ctx.load_data()
n_robust = ctx.eval_default("robustness_images", robustness_images)
provenance = tables.provenance(ctx.runs_dir, profile, seeds_used, teacher_seeds=teacher_seeds_used,
                               subsets={"robustness (08)": analyses.subset_summary(data, n_robust)})
paths = tables.write_results(table, tables.accuracy_numbers(runs_by_teacher), provenance, ctx.figures_dir)
print("\n".join(map(str, paths)))
provenance

# %%
fig = plots.accuracy_bars(runs)
ctx.save(fig, "08_accuracy")

# %% [markdown]
# ## Learning curves (mean over seeds; band ±1 std)

# %%
histories = lookup.collect_histories(ctx.runs_dir, profile, seeds_used)
fig = plots.learning_curves_by_config(histories)
ctx.save(fig, "08_learning_curves")

# %% [markdown]
# ## Efficiency
#
# The students share one architecture, so their deployed cost is the same; distillation is paid for at
# training time. Latency is the median of 5 rounds (the models take turns round by round) with the rounds'
# interquartile range (milliseconds per image at every batch size): a difference inside it is no measurable
# difference; the students being one network, the spread of their medians shows what the measurement resolves.
# Training cost is each configuration's *own* work per step (its forward, backward and update: FA, AT and the
# masks are in here), measured inside the cohort, with its ratio to the baseline's in the same epoch of the same
# cohort (the machine's load moves both and cancels), and the *shared* part of the step (the batch with its
# augmentation, the teacher forward and its Grad-CAM) the cohort pays once per step for all its members, the
# baseline included; the epoch's wall time is the cohort's, the same for every member, and says nothing per
# configuration. With `bench_json` (the pipeline's `--bench-json`), the benchmark's ms/step of each configuration
# trained alone (teacher pass included) sits beside it.

# %%
efficiency = analyses.efficiency_table(ctx.runs_dir, profile, seeds_used, device=device, bench=ctx.read_bench(bench_json),
                                      repeats=ctx.eval_default("latency_repeats", latency_repeats),
                                      batch_sizes=(1, ctx.eval_default("latency_batch", latency_batch)))
ctx.save_csv(efficiency, "efficiency")
tables.efficiency_view(efficiency)

# %% [markdown]
# ## Robustness, calibration and agreement
#
# Corruptions follow CIFAR-10-C (Hendrycks & Dietterich) with its own severity constants, generated on a
# class-balanced, seeded subset of `robustness_images` test images, the same images for every model (or read from
# `cifar10c_dir`). The evaluation is stored in the evaluation folder and reused while the runs, these settings and
# the code stay the same. `robustness.csv`, `robustness_subset.csv` (images per class) and `efficiency.csv` go to
# the figures folder beside `results.csv`.

# %%
evaluation = analyses.evaluate_models(
    ctx.runs_dir, profile, seeds_used, data, corruption_seed=corruption_seed, cifar10c_dir=cifar10c_dir,
    robustness_images=n_robust, device=device, cache_dir=ctx.results_dir)
per_run = evaluation["per_run"]
students = per_run.query("config != 'teacher'")
ctx.save_csv(per_run, "per_run", index=False)
ctx.save_csv(evaluation["robustness"], "robustness", index=False)
print("\n".join(map(str, tables.write_evidence(ctx.figures_dir, per_run, evaluation["subset"], efficiency))))
print("robustness subset:", provenance["evaluation subset: robustness (08)"])
tables.robustness_table(evaluation["robustness"])

# %%
fig = plots.robustness_heatmap(evaluation["robustness"])
ctx.save(fig, "08_robustness_heatmap")

# %%
fig = plots.robustness_by_severity(evaluation["robustness"])
ctx.save(fig, "08_robustness_severity")

# %% [markdown]
# Per corruption and severity (%, mean over seeds; `robustness_pivot.csv`):

# %%
pivot = tables.robustness_pivot(evaluation["robustness"])
ctx.save_csv(pivot, "robustness_pivot")
pivot

# %% [markdown]
# Mean accuracy over all corruptions and severities (%), with seed-paired differences:

# %%
tables.summarize_metric(students, "mean_corruption_acc", digits=2)

# %% [markdown]
# Expected calibration error (lower is better), with seed-paired differences:

# %%
tables.summarize_metric(students, "ece")

# %%
fig = plots.reliability_diagrams(evaluation["reliability"])
ctx.save(fig, "08_reliability")

# %% [markdown]
# Top-1 agreement with the teacher (%) and the attention distance to it (from `07`):

# %%
tables.summarize_metric(students, "agreement", digits=2)

# %%
tables.summarize_metric(distances, "attention_distance")

# %% [markdown]
# ## Answers to the paper's questions
#
# The text below is built from the tables above and, for RQ2, from the mask ablation's runs (`09`) when every
# variant of a seed is finished.

# %%
ablation_runs = ablation.saved_runs(ctx.runs_dir, profile, seeds_used)
Markdown(answers.research_answers(runs_by_teacher, students, efficiency, distances, ablation_runs))

# %% [markdown]
# Next: `09_mask_ablation.ipynb` tests the causal masks against no mask and size-matched random masks.
