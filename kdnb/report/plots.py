"""Figures for the notebooks. Every function returns a matplotlib ``Figure`` (shown inline by
Jupyter; ``Context.save`` writes it as PNG) and takes plain tensors or DataFrames from
:mod:`kdnb.report.tables` and :mod:`kdnb.report.analyses`, so the notebooks hold no plotting code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..evaluation.calibration import ece_from_table
from ..method.objective import term_names
from ..method.terms import TERMS
from .analyses import shown_classes
from .series import COLOURS, LABELS, MASK_COLOURS, PAPER_ACCURACY

ORDER = [LABELS[c] for c in ("baseline", "kd", "kd_fa", "kd_at", "kd_fa_at")]


def _palette(labels: Sequence[str]) -> dict[str, str]:
    """Each label's colour from :data:`kdnb.report.series.COLOURS` (the same in every figure); labels
    outside it get greys of their own."""
    greys = ["#333333", "#666666", "#999999", "#BBBBBB"]
    extra = [lab for lab in labels if lab not in COLOURS]
    return {lab: COLOURS[lab] if lab in COLOURS else greys[extra.index(lab) % len(greys)] for lab in labels}


def _log_y(ax) -> None:
    """Logarithmic y axis with plain-number tick labels (0.5, 2, 40 rather than 5×10⁻¹)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    lo, hi = ax.get_ylim()
    # label the minor ticks only when the axis spans less than a factor of 50
    ax.yaxis.set_minor_formatter(fmt if lo > 0 and hi / lo < 50 else NullFormatter())


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    """uint8 (3,H,W) tensor → (H,W,3) array for imshow."""
    return img.permute(1, 2, 0).cpu().numpy()


