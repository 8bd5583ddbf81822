"""Analyses that load trained models (07, 08): attention panels and distances, calibration, robustness
and efficiency, each cached on disk while its runs, settings and code stay the same."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..engine.config import STUDENT_CONFIGS, TEACHER, make_config
from ..engine.data import balanced_subset, class_counts
from ..engine.errors import StorageError
from ..engine.runs import BEST_FILE, atomic_write, is_finished, run_path
from ..engine.train import load_trained, resolve_device
from ..evaluation import metrics
from ..evaluation.calibration import expected_calibration_error, reliability_table
from ..evaluation.efficiency import count_parameters, flops_per_image, measure_latencies, quartiles, training_cost
from ..evaluation.metrics import accuracy, agreement, predict, robustness, robustness_summary
from ..method.losses import attention_map
from ..method.masks import causal_mask, gradcam
from .lookup import collect_histories, require_run
from .series import LABELS


def _run_fingerprint(runs_dir: str | os.PathLike, profile: str, keys: Iterable[tuple[str, int]]) -> list:
    """Identity of the checkpoints an evaluation reads (a retrained run changes it)."""
    out = []
    for c, s in keys:
        st = (run_path(runs_dir, profile, c, s) / BEST_FILE).stat()
        out.append([c, s, st.st_mtime_ns, st.st_size])
    return out


PACKAGE = Path(__file__).resolve().parent.parent  # kdnb/


def _code_fingerprint(package: Path = PACKAGE) -> str:
    """Hash of every source file of ``package``: any code change invalidates a cached analysis (an
    analysis reaches models, losses, data, metrics and more; naming some of them would miss the rest)."""
    h = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def cached(cache_dir: str | os.PathLike | None, name: str, key: dict[str, Any], compute):
    """``compute()``, stored in ``cache_dir`` under a hash of ``key`` and reused while the key is
    the same (no cache when ``cache_dir`` is None). Delete the ``.cache-*`` files to recompute.

    The store is JSON (:func:`encode`: numbers, text, lists, dicts and DataFrames, floats exact), so
    reading it can never run code, and it holds its key: a file that is damaged, foreign or of
    another key is recomputed, and that is said in one line. A cache that cannot be written (a full
    or read-only disk) only costs a recomputation next time, and that is said too."""
    if cache_dir is None:
        return compute()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f".cache-{name}-{digest}.json"
    stamp = json.loads(json.dumps(key, sort_keys=True, default=str))
    if path.is_file():
        try:
            stored = json.loads(path.read_bytes())
            if not isinstance(stored, dict) or stored.get("key") != stamp:
                raise ValueError("it is not the result of this analysis' key")
            value = decode(stored["value"])
            print(f"{name}: reusing the stored result ({path.name}; delete it to recompute)")
            return value
        except Exception as exc:  # damaged, foreign, of an older kdnb: never trusted, recomputed
            print(f"{name}: the stored result {path} is damaged or not kdnb's ({type(exc).__name__}); recomputing")
    value = compute()
    try:
        text = json.dumps({"key": stamp, "value": encode(value)})
    except TypeError as exc:  # a value the store cannot hold exactly: computed every time
        print(f"{name}: not stored ({exc})")
        return value
    try:
        atomic_write(path, lambda f: f.write(text.encode()))
    except StorageError as exc:
        print(f"{name}: result not stored, it is recomputed next time: {exc}")
    return value


FRAME = "__frame__"


def encode(value: Any) -> Any:
    """``value`` as JSON data that :func:`decode` turns back into an equal value: None, bools,
    numbers (floats exactly, NaN and inf included), text, lists, dicts with text keys and pandas
    DataFrames (columns with their dtypes, the index); TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or FRAME in value or "__float__" in value:
            raise TypeError("dict keys must be text")
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        index = value.index
        plain = isinstance(index, pd.RangeIndex)
        return {FRAME: {
            "columns": [encode(c) for c in value.columns], "dtypes": [str(t) for t in value.dtypes],
            "data": [encode(value[c].tolist()) for c in value.columns],
            "index": [index.start, index.stop, index.step] if plain else encode(index.tolist()),
            "index_range": plain, "index_dtype": str(index.dtype), "index_name": encode(index.name)}}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return encode(value.item())
    raise TypeError(f"cannot store a {type(value).__name__}")


