"""``python -m kdnb bench``: training-step throughput of the paper's pipeline and of kdnb's.

Everything runs in one process on one device, after warm-up:

- ``reference`` — what the paper's notebook did: a torchvision-style dataset (uint8 HWC array →
  PIL image → ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize``) through a ``DataLoader`` with 2 persistent workers, fp32, the baseline
  configuration's student (same width as the profile) and SGD;
- ``baseline``, ``kd``, ``kd_fa``, ``kd_at``, ``kd_fa_at`` — kdnb's own step
  (:func:`kdnb.engine.step.build_stepper`) on uint8 batches gathered from a dataset resident on the
  device: batch augmentation, forward(s), masks, losses, backward, SGD;
- the pieces: ``teacher_forward`` (no graph; what KD needs) and, per registered CAM method,
  ``<method>_mask`` (the teacher forward with that CAM at ``cam_stage`` plus the causal mask at every
  distillation stage): ``gradcam_mask``, ``gradcampp_mask``, ``layercam_mask``.

The teacher is the profile's teacher architecture, randomly initialised (speed does not depend on
the weights). Data are synthetic unless ``data_dir`` names real images.

Variants alternate round-robin (A B C … A B C …) for ``repeats`` rounds of ``steps`` timed steps;
each round of a variant starts with ``settle`` untimed steps so every variant is timed in steady
state (in particular the reference's prefetch queue, filled for free while the other variants
ran, is drained first). Reported numbers are medians over rounds, and the two headline ratios are
medians of per-round paired ratios, so machine noise does not decide them. CUDA is synchronised
only at timing boundaries.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .engine.compile_cache import CACHE_NAME, use_compile_cache
from .engine.config import STUDENT_CONFIGS, TEACHER, RunConfig, make_config
from .engine.data import MEAN, STD, augment, cache_dir, epoch_batches, load_dataset, make_synthetic, normalize, plan_epoch
from .engine.fused import FusedCohortStep
from .engine.speedups import amp_active, autocast, cpu_bf16_pays, device_name
from .engine.step import CohortStep, build_stepper, build_student, prepare_teacher_for
from .engine.train import resolve_device
from .method.cams import CAM_METHODS
from .method.masks import causal_mask, teacher_forward
from .method.models import count_parameters

REFERENCE = "reference"
PIECES: tuple[str, ...] = ("teacher_forward", *(f"{m}_mask" for m in CAM_METHODS))
COHORT = "cohort"
FUSED = "fused_cohort"  # the cohort's students as one fused network (kdnb.engine.fused)
VARIANTS: tuple[str, ...] = (REFERENCE, *STUDENT_CONFIGS, COHORT, FUSED, *PIECES)
KINDS = {REFERENCE: "paper pipeline", **{c: "kdnb step" for c in STUDENT_CONFIGS}, COHORT: "all 5 students",
         FUSED: "5 students fused", **{p: "piece" for p in PIECES}}
NUM_WORKERS = 2
PREFETCH_FACTOR = 2
# Targets of issue 6 (a benchmark, not a timed test).
CPU_TARGET_BASELINE = 1.3  # kdnb baseline ≥ 1.3× reference throughput (2 CPU cores, cpu profile)
GPU_TARGET_BASELINE = 3.0  # kdnb baseline ≥ 3× reference on one GPU at full width (issue 16)
GPU_TARGET_COHORT = 2.2  # a cohort step of all five students ≤ 2.2× one KD step on one GPU (issue 16)
TARGET_MASKED = 1.3  # kd_fa_at step time ≤ 1.3× kd step time
CPU_TARGET_FUSED = 1.8  # the fused cohort step ≤ 1.8× one KD step (2 CPU cores, cpu profile)
DEFAULT_IMAGES = 4096  # synthetic / real images the benchmark draws batches from


# ---------------------------------------------------------------- the reference pipeline
class CifarStyleDataset(torch.utils.data.Dataset):
    """As ``torchvision.datasets.CIFAR10``: a uint8 (N,32,32,3) array, a PIL image per item."""

    def __init__(self, images_hwc: np.ndarray, labels: list[int], transform: Callable) -> None:
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def reference_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, num_batches: int,
                     seed: int = 0) -> torch.utils.data.DataLoader:
    """The paper's input pipeline over uint8 images ``x`` (N,3,32,32), enough for ``num_batches``.

    Shuffled without replacement, epoch after epoch, from one sampler, so a single iterator over
    the persistent workers serves the whole benchmark.
    """
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = CifarStyleDataset(x.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist(), tf)
    sampler = torch.utils.data.RandomSampler(ds, num_samples=batch_size * num_batches,
                                             generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True,
                                       num_workers=NUM_WORKERS, persistent_workers=True,
                                       prefetch_factor=PREFETCH_FACTOR)


class ReferenceStep:
    """One step of the paper's loop: next DataLoader batch → device → fp32 forward, CE, backward, SGD."""

    def __init__(self, cfg: RunConfig, batches, device: torch.device) -> None:
        torch.manual_seed(cfg.seed)
        self.student = build_student(cfg).to(device).train()
        self.opt = torch.optim.SGD(self.student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.batches, self.device = batches, device

    def __call__(self) -> None:
        x, y = next(self.batches)
        x, y = x.to(self.device), y.to(self.device)
        loss = F.cross_entropy(self.student(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


# ---------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _images(data_dir: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """uint8 (n,3,32,32) images and labels: synthetic by default, else the first n of ``data_dir``."""
    if data_dir in (None, "", "synthetic"):
        d = make_synthetic(n, 10)
        return d.train_x, d.train_y, d.source
    d = load_dataset(data_dir)
    return d.train_x[:n].contiguous(), d.train_y[:n].contiguous(), f"{d.source}, first {min(n, len(d.train_y))} images"


def _loop_step(steppers: list, teacher, train_x: torch.Tensor, train_y: torch.Tensor, seed: int,
               device: torch.device, graphs: bool, fused: bool = False) -> Callable[[], None]:
    """One training step of ``steppers`` exactly as the training loop takes it (a
    :class:`~kdnb.engine.step.CohortStep`, CUDA graphs included when ``graphs``; with ``fused`` a
    :class:`~kdnb.engine.fused.FusedCohortStep`), epoch plan after epoch plan."""
    step = (FusedCohortStep if fused else CohortStep)(steppers, teacher, train_x, train_y, device, graphs)
    g = torch.Generator().manual_seed(seed)
    left = [0]

    def run() -> None:
        if left[0] == 0:
            plan = plan_epoch(len(train_y), steppers[0].cfg.batch_size, g)
            step.start_epoch(plan)
            left[0] = len(plan)
        step()
        left[0] -= 1

    return run


# ---------------------------------------------------------------- the benchmark
def run_bench(profile: str = "cpu", steps: int = 20, device: str = "auto", json_path: str | None = None,
              data_dir: str | None = None, repeats: int = 3, *, warmup: int = 3, settle: int | None = None,
              n_images: int = DEFAULT_IMAGES, variants: tuple[str, ...] | list[str] | None = None,
              seed: int = 0, quiet: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure images/s of a whole training step for every variant; print a table; return the numbers.

    ``warmup`` untimed steps per variant before the first round (at most ``steps + 1``); ``settle``
    untimed steps at the start of every round (default: the reference's prefetch depth, workers ×
    prefetch factor, at most ``steps``).
    """
    if steps < 1 or repeats < 1:
        raise ValueError(f"steps and repeats must be >= 1 (got steps={steps}, repeats={repeats})")
    settle = min(NUM_WORKERS * PREFETCH_FACTOR, steps) if settle is None else settle
    warmup = min(warmup, steps + 1)
    names = tuple(VARIANTS if variants is None else variants)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
    out = print if not quiet else (lambda *a, **k: None)

    dev = resolve_device(device)
    threads_asked = "threads" in (overrides or {})
    overrides = {**(overrides or {}), "device": device}
    cfgs = {c: make_config(c, profile, seed, overrides) for c in (TEACHER, *STUDENT_CONFIGS)}
    base = cfgs["baseline"]
    if threads_asked:  # as train() does; else this process's count (a speed benchmark: meta records it)
        torch.set_num_threads(base.threads)
    if base.compile:  # no runs folder here: kdnb's cache folder (KDNB_CACHE_DIR) holds the compile cache
        use_compile_cache(cache_dir() / CACHE_NAME)
    x_cpu, y_cpu, source = _images(data_dir, n_images)
    if len(y_cpu) < base.batch_size:
        raise ValueError(f"{len(y_cpu)} images are fewer than one batch of {base.batch_size}")

    # The reference's workers are forked first, before the models and the device dataset exist.
    ref_steps = warmup + repeats * (settle + steps) + 2
    loader = reference_loader(x_cpu, y_cpu, base.batch_size, ref_steps, seed) if REFERENCE in names else None
    batches = iter(loader) if loader is not None else None  # (this forks the workers)
    teacher, fns = _variant_steps(names, cfgs, x_cpu, y_cpu, batches, seed, dev)
    order = [v for v in VARIANTS if v in fns]
    meta = _meta(profile, dev, cfgs, teacher, source, len(y_cpu), overrides,
                 {"steps": steps, "repeats": repeats, "warmup": warmup, "settle": settle})
    _announce(meta, cfgs, len(order), out)
    rounds = _time_rounds(fns, order, dev, warmup, repeats, settle, steps, out)
    report = _report(meta, rounds, base.batch_size, gpu=dev.type == "cuda")
    _print_report(report, out)
    if dev.type == "cpu" and os.cpu_count():
        try:
            load = os.getloadavg()[0]
            out(f"(load average at the end: {load:.2f} on {os.cpu_count()} CPUs; other processes skew CPU numbers)")
            meta["loadavg_end"] = load
        except OSError:
            pass
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2))
        out(f"wrote {json_path}")
    return report


def _variant_steps(names: tuple[str, ...], cfgs: dict[str, RunConfig], x_cpu: torch.Tensor, y_cpu: torch.Tensor,
                   reference_batches, seed: int, dev: torch.device) -> tuple[torch.nn.Module, dict[str, Callable[[], None]]]:
    """The (random-init) teacher, and one no-argument step function per variant in ``names``."""
    base, tcfg = cfgs["baseline"], cfgs[TEACHER]
    torch.manual_seed(tcfg.seed)
    teacher = build_student(tcfg).to(dev)
    teacher.eval().requires_grad_(False)
    # One prepared (BN-folded, channels_last, compiled if on) teacher for every variant, as each
    # training run has one; separate compiled copies would overflow dynamo's cache.
    prepared = prepare_teacher_for(base, teacher, dev)
    train_x, train_y = x_cpu.to(dev), y_cpu.to(dev)  # the dataset resident on the device
    steps_per_epoch = len(y_cpu) // base.batch_size

    def stepper(c: str):
        return build_stepper(cfgs[c], prepared if cfgs[c].needs_teacher else None, dev, steps_per_epoch,
                             teacher_prepared=True)

    fns: dict[str, Callable[[], None]] = {}
    if REFERENCE in names:
        fns[REFERENCE] = ReferenceStep(base, reference_batches, dev)
    steppers = {c: stepper(c) for c in STUDENT_CONFIGS if c in names}
    for c, st in steppers.items():
        fns[c] = _loop_step([st], prepared, train_x, train_y, seed, dev, cfgs[c].cuda_graphs)
    if COHORT in names:
        # One step of all five students as train_cohort takes it: one augmentation and one teacher
        # pass (Grad-CAM included) per batch, then each student's own update. Without CUDA graphs
        # it reuses the solo variants' students; a captured graph owns its students' gradients,
        # so with graphs the cohort has students of its own.
        own = base.cuda_graphs and dev.type == "cuda"
        members = [steppers[c] if c in steppers and not own else stepper(c) for c in STUDENT_CONFIGS]
        fns[COHORT] = _loop_step(members, prepared, train_x, train_y, seed, dev, base.cuda_graphs)
    if FUSED in names:  # the same five students as one network (students of its own: it owns their tensors)
        fns[FUSED] = _loop_step([stepper(c) for c in STUDENT_CONFIGS], prepared, train_x, train_y, seed, dev,
                                base.cuda_graphs, fused=True)
    fns.update(_piece_steps(names, cfgs, prepared, train_x, train_y, seed, dev))
    return teacher, fns


def _piece_steps(names: tuple[str, ...], cfgs: dict[str, RunConfig], prepared: torch.nn.Module,
                 train_x: torch.Tensor, train_y: torch.Tensor, seed: int,
                 dev: torch.device) -> dict[str, Callable[[], None]]:
    """The pieces: the teacher forward alone, and with Grad-CAM and the masks, on a few fixed prepared
    batches, with the teacher exactly as the training steps prepare it (BN folded, channels_last,
    compiled if on)."""
    base, mcfg = cfgs["baseline"], cfgs["kd_fa_at"]
    g = torch.Generator().manual_seed(seed)
    fixed = []
    for idx in epoch_batches(len(train_y), base.batch_size, g)[:4]:
        xb = normalize(augment(train_x[idx.to(dev)], g)).contiguous(memory_format=torch.channels_last)
        fixed.append((xb, train_y[idx.to(dev)]))
    torch.manual_seed(base.seed)
    probe = build_student(base).to(dev).eval()
    with torch.no_grad():
        _, pf = probe(fixed[0][0][:2].float(), return_features=True)
    sizes = {s: tuple(pf[s].shape[-2:]) for s in mcfg.stages}
    batches = itertools.cycle(fixed[1:] + fixed[:1])  # the order the pieces always took

    def teacher_piece() -> None:
        xb, _ = next(batches)
        with autocast(dev, mcfg.amp):
            teacher_forward(prepared, xb)

    def mask_piece(method: str) -> Callable[[], None]:
        def piece() -> None:
            xb, yb = next(batches)
            with autocast(dev, mcfg.amp):
                _, _, cam = teacher_forward(prepared, xb, mcfg.cam_stage, yb, method=method)
                for hw in sizes.values():
                    causal_mask(cam, mcfg.keep, mcfg.cam_type, hw)
        return piece

    pieces = {"teacher_forward": teacher_piece, **{f"{m}_mask": mask_piece(m) for m in CAM_METHODS}}
    return {name: fn for name, fn in pieces.items() if name in names}


def _meta(profile: str, dev: torch.device, cfgs: dict[str, RunConfig], teacher: torch.nn.Module, source: str,
          n_images: int, overrides: dict[str, Any], timing: dict[str, int]) -> dict[str, Any]:
    """What the numbers were measured on and with: device, threads, models, data, engine switches."""
    base, tcfg, mcfg = cfgs["baseline"], cfgs[TEACHER], cfgs["kd_fa_at"]
    return {
        "profile": profile, "device": dev.type, "device_name": device_name(dev),
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                                      "MKL_NUM_THREADS") if k in os.environ},
        "batch_size": base.batch_size, **timing, "data": source, "n_images": n_images,
        "student": {"arch": base.arch, "width": base.width, "cbam": base.cbam, "stem": base.stem,
                    "params": count_parameters(build_student(base))},
        "teacher": {"arch": tcfg.arch, "width": tcfg.width, "cbam": tcfg.cbam, "stem": tcfg.stem,
                    "params": count_parameters(teacher), "weights": "random init (speed only)"},
        "amp_bf16": amp_active(dev, base.amp),
        "cpu_bf16": {"amx": cpu_bf16_pays(), "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported())}
        if dev.type == "cpu" else None, "channels_last": True, "teacher_bn_folded": True,
        "compile": base.compile, "compile_mode": base.compile_mode, "cuda_graphs": base.cuda_graphs and dev.type == "cuda",
        "overrides": dict(overrides), "cam_stage": mcfg.cam_stage, "stages": mcfg.stages,
        "reference_loader": {"num_workers": NUM_WORKERS, "persistent_workers": True,
                             "prefetch_factor": PREFETCH_FACTOR, "pin_memory": False, "fp32": True},
    }


def _announce(meta: dict[str, Any], cfgs: dict[str, RunConfig], n_variants: int, out: Callable) -> None:
    base, tcfg = cfgs["baseline"], cfgs[TEACHER]
    out(f"kdnb bench: profile {meta['profile']}, device {meta['device']} ({meta['device_name']}), torch "
        f"{torch.__version__}, {meta['torch_threads']} threads, batch {meta['batch_size']}")
    out(f"  student {base.arch} width {base.width}; teacher {tcfg.arch}{'+CBAM' if tcfg.cbam else ''} width "
        f"{tcfg.width} (random init); data: {meta['data']}")
    if meta["cuda_graphs"]:
        out("  CUDA graphs: every kdnb step (and the cohort) is captured after its warm-up and replayed")
    out(f"  {n_variants} variants, {meta['warmup']} warm-up steps each, then {meta['repeats']} round(s) of "
        f"{meta['settle']} settle + {meta['steps']} timed steps, round-robin")


def _time_rounds(fns: dict[str, Callable[[], None]], order: list[str], dev: torch.device, warmup: int, repeats: int,
                 settle: int, steps: int, out: Callable) -> dict[str, list[float]]:
    """Seconds per step of each variant, one value per round: warm-up first (it also starts the
    reference's workers and fills their queue), then round-robin rounds so that drifts of a shared
    machine hit every variant alike."""
    t0 = time.perf_counter()
    for v in order:
        for _ in range(warmup):
            fns[v]()
    _sync(dev)
    out(f"  warm-up {time.perf_counter() - t0:.1f} s")
    rounds: dict[str, list[float]] = {v: [] for v in order}
    for k in range(repeats):
        for v in order:
            fn = fns[v]
            for _ in range(settle):
                fn()
            _sync(dev)
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(dev)
            rounds[v].append((time.perf_counter() - t) / steps)
        out(f"  round {k + 1}/{repeats} (ms/step): " + ", ".join(f"{v} {1e3 * rounds[v][-1]:.0f}" for v in order))
    return rounds


def _report(meta: dict[str, Any], rounds: dict[str, list[float]], bs: int, gpu: bool) -> dict[str, Any]:
    """Per-variant medians, the paired ratios between variants, and each target with its verdict."""
    med = {v: statistics.median(r) for v, r in rounds.items()}
    ref = med.get(REFERENCE)
    results = {
        v: {"kind": KINDS[v], "images_per_s": bs / med[v], "ms_per_step": 1e3 * med[v],
            "rel_reference": (ref / med[v]) if ref else None,
            "rounds_ms_per_step": [1e3 * s for s in rounds[v]]}
        for v in rounds
    }

    def paired(num: str, den: str) -> float | None:
        if num not in rounds or den not in rounds:
            return None
        return statistics.median(a / b for a, b in zip(rounds[num], rounds[den]))

    speedup = paired(REFERENCE, "baseline")  # reference time / baseline time = throughput ratio
    masked = paired("kd_fa_at", "kd")
    target_speedup = GPU_TARGET_BASELINE if gpu else CPU_TARGET_BASELINE
    ratios = {
        "baseline_over_reference_throughput": speedup,
        "kd_fa_at_over_kd_step_time": masked,
        **{f"{m}_mask_over_teacher_forward_time": paired(f"{m}_mask", "teacher_forward") for m in CAM_METHODS},
        "kd_over_baseline_step_time": paired("kd", "baseline"),
        "cohort_over_kd_step_time": paired(COHORT, "kd"),
        "fused_cohort_over_kd_step_time": paired(FUSED, "kd"),
        "fused_cohort_over_cohort_step_time": paired(FUSED, COHORT),
        # the cohort against the five students' solo steps one after another (per-round sums)
        "cohort_over_sum_of_solo_step_time": (
            statistics.median(c / sum(rounds[v][k] for v in STUDENT_CONFIGS) for k, c in enumerate(rounds[COHORT]))
            if COHORT in rounds and all(v in rounds for v in STUDENT_CONFIGS) else None),
    }
    targets = {
        "baseline_over_reference_throughput": {
            "target": f">= {target_speedup}", "applies_to": "one GPU, full width" if gpu else "2 CPU cores, cpu profile",
            "value": speedup, "met": None if speedup is None else speedup >= target_speedup},
        "kd_fa_at_over_kd_step_time": {
            "target": f"<= {TARGET_MASKED}", "applies_to": "2 CPU cores, cpu profile",
            "value": masked, "met": None if masked is None else masked <= TARGET_MASKED},
    }
    if not gpu:
        fused = ratios["fused_cohort_over_kd_step_time"]
        targets["fused_cohort_over_kd_step_time"] = {
            "target": f"<= {CPU_TARGET_FUSED}", "applies_to": "2 CPU cores, cpu profile",
            "value": fused, "met": None if fused is None else fused <= CPU_TARGET_FUSED}
    if gpu:
        cohort = ratios["cohort_over_kd_step_time"]
        targets["cohort_over_kd_step_time"] = {
            "target": f"<= {GPU_TARGET_COHORT}", "applies_to": "one GPU, full width",
            "value": cohort, "met": None if cohort is None else cohort <= GPU_TARGET_COHORT}
    cached = {"implemented": False, "mean_iou": None,
              "note": "live Grad-CAM every step (reusing the KD teacher forward); no cached-mask scheme"}
    return {"meta": meta, "variants": results, "ratios": ratios, "targets": targets, "cached_masks": cached}


TARGET_LABELS = {"baseline_over_reference_throughput": "kdnb baseline / reference (throughput)",
                 "kd_fa_at_over_kd_step_time": "kd_fa_at / kd (step time)",
                 "cohort_over_kd_step_time": "cohort of all 5 students / kd (step time)",
                 "fused_cohort_over_kd_step_time": "fused cohort of all 5 students / kd (step time)"}


def _print_report(report: dict[str, Any], out: Callable) -> None:
    ratios = report["ratios"]
    out("")
    out(format_table(report))
    out("")
    for key, t in report["targets"].items():
        if t["value"] is not None:
            verdict = "met" if t["met"] else "MISSED"
            out(f"{TARGET_LABELS[key]}: {t['value']:.2f}x  (target {t['target']}x on {t['applies_to']}: {verdict})")
    for m in CAM_METHODS:  # what each CAM method's masks add to the teacher pass
        if ratios.get(f"{m}_mask_over_teacher_forward_time") is not None:
            out(f"{m}_mask / teacher_forward (time): {ratios[f'{m}_mask_over_teacher_forward_time']:.2f}x")
    if ratios["cohort_over_kd_step_time"] is not None:
        out(f"cohort of all 5 students / kd (step time): {ratios['cohort_over_kd_step_time']:.2f}x"
            + (f"; / the 5 solo steps together: {ratios['cohort_over_sum_of_solo_step_time']:.2f}x"
               if ratios["cohort_over_sum_of_solo_step_time"] is not None else ""))
    if ratios["fused_cohort_over_kd_step_time"] is not None:
        out(f"fused cohort of all 5 students / kd (step time): {ratios['fused_cohort_over_kd_step_time']:.2f}x"
            + (f"; / the cohort: {ratios['fused_cohort_over_cohort_step_time']:.2f}x"
               if ratios["fused_cohort_over_cohort_step_time"] is not None else ""))
    out("cached masks: not implemented (masks are live Grad-CAM every step), so no mean IoU to report")


def format_table(report: dict[str, Any]) -> str:
    """The variants as a text table (pandas when available)."""
    rows = [{"variant": v, "kind": r["kind"], "images/s": r["images_per_s"], "ms/step": r["ms_per_step"],
             "x reference": float("nan") if r["rel_reference"] is None else r["rel_reference"]}
            for v, r in report["variants"].items()]
    try:
        import pandas as pd

        df = pd.DataFrame(rows).set_index("variant")
        return df.to_string(float_format=lambda f: f"{f:.2f}", na_rep="-")
    except ImportError:  # pragma: no cover - pandas is a project dependency
        lines = [f"{'variant':<16}{'kind':<16}{'images/s':>10}{'ms/step':>10}{'x reference':>13}"]
        for r in rows:
            rel = f"{r['x reference']:.2f}"
            lines.append(f"{r['variant']:<16}{r['kind']:<16}{r['images/s']:>10.1f}{r['ms/step']:>10.2f}{rel:>13}")
        return "\n".join(lines)