# ---------------------------------------------------------------- data
def sample_grid(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], per_class: int = 8,
                max_classes: int = 10):
    """The first ``per_class`` images of every class, one row per class (of at most ``max_classes``
    classes spread evenly over the list: CIFAR-100 shows 10 of its 100)."""
    shown = shown_classes(len(classes), max_classes)
    n_cls = len(shown)
    fig, axes = plt.subplots(n_cls, per_class, figsize=(per_class * 0.9, n_cls * 0.95), squeeze=False)
    for row, c in enumerate(shown):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        for j in range(per_class):
            ax = axes[row, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(idx):
                ax.imshow(_to_hwc(images[idx[j]]), interpolation="nearest")
        axes[row, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9)
    shown_of = "" if n_cls == len(classes) else f" ({n_cls} of {len(classes)} classes)"
    fig.suptitle(f"training images, first per class{shown_of}", y=1.0)
    fig.tight_layout()
    return fig


def split_bars(sizes: pd.DataFrame):
    """Stacked bars of images per class in the train / validation / test splits."""
    fig, ax = plt.subplots(figsize=(8, 3))
    sizes.plot.bar(stacked=True, ax=ax, width=0.8)
    ax.set_ylabel("images")
    ax.set_xlabel("")
    ax.set_title("images per class and split")
    ax.legend(loc="upper right", fontsize="small", ncols=3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- training
def learning_curves(history: pd.DataFrame | Sequence[Mapping], title: str = "", best_epoch: int | None = None):
    """One run: losses (train objective and its terms, validation CE) and accuracies per epoch."""
    h = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    if "val_acc" in h and h["val_acc"].max() <= 1.0:  # fractions from history.json → %
        h = h.assign(val_acc=100 * h["val_acc"], train_acc=100 * h["train_acc"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(h["epoch"], h["train_loss"], "o-", label="train objective")
    active = [t for t in term_names() if f"train_{t}" in h and h[f"train_{t}"].abs().sum() > 0]
    if len(active) > 1:  # with CE alone the objective is the CE curve
        for term in active:
            ax1.plot(h["epoch"], h[f"train_{term}"], ".--", alpha=0.7, label=f"train {TERMS[term].label} (unweighted)")
    ax1.plot(h["epoch"], h["val_loss"], "s-", label="validation CE")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    _log_y(ax1)
    ax1.legend(fontsize="small")
    ax2.plot(h["epoch"], h["train_acc"], "o-", label="train (augmented)")
    ax2.plot(h["epoch"], h["val_acc"], "s-", label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("top-1 accuracy (%)")
    ax2.legend(fontsize="small")
    if best_epoch is not None:
        for ax in (ax1, ax2):
            ax.axvline(best_epoch, color="gray", ls=":", lw=1)
        ax2.annotate("best (val loss)", (best_epoch, ax2.get_ylim()[0]), fontsize="small", color="gray",
                     xytext=(3, 3), textcoords="offset points")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_curves_by_config(histories: pd.DataFrame):
    """All configurations: validation accuracy, validation loss and training objective per epoch
    (mean over seeds, band = ±1 std when there are several)."""
    import seaborn as sns

    labels = [lab for lab in ORDER if lab in set(histories["label"])] or list(dict.fromkeys(histories["label"]))
    pal = _palette(labels)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (col, name) in zip(axes, [("val_acc", "validation top-1 (%)"), ("val_loss", "validation CE"),
                                      ("train_loss", "training objective")]):
        sns.lineplot(data=histories, x="epoch", y=col, hue="label", hue_order=labels, palette=pal,
                     errorbar="sd", marker="o", ax=ax, legend=ax is axes[0])
        ax.set_ylabel(name)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _log_y(axes[1])
    _log_y(axes[2])
    axes[0].legend(title=None, fontsize="small")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- results
def accuracy_bars(runs: pd.DataFrame, paper: Mapping[str, float] = PAPER_ACCURACY):
    """Test top-1 per configuration: bar = mean over seeds with ±1 std error bar, dots = seeds,
    black diamonds = the paper's reported numbers."""
    import seaborn as sns

    labels = [lab for lab in ORDER if lab in set(runs["label"])]
    pal = _palette(labels)
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(data=runs, x="label", y="test_acc", hue="label", order=labels, hue_order=labels, palette=pal,
                errorbar="sd", capsize=0.2, err_kws={"linewidth": 1.5}, alpha=0.8, ax=ax, legend=False)
    sns.stripplot(data=runs, x="label", y="test_acc", order=labels, color="black", size=4, jitter=0.1, ax=ax)
    inv = {v: k for k, v in LABELS.items()}
    xs = [i for i, lab in enumerate(labels) if inv[lab] in paper]
    ax.scatter(xs, [paper[inv[labels[i]]] for i in xs], marker="D", color="black", facecolor="white", zorder=5,
               label="paper (one run, best test epoch)")
    n = runs.groupby("label")["seed"].nunique().max()
    ax.set_title(f"test top-1 accuracy ({n} seed{'s' if n != 1 else ''}; error bar ±1 std)")
    ax.set_xlabel("")
    ax.set_ylabel("test top-1 accuracy (%)")
    lo = min(runs["test_acc"].min(), *(paper[inv[lab]] for lab in labels if inv[lab] in paper))
    ax.set_ylim(max(0.0, lo - 10), min(100.0, max(runs["test_acc"].max(), 85) + 3))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def metric_bars(df: pd.DataFrame, y: str, ylabel: str, title: str = ""):
    """Bars of one per-run metric per configuration (mean over seeds, ±1 std)."""
    import seaborn as sns

    labels = [lab for lab in ORDER if lab in set(df["label"])]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=df, x="label", y=y, hue="label", order=labels, hue_order=labels, palette=_palette(labels),
                errorbar="sd", capsize=0.2, ax=ax, legend=False)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def robustness_heatmap(robust: pd.DataFrame):
    """Accuracy (%) per configuration × corruption, mean over severities and seeds."""
    n_cols = robust["corruption"].nunique()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n_cols, 0.6 + 0.5 * robust["label"].nunique()))
    plot_robustness_heatmap(ax, robust, config_col="label")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def robustness_by_severity(robust: pd.DataFrame):
    """Mean accuracy over corruptions against severity, one line per configuration (0 = clean)."""
    import seaborn as sns

    per = robust.groupby(["label", "seed", "severity"], as_index=False)["accuracy"].mean()
    per["accuracy"] *= 100
    labels = [lab for lab in ["teacher", *ORDER] if lab in set(per["label"])]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.lineplot(data=per, x="severity", y="accuracy", hue="label", hue_order=labels, palette=_palette(labels),
                 marker="o", errorbar="sd", ax=ax)
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("mean accuracy over corruptions (%)")
    ax.legend(title=None, fontsize="small")
    fig.tight_layout()
    return fig


def reliability_diagrams(tables: Mapping[str, pd.DataFrame], columns: int = 3):
    """One reliability diagram per configuration (:func:`plot_reliability`) in its colour, on a grid of
    ``columns`` panels a row, large enough to read the bins."""
    n = len(tables)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.5 * rows), squeeze=False,
                             sharex=True, sharey=True)
    pal = _palette(list(tables))
    for ax, (label, table) in zip(axes.flat, tables.items()):
        plot_reliability(ax, table, title=label, colour=pal[label])
        ax.get_legend().remove()
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    for ax in axes[:, 1:].flat:
        ax.set_ylabel("")
    for ax in axes[:-1, :].flat:
        ax.set_xlabel("")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncols=len(names), fontsize="small", frameon=False)
    fig.suptitle(f"reliability per configuration (test set, seeds pooled; {len(next(iter(tables.values())))} bins)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# ---------------------------------------------------------------- masks and attention
def attention_grid(panel: Mapping[str, object]):
    """Rows = one test image per class. Columns: image, teacher Grad-CAM, binary causal masks at
    each ``keep``, then the attention maps of the teacher and of every student (same stage)."""
    images = panel["images"]
    cams = panel["cam"]
    masks: Mapping[float, torch.Tensor] = panel["masks"]
    att: Mapping[str, torch.Tensor] = panel["attention"]
    classes = panel["classes"]
    preds: Mapping[str, torch.Tensor] = panel.get("predictions", {})
    cols = ["image", "teacher Grad-CAM", *[f"mask keep={k:g}" for k in masks], *[f"AT {lab}" for lab in att]]
    n = len(images)
    fig, axes = plt.subplots(n, len(cols), figsize=(1.25 * len(cols), 1.3 * n + 0.6), squeeze=False)
    for i in range(n):
        row = [("img", _to_hwc(images[i])), ("cam", cams[i].numpy())]
        row += [("mask", m[i].numpy()) for m in masks.values()]
        row += [("att", a[i].numpy()) for a in att.values()]
        for j, (kind, arr) in enumerate(row):
            ax = axes[i, j]
            if kind == "img":
                ax.imshow(arr, interpolation="nearest")
            elif kind == "cam":
                ax.imshow(_to_hwc(images[i]), interpolation="nearest")
                ax.imshow(arr, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear",
                          extent=(-0.5, images.shape[-1] - 0.5, images.shape[-2] - 0.5, -0.5))
            elif kind == "mask":
                ax.imshow(arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(arr, cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(classes[i], rotation=0, ha="right", va="center", fontsize=8)
        for j, lab in enumerate(att, start=2 + len(masks)):
            if lab in preds:
                ok = bool(preds[lab][i])
                axes[i, j].set_title("✓" if ok else "✗", fontsize=7, color="green" if ok else "red", pad=1)
    for j, name in enumerate(cols):
        axes[0, j].annotate(name, (0.5, 1.25), xycoords="axes fraction", ha="center", va="bottom", fontsize=7,
                            rotation=20)
    fig.tight_layout()
    return fig


def ablation_points(runs: pd.DataFrame, title: str = "KD+FA+AT: which mask?"):
    """Test top-1 per mask variant of the ablation (09), one category each (nothing joins them):
    the seeds' runs as small markers (one shape per seed), the mean with its 95 % Student-t interval
    in the mask family's colour, and the no-mask mean as a dashed reference line."""
    from scipy import stats as st

    order = list(dict.fromkeys(runs["variant"]))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.05 * len(order) + 1.5), 4.4))
    shapes = ["o", "s", "^", "D", "v", "P", "X"]
    seeds = sorted(runs["seed"].unique())
    for i, variant in enumerate(order):
        grp = runs[runs["variant"] == variant]
        colour = MASK_COLOURS.get(str(grp["mask_mode"].iloc[0]), "#333333") if "mask_mode" in grp else "#333333"
        for j, seed in enumerate(seeds):
            vals = grp.loc[grp["seed"] == seed, "test_acc"]
            offset = (j - (len(seeds) - 1) / 2) * 0.08
            ax.scatter([i - 0.22 + offset] * len(vals), vals, marker=shapes[j % len(shapes)], s=18, color="#999999",
                       label=f"seed {seed}" if i == 0 else None, zorder=2)
        vals = grp["test_acc"].to_numpy(dtype=float)
        half = (st.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
        ax.errorbar([i + 0.08], [vals.mean()], yerr=[[half], [half]], fmt="o", color=colour, capsize=5, ms=7, lw=2,
                    label="mean, 95 % CI" if i == 0 else None, zorder=3)
    if "none" in order:
        ax.axhline(runs.loc[runs["variant"] == "none", "test_acc"].mean(), color="black", ls="--", lw=0.8,
                   label="no mask (mean)", zorder=1)
    ax.set_xticks(range(len(order)), [v.replace(" ", "\n", 1) for v in order], fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_xlabel("mask (mode, keep fraction)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- explorer (07)
def explorer_figure(view):
    """One image of :class:`kdnb.report.explorer.View`: the image, the teacher's Grad-CAM for the explained
    class, the causal mask, and the attention maps of the teacher and the chosen students, each titled
    with its prediction. Built as a bare ``Figure`` (not registered with pyplot)."""
    from matplotlib.figure import Figure

    panels = [("image", "img", view.image), (f"Grad-CAM: {view.explained}", "cam", view.cam),
              (f"mask ({view.mask_mode}, kept {view.kept_share:.0%})", "mask", view.mask),
              *[(f"AT {name}", "att", a) for name, a in view.attention.items()]]
    fig = Figure(figsize=(1.9 * len(panels), 2.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    h, w = view.image.shape[-2:]
    for ax, (title, kind, arr) in zip(axes, panels):
        if kind in ("img", "cam"):
            ax.imshow(_to_hwc(view.image), interpolation="nearest")
        if kind == "cam":
            ax.imshow(arr.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear",
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        elif kind == "mask":
            ax.imshow(arr.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        elif kind == "att":
            ax.imshow(arr.numpy(), cmap="viridis", interpolation="nearest")
        name = title.removeprefix("AT ")
        if name in view.predictions:
            pred, prob = view.predictions[name]
            ok = pred == view.label
            ax.set_xlabel(f"{pred} {prob:.0%} {'✓' if ok else '✗'}", fontsize=8, color="green" if ok else "red")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{view.label} · stage {view.stage} · keep {view.keep:g}", fontsize=9)
    return fig


def plot_robustness_heatmap(ax, df: pd.DataFrame, config_col: str = "config", fmt: str = ".1f", scale: float = 100.0):
    """Seaborn heatmap of accuracy (×``scale``), config × corruption, averaged over severities.

    ``df`` is the concatenation of :func:`kdnb.evaluation.metrics.robustness` tables with a ``config`` column (a table
    without one is drawn as a single row); "clean" comes first, then the corruptions.
    """
    import seaborn as sns

    data = df if config_col in df.columns else df.assign(**{config_col: "model"})
    table = data.pivot_table(index=config_col, columns="corruption", values="accuracy", aggfunc="mean", sort=False)
    cols = ["clean"] + [c for c in table.columns if c != "clean"] if "clean" in table.columns else list(table.columns)
    table = table[cols] * scale
    label = "accuracy (%)" if scale == 100 else "accuracy"
    sns.heatmap(table, annot=True, fmt=fmt, cmap="viridis", cbar_kws={"label": label}, ax=ax)
    ax.set_xlabel("corruption (mean over severities)")
    ax.set_ylabel(config_col)
    return ax


def plot_reliability(ax, table: pd.DataFrame, title: str | None = None, colour: str = "tab:blue"):
    """Reliability diagram on a matplotlib ``ax``: accuracy per bin against the diagonal.

    Bars (in ``colour``) show accuracy, grey hatched boxes the gap to mean confidence; ECE in the title.
    """
    filled = table[table["count"] > 0]
    width = table["upper"] - table["lower"]
    centers = (table["lower"] + table["upper"]) / 2
    fw, fc = width[filled.index], centers[filled.index]
    ax.bar(fc, filled["accuracy"], width=fw, edgecolor="black", lw=0.5, color=colour, label="accuracy")
    ax.bar(
        fc, filled["confidence"] - filled["accuracy"], bottom=filled["accuracy"], width=fw,
        color="none", hatch="///", edgecolor="#555555", lw=0.5, label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}  (ECE {ece_from_table(table):.3f})" if title else f"ECE {ece_from_table(table):.3f}")
    ax.legend(loc="upper left", fontsize="small")
    return ax