def decode(data: Any) -> Any:
    """The value :func:`encode` stored."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__float__" in data:
        return float(data["__float__"])
    if FRAME not in data:
        return {k: decode(v) for k, v in data.items()}
    f = data[FRAME]
    index = (pd.RangeIndex(*f["index"]) if f["index_range"]
             else pd.Index(decode(f["index"]), dtype=f["index_dtype"]))
    index.name = decode(f["index_name"])
    columns = [decode(c) for c in f["columns"]]
    cols = {c: pd.Series(decode(v), dtype=t, index=index) for c, v, t in zip(columns, f["data"], f["dtypes"])}
    return pd.DataFrame(cols, index=index, columns=columns)


def _device(name: str | Any):
    """``auto`` → CUDA when available, else CPU (as the training engine)."""
    return resolve_device(name) if isinstance(name, str) else name


def _subset(data, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """The test images of an evaluation subset of ``n`` (all when ``None``): stratified, seeded, the
    same number per class (:func:`kdnb.engine.data.balanced_subset`), and its images per class."""
    idx = balanced_subset(data.test_y, n, seed)
    x, y = data.test_x[idx], data.test_y[idx]
    return x, y, class_counts(y, data.classes)


def per_class_text(counts: dict[str, int]) -> str:
    """A subset's composition in a few words: ``200 per class (10 classes)``, or every count if unequal."""
    values = set(counts.values())
    if len(values) == 1:
        return f"{values.pop()} per class ({len(counts)} classes)"
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def subset_summary(data, n: int | None, seed: int = 0) -> str:
    """How an evaluation subset of ``n`` test images is drawn, in words, for the provenance."""
    _, y, counts = _subset(data, n, seed)
    if len(y) == len(data.test_y):
        return f"all {len(y):,} test images ({per_class_text(counts)})"
    return (f"{len(y):,} of {len(data.test_y):,} test images, {per_class_text(counts)}, stratified and seeded "
            f"(seed {seed}; the same images for every model)")


def subset_table(counts: dict[str, int]) -> pd.DataFrame:
    """``class``, ``images``: the composition of an evaluation subset, one row per class."""
    return pd.DataFrame({"class": list(counts), "images": list(counts.values())})


def load_students(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int],
                  configs: Sequence[str] = STUDENT_CONFIGS, device: Any = "cpu",
                  overrides: dict[str, Any] | None = None) -> dict[tuple[str, int], Any]:
    """The best-by-validation model of every (config, seed), in eval mode; ``overrides``: the settings
    the runs were trained with beyond their profile (``{"dataset": "cifar100"}``, say)."""
    return {(c, s): load_trained(require_run(runs_dir, profile, c, s, _expected(c, profile, s, overrides)), device)
            for c in configs for s in seeds}


def _expected(config: str, profile: str, seed: int, overrides: dict[str, Any] | None) -> Any:
    """The settings a run of ``config`` has with ``overrides`` (None: as the notebooks make it)."""
    return make_config(config, profile, seed, overrides) if overrides else None


def shown_classes(num_classes: int, max_classes: int | None = None) -> list[int]:
    """The classes a per-class figure shows: all, or ``max_classes`` of them spread evenly."""
    if max_classes is None or num_classes <= max_classes:
        return list(range(num_classes))
    return sorted({round(i * (num_classes - 1) / (max_classes - 1)) for i in range(max_classes)})


def load_teacher_of(runs_dir: str | os.PathLike, profile: str, seed: int = 0, device: Any = "cpu",
                    overrides: dict[str, Any] | None = None):
    """The frozen teacher (seed ``seed``) of ``profile``, or :class:`MissingInput` naming notebook 01."""
    expected = _expected(TEACHER, profile, seed, overrides)
    return load_trained(require_run(runs_dir, profile, TEACHER, seed, expected), device).requires_grad_(False)


def first_per_class(labels, num_classes: int, max_classes: int | None = None) -> list[int]:
    """Index of the first image of each class (classes without images are left out); with
    ``max_classes``, of that many classes spread evenly over the class list (CIFAR-100: 10 of 100)."""
    out = []
    for c in shown_classes(num_classes, max_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx):
            out.append(int(idx[0]))
    return out


def attention_panel(runs_dir: str | os.PathLike, profile: str, seed: int, data, *, stage: str = "layer3",
                    cam_stage: str = "layer3", keeps: Sequence[float] = (0.25, 0.5, 0.75),
                    configs: Sequence[str] = STUDENT_CONFIGS, teacher_seed: int = 0) -> dict[str, Any]:
    """For the first test image of each class: the image, the teacher's Grad-CAM for the true class
    (at ``cam_stage``), binary causal masks at each ``keep`` (at the student's ``stage`` size) and the
    attention maps (p=2) of the teacher and each student at ``stage``."""


    idx = first_per_class(data.test_y, data.num_classes, max_classes=10)
    images, labels = data.test_x[idx], data.test_y[idx]
    x = data.normalize(images)
    teacher = load_teacher_of(runs_dir, profile, teacher_seed)
    students = load_students(runs_dir, profile, [seed], configs)
    cam = gradcam(teacher, x, cam_stage, labels)
    with torch.no_grad():
        s_feats = {c: students[(c, seed)](x, return_features=True) for c in configs}
        t_logits, t_feats = teacher(x, return_features=True)
    size = tuple(next(iter(s_feats.values()))[1][stage].shape[-2:])
    masks = {float(k): causal_mask(cam, float(k), "binary", size) for k in keeps}

    def amap(feat):
        return attention_map(feat, 2, size=size).view(-1, *size)

    attention = {"teacher": amap(t_feats[stage])}
    predictions = {"teacher": t_logits.argmax(1) == labels}
    for c in configs:
        logits, feats = s_feats[c]
        attention[LABELS[c]] = amap(feats[stage])
        predictions[LABELS[c]] = logits.argmax(1) == labels
    return {"images": images, "labels": labels, "classes": [data.classes[int(i)] for i in labels], "cam": cam,
            "masks": masks, "attention": attention, "predictions": predictions, "stage": stage, "size": size}


def mask_example(keeps: Sequence[float] = (0.25, 0.5, 0.75), size: int = 4) -> pd.DataFrame:
    """Binary causal masks of a fixed ``size``×``size`` cam (values 0..1 in raster order): which
    positions each ``keep`` retains. A deterministic check of the thresholding rule."""


    cam = torch.linspace(0, 1, size * size).view(1, size, size).flip(-1)
    rows = {"cam": [" ".join(f"{v:.2f}" for v in r) for r in cam[0].tolist()]}
    for k in keeps:
        m = causal_mask(cam, float(k), "binary")[0]
        rows[f"keep={k:g} ({int(m.sum())}/{size * size})"] = [" ".join(str(int(v)) for v in r) for r in m.tolist()]
    return pd.DataFrame(rows).rename_axis("row")


def attention_distances(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], data, *,
                        stage: str = "layer3", n_images: int | None = None, configs: Sequence[str] = STUDENT_CONFIGS,
                        teacher_seed: int = 0, batch_size: int = 250, device: str = "auto", subset_seed: int = 0,
                        progress: bool = True, cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per (config, seed): mean over test images of ‖a_s − a_t‖₂, the L2 distance between the
    normalised attention maps (p=2) of student and teacher at ``stage`` (0 = identical, max 2).
    ``n_images``: a class-balanced subset of that size (``subset_seed``; None: the whole test set);
    its images per class are in the ``images_per_class`` column.
    With ``cache_dir`` the result is stored and reused while runs, settings and code are unchanged."""
    keys = [(TEACHER, teacher_seed)] + [(c, s) for c in configs for s in seeds]
    key = {"runs": _run_fingerprint(runs_dir, profile, keys) if all(
               is_finished(run_path(runs_dir, profile, c, s)) for c, s in keys) else None,
           "stage": stage, "n_images": n_images, "subset_seed": subset_seed, "data": data.source,
           "code": _code_fingerprint()}
    if key["runs"] is None:
        cache_dir = None  # let the computation raise MissingInput
    return cached(cache_dir, "attention_distance", key, lambda: _attention_distances(
        runs_dir, profile, seeds, data, stage=stage, n_images=n_images, configs=configs,
        teacher_seed=teacher_seed, batch_size=batch_size, device=device, subset_seed=subset_seed, progress=progress))


def _attention_distances(runs_dir, profile, seeds, data, *, stage, n_images, configs, teacher_seed, batch_size,
                         device, subset_seed, progress) -> pd.DataFrame:
    dev = _device(device)
    x_all, _, counts = _subset(data, n_images, subset_seed)
    teacher = load_teacher_of(runs_dir, profile, teacher_seed, dev)
    students = load_students(runs_dir, profile, seeds, configs, dev)
    dist = metrics.attention_distances(students, teacher, x_all, data.normalize, stage=stage, batch_size=batch_size, device=dev,
                               progress=progress)
    rows = [{"config": c, "label": LABELS[c], "seed": s, "attention_distance": dist[(c, s)],
             "images": len(x_all), "images_per_class": per_class_text(counts), "stage": stage}
            for (c, s) in students]
    return pd.DataFrame(rows)


def evaluate_models(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], data, *,
                    robustness_images: int | None = 2000, corruption_seed: int = 0, cifar10c_dir: str | None = None,
                    subset_seed: int = 0,
                    configs: Sequence[str] = STUDENT_CONFIGS, teacher_seed: int = 0, n_bins: int = 15,
                    device: str = "auto", progress: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Test-set predictions of the teacher and every student run → calibration (ECE, reliability
    tables pooled over seeds), top-1 agreement with the teacher, and robustness to corruptions on
    a class-balanced, seeded subset of ``robustness_images`` test images (the same for every model;
    ``kdnb.engine.data.balanced_subset``; None: all of them; ``kdnb.evaluation.metrics.robustness``).

    Returns ``{"per_run": DataFrame, "robustness": long DataFrame, "reliability": {label: table},
    "subset": DataFrame (class, images)}``;
    the teacher appears as config ``teacher`` (seed ``teacher_seed``) for reference. With
    ``cache_dir`` the result is stored and reused while runs, settings and code are unchanged.
    """
    keys = [(TEACHER, teacher_seed)] + [(c, s) for c in configs for s in seeds]
    for c, s in keys:
        require_run(runs_dir, profile, c, s)
    key = {"runs": _run_fingerprint(runs_dir, profile, keys), "robustness_images": robustness_images,
           "subset_seed": subset_seed, "corruption_seed": corruption_seed, "cifar10c_dir": cifar10c_dir,
           "n_bins": n_bins, "data": data.source, "code": _code_fingerprint()}
    return cached(cache_dir, "evaluation", key, lambda: _evaluate_models(
        runs_dir, profile, seeds, data, robustness_images=robustness_images, corruption_seed=corruption_seed,
        cifar10c_dir=cifar10c_dir, subset_seed=subset_seed, configs=configs, teacher_seed=teacher_seed,
        n_bins=n_bins, device=device, progress=progress))


def _evaluate_models(runs_dir, profile, seeds, data, *, robustness_images, corruption_seed, cifar10c_dir, subset_seed,
                     configs, teacher_seed, n_bins, device, progress) -> dict[str, Any]:
    dev = _device(device)
    x, y = data.test_x, data.test_y
    xr, yr, counts = _subset(data, robustness_images, subset_seed)
    models = {("teacher", teacher_seed): load_teacher_of(runs_dir, profile, teacher_seed, dev)}
    models.update(load_students(runs_dir, profile, seeds, configs, dev))
    logits: dict[tuple[str, int], torch.Tensor] = {}
    rows, robust = [], []
    corrupted: dict = {}  # every model sees the same corrupted sets, made once
    for (c, s), model in tqdm(models.items(), desc="evaluating runs", disable=not progress):
        lg = logits[(c, s)] = predict(model, x, data.normalize, device=dev)
        rb = robustness(model, xr, yr, data.normalize, seed=corruption_seed, cifar10c_dir=cifar10c_dir, device=dev,
                        cache=corrupted)
        summ = robustness_summary(rb)
        robust.append(rb.assign(config=c, label=LABELS[c], seed=s))
        rows.append({
            "config": c, "label": LABELS[c], "seed": s,
            "test_acc": 100 * accuracy(lg, y),
            "ece": expected_calibration_error(lg, y, n_bins, from_logits=True),
            "agreement": 100 * agreement(lg, logits[("teacher", teacher_seed)]),
            "clean_acc_subset": 100 * summ["clean"],
            "mean_corruption_acc": 100 * summ["mean_corruption"],
            "corruption_images": len(yr),
            "corruption_images_per_class": per_class_text(counts),
        })
    per_run = pd.DataFrame(rows)
    reliability = {}
    for c in ["teacher", *configs]:
        keys = [k for k in logits if k[0] == c]
        pooled = torch.cat([logits[k] for k in keys])
        reliability[LABELS[c]] = reliability_table(pooled, y.repeat(len(keys)), n_bins, from_logits=True)
    robust_df = pd.concat(robust, ignore_index=True)
    return {"per_run": per_run, "robustness": robust_df, "reliability": reliability, "subset": subset_table(counts)}


def efficiency_table(runs_dir: str | os.PathLike, profile: str, seeds: Sequence[int], *, repeats: int = 20,
                     rounds: int = 5, device: str = "auto", configs: Sequence[str] = STUDENT_CONFIGS,
                     teacher_seed: int = 0, batch_sizes: Sequence[int] = (1, 256),
                     bench: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per model (index: config, the teacher first), what it costs to deploy and to train.

    Deploying: parameters (FA connectors excluded: they live in the objective), FLOPs per 32×32
    image, and latency per image at each batch size as the median of ``rounds`` rounds of
    ``repeats`` passes with the rounds' quartiles (models alternate round by round; see
    :func:`kdnb.evaluation.efficiency.measure_latencies`), on ``device`` with the threads stated.
    Training (from the runs' histories, all ``seeds``): each configuration's own milliseconds per
    step (median and IQR over epochs), its ratio to the baseline's (median and IQR of the ratios of
    the same epoch of the same cohort), and the milliseconds per step its cohort shared (the batch
    with its augmentation, the teacher pass and its Grad-CAM; one number per cohort, the baseline's
    included) (:func:`kdnb.evaluation.efficiency.training_cost`). Latency columns are milliseconds
    per image (``_ms_per_image``), whatever the batch size. With
    ``bench`` (a ``python -m kdnb bench --json`` report) also the benchmark's ms per step of each
    configuration trained alone (median and IQR of its rounds)."""
    device = _device(device)
    models = {TEACHER: load_teacher_of(runs_dir, profile, teacher_seed, device)}
    first = min(seeds)
    models.update({c: m for (c, _), m in load_students(runs_dir, profile, [first], configs, device).items()})
    hist = collect_histories(runs_dir, profile, seeds, configs)
    cost = training_cost({c: hist[hist["config"] == c].to_dict("records") for c in configs})
    rows = {c: {"label": LABELS[c], "parameters": count_parameters(m), "flops": flops_per_image(m)}
            for c, m in models.items()}
    for bs in batch_sizes:
        lat = measure_latencies(models, bs, device, warmup=max(2, repeats // 5), repeats=repeats, rounds=rounds)
        for c, r in lat.items():
            col = f"latency_bs{bs}_{{}}_ms_per_image"
            rows[c].update({col.format(q): r[f"{q}_ms_per_sample"] for q in ("median", "q1", "q3", "iqr")})
            rows[c].update({"device": r["device"], "threads": r["threads"], "latency_rounds": rounds, "latency_repeats": repeats})
    for c in configs:
        rows[c].update({"own_train_ms_per_step": cost.loc[c, "own_ms_per_step"],
                        "own_train_ms_per_step_iqr": cost.loc[c, "own_ms_per_step_iqr"],
                        "own_train_vs_baseline": cost.loc[c, "own_vs_reference"],
                        "own_train_vs_baseline_iqr": cost.loc[c, "own_vs_reference_iqr"],
                        "shared_train_ms_per_step": cost.loc[c, "shared_ms_per_step"]})
        variant = (bench or {}).get("variants", {}).get(c)
        if variant and variant.get("rounds_ms_per_step"):
            q1, med, q3 = quartiles(variant["rounds_ms_per_step"])
            rows[c].update({"bench_solo_ms_per_step": med, "bench_solo_ms_per_step_iqr": q3 - q1,
                            "bench_device": bench.get("meta", {}).get("device_name")})
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("config")
