"""Run configurations as data: loss presets, profiles and validated run settings.

A run is fully described by a :class:`RunConfig`. It is assembled as
``defaults ← profile ← profile's teacher recipe (teacher only) ← preset ← user overrides`` and
validated field by field *before* any data is loaded, so a typo fails in a second with one
line naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..method.cams import CAM_METHODS
from ..method.mask_sources import MASK_SOURCES
from ..method.masks import CAM_TYPES
from ..method.models import ARCHS, STAGES, STEMS, width_problem
from ..method.terms import TERMS
from .datasets import DATASETS

TEACHER = "teacher"

# Loss weights per configuration. The literature's defaults (named per term, because the
# anchors disagree on what a single "alpha" weights):
# - KD: T=4, CE 0.1 / KD 0.9 (Hinton et al.; RepDistiller and mdistiller use the same).
# - AT: beta = 1000 (Zagoruyko & Komodakis; RepDistiller, mdistiller).
# - FA: the literature's weight is 100 after a conv-BN-ReLU connector (FitNets hint loss as in
#   RepDistiller). Measured at the start of a `cpu`-profile kd_fa_at run (student at
#   initialisation, weighted terms on the first batches): with the teacher after 2 of its 15
#   epochs CE 0.25, KD 1.9, FA 190, AT 10.6; after 10 epochs CE 0.25, KD 3.3, FA 70, AT 6.0. FA
#   at weight 100 sits 20–100× above KD and ~300× above CE, so kdnb uses w_fa=1 (FA 0.7–1.9, the
#   size of KD). AT keeps the literature's 1000 (2–6× KD). Override with --set w_fa=100.


def preset(weights: dict[str, float], **settings: Any) -> dict[str, Any]:
    """A configuration as data: ``{term: weight}`` (every other registered term 0) plus any other
    settings it fixes (a mask source, say), as the run settings ``w_<term>`` it stands for."""
    for t in weights:
        TERMS[t]  # a misspelt term fails at import, listing the registered ones
    return {**{f"w_{t}": float(weights.get(t, 0.0)) for t in TERMS}, **settings}


PRESETS: dict[str, dict[str, Any]] = {
    TEACHER: preset({"ce": 1.0}),
    "baseline": preset({"ce": 1.0}),
    "kd": preset({"ce": 0.1, "kd": 0.9}),
    "kd_fa": preset({"ce": 0.1, "kd": 0.9, "fa": 1.0}),
    "kd_at": preset({"ce": 0.1, "kd": 0.9, "at": 1000.0}),
    "kd_fa_at": preset({"ce": 0.1, "kd": 0.9, "fa": 1.0, "at": 1000.0}),
}
for _term in TERMS.items():  # configurations a registered term brings (DKD's dkd, dkd_fa_at, ...)
    PRESETS.update({name: preset(weights) for name, weights in _term[1].presets.items()})
# The paper's five configurations: the notebook series trains and compares these.
STUDENT_CONFIGS: tuple[str, ...] = ("baseline", "kd", "kd_fa", "kd_at", "kd_fa_at")
# Every configuration ``--config`` accepts (presets added for other distillers included).
CONFIGS: tuple[str, ...] = tuple(PRESETS)

# The paper fixes the students' recipe but not the teacher's. At reduced width a bottleneck
# ResNet-50 trained with the students' lr 0.01 ends up *weaker* than the student (see the CPU
# calibration notes), so every profile trains the teacher with Nesterov SGD and a one-cycle LR.
TEACHER_RECIPE: dict[str, Any] = {"lr": 0.1, "nesterov": True, "schedule": "onecycle"}

# ``threads``: the intra-op CPU thread count every run of the profile trains with, whoever starts it
# (``train``, the local pool at any --jobs, Ray, Slurm). On the CPU it is part of a run's numbers
# (float sums split into that many partial sums), so it is fixed per profile rather than taken from
# the machine, recorded in the run's config.json and checked when the run resumes. cpu: 2, the 2-core
# machine its recorded numbers come from (what torch chose there before it was fixed). smoke: 1, so two
# smoke runs share 2 cores without OpenMP's spinning threads stalling each other (the test suite runs
# two at once); its tiny networks gain little from a second thread (a smoke teacher: 26 s at 1 thread,
# 18 s at 2 while taking 1.73 cores).
PROFILES: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: synthetic data, tiny widths. For CI and first contact.
    "smoke": {
        "data_dir": "synthetic", "synthetic_train": 1200, "synthetic_test": 300, "val_size": 200,
        "width": 0.125, "teacher": {"width": 0.125, "epochs": 2, "patience": 2},
        "epochs": 2, "patience": 2, "eval_batch_size": 300, "threads": 1,
    },
    # Real CIFAR-10 images on 2 CPU cores. Teacher 4x the student's width, a 10k-image training
    # subset. The students follow the paper's stopping rule (<= 30 epochs, patience 5 on validation
    # loss): capped at 15 they were still improving at epoch 13-15, so the cap, not early
    # stopping, chose their checkpoint. The teacher's recipe is unchanged.
    "cpu": {
        "train_size": 10000, "val_size": 2000, "width": 0.125,
        "teacher": {"width": 0.25, "epochs": 15, "patience": 15},
        "epochs": 30, "patience": 5, "compile": True, "threads": 2,
    },
    # The paper's protocol at full width on a GPU: 45k/5k split, <= 30 epochs, early stopping.
    # The teacher's recipe is kdnb's own (the paper fixes only the students'): batch 256 with the
    # one-cycle peak scaled 0.1 -> 0.2, four times fewer steps than batch 64 on a launch-bound GPU.
    "paper": {
        "val_size": 5000, "width": 1.0, "eval_batch_size": 1000,
        "teacher": {"width": 1.0, "epochs": 30, "patience": 30, "batch_size": 256, "lr": 0.2},
        "epochs": 30, "patience": 5, "fused_cohort": True,
        # On a GPU the host threads only index batches and launch kernels (the run's arithmetic is on
        # the GPU, so the count does not change its numbers): 4 keep a GPU fed and fit the 4+ CPUs per
        # GPU of common nodes (one job per GPU). Fixed all the same, for a paper run on a CPU.
        "threads": 4,
        # A GPU step is launch-bound: one captured graph per step (CUDA only; a capture or replay that
        # fails falls back to the eager step). Checkpoints every 5 epochs: a full-width checkpoint
        # (student, optimiser) costs seconds an epoch on a GPU; the last epoch is always saved.
        # No torch.compile: what it bought on the H200 was mostly launch cost, which the graph removes
        # (compiled, a kernel ran in a median 54 % of nvidia-smi's samples of a teacher epoch: ~4.9 s of
        # 9.1 s), while compiling cost 88 s of the teacher's first epoch, a sixth of a 540 s lease;
        # compile pays only if eager kernels are >= 1.6x slower: docs/benchmark.md has the numbers.
        "cuda_graphs": True, "checkpoint_every": 5, "compile": False,
    },
}


@dataclass
class _Settings:
    """The fixed settings of a run; :class:`RunConfig` adds those the registered components declare."""

    config: str = "baseline"
    profile: str = "smoke"
    # the run's folder under the profile (None: the config's name); ablations name their variants
    name: str | None = None
    seed: int = 0
    # data
    dataset: str = "cifar10"
    data_dir: str | None = None  # None: KDNB_DATA_DIR, else ./data (torchvision download)
    val_size: int = 5000
    train_size: int | None = None  # stratified subset of the training split; None = all of it
    split_seed: int = 0  # the held-out split is shared by every run and seed (and the teacher)
    synthetic_train: int = 5000
    synthetic_test: int = 1000
    # model being trained (the teacher's architecture is read from its own run)
    arch: str = "resnet18"
    width: float = 1.0
    cbam: bool = False
    stem: str = "cifar"
    # optimisation (the paper's student protocol)
    epochs: int = 30
    patience: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "none"
    warmup_frac: float = 0.15
    # objective: the weights w_<term> of the registered loss terms and their own settings are
    # added below (RunConfig); these are shared by several terms
    temperature: float = 4.0
    at_p: float = 2.0
    stages: list[str] = field(default_factory=lambda: ["layer3"])
    # causal masks
    mask_mode: str = "gradcam"  # the mask source: "gradcam" is the causal mask from the teacher's CAM
    cam: str = "gradcam"  # the CAM method the causal masks are built from
    keep: float = 0.5
    cam_type: str = "binary"
    cam_stage: str = "layer3"
    teacher_seed: int = 0
    # engine
    device: str = "auto"
    # intra-op CPU threads (the profile's; part of the run's numbers). None: a config.json saved
    # before the count was recorded (the run had the machine's default; its torch_threads says which)
    threads: int | None = None
    compile: bool = False
    # torch.compile mode for the student and objective: "reduce-overhead" adds CUDA graphs
    compile_mode: str = "default"
    # Save checkpoint.pt every this many epochs (and always after the last epoch or an early stop):
    # a run killed between checkpoints redoes the epochs since the last one, with the same numbers.
    checkpoint_every: int = 1
    # CUDA only: replay each training step (the teacher pass and every student's forward and
    # backward; the optimiser update stays outside) as one captured CUDA graph, so a step costs one
    # launch instead of hundreds. Steps whose masks are drawn on the host (random modes) run eager.
    cuda_graphs: bool = False
    # A cohort's students (one architecture, one schedule) as one fused network: one forward, one
    # backward and one SGD update for all of them (kdnb.engine.fused). The same computation up to
    # rounding (grouped kernels sum in another order), so off where numbers are recorded (smoke, cpu).
    fused_cohort: bool = False
    amp: bool = True  # bf16 autocast on CUDA and on CPUs where it is faster (AMX; see speedups.cpu_bf16_pays)
    eval_batch_size: int = 500
    # Not a setting: make_config sets it when the user's overrides turn compile on (--set
    # compile=true), so a compile that cannot work stops the run instead of falling back to eager.
    compile_forced: ClassVar[bool] = False

    @property
    def is_teacher(self) -> bool:
        return self.config == TEACHER

    @property
    def run_name(self) -> str:
        """Folder of this run under ``<runs_dir>/<profile>/`` (one per seed below it).

        A student of teacher seed k != 0 lives in ``<name>-t<k>``, so runs for a second teacher never
        share a folder with the seed-0 teacher's (whose folders keep their plain names)."""
        base = self.name or self.config
        return base if self.is_teacher else run_folder(base, self.teacher_seed)

    @property
    def weights(self) -> dict[str, float]:
        """``{term: weight}`` of every registered loss term."""
        return {t: getattr(self, f"w_{t}") for t in TERMS}

    @property
    def term_options(self) -> dict[str, float]:
        """The registered terms' own settings (e.g. DKD's ``dkd_beta``) by name."""
        return {k: getattr(self, k) for term in TERMS.items() for k in term[1].settings}

    @property
    def needs_teacher(self) -> bool:
        return not self.is_teacher and any(w > 0 and TERMS[t].needs_teacher for t, w in self.weights.items())

    @property
    def uses_masks(self) -> bool:
        """Some weighted term acts inside the causal masks (FA, AT)."""
        return any(w > 0 and TERMS[t].uses_masks for t, w in self.weights.items())

    @property
    def needs_cam(self) -> bool:
        return MASK_SOURCES[self.mask_mode].uses_cam and self.uses_masks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _component_fields() -> list[tuple[str, str, Any]]:
    """``w_<term>`` for every registered loss term (CE 1, the rest 0: the baseline) and every
    setting the terms declare, as dataclass fields."""
    # types as text, like the annotations of the fixed settings (validation reads them)
    out: list[tuple[str, str, Any]] = [(f"w_{t}", "float", field(default=1.0 if t == "ce" else 0.0)) for t in TERMS]
    for _, term in TERMS.items():
        out += [(k, "float", field(default=float(st.default))) for k, st in term.settings.items()]
    return out


RunConfig = dataclasses.make_dataclass(
    "RunConfig", _component_fields(), bases=(_Settings,),
    namespace={"__doc__": "Every setting of one training run (teacher or student). Serialised to ``config.json``.",
               "__module__": __name__})


def run_folder(name: str, teacher_seed: int = 0) -> str:
    """The folder of the student run ``name`` distilled from teacher seed ``teacher_seed``: ``name``
    itself for seed 0 (the main series), ``<name>-t<k>`` for seed k."""
    return name if teacher_seed == 0 else f"{name}-t{teacher_seed}"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and what is allowed."""


_CHOICES: dict[str, Collection[str]] = {
    "config": CONFIGS,
    "profile": tuple(PROFILES),
    "arch": ARCHS,  # the live registries: a component registered after this import is a choice too
    "dataset": DATASETS,
    "cam": CAM_METHODS,
    "stem": STEMS,
    "schedule": ("none", "onecycle", "cosine"),
    "mask_mode": MASK_SOURCES,
    "cam_type": CAM_TYPES,
    "cam_stage": STAGES,
    "device": ("auto", "cpu", "cuda", "mps"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
}

# The working range of every numeric setting, as interval text: "(" / ")" exclude the bound,
# "[" / "]" include it. Float settings must also be finite (no nan, no inf); integer settings
# must be ints (an int-valued float such as 3.0 is a type error, as before). train_size accepts None
# as well (threads only in a saved config.json: make_config refuses it). This table is the single
# source of the bounds and of the text of the error messages.
RANGES: dict[str, str] = {
    # seeds: torch.Generator.manual_seed takes 64-bit values; keep them non-negative int64
    "seed": "[0, 2**63)",
    "split_seed": "[0, 2**63)",
    "teacher_seed": "[0, 2**63)",
    # data
    "val_size": "[0, 10000000]",
    "train_size": "[10, 10000000]",  # one image per class at least
    "synthetic_train": "[10, 1000000]",  # one image per class at least; held in memory
    "synthetic_test": "[10, 1000000]",
    # model
    "width": "(0, 8]",
    # optimisation
    "epochs": "[1, 10000]",
    "patience": "[1, 10000]",
    "batch_size": "[2, 65536]",  # BatchNorm needs 2 images per batch in training
    "lr": "(0, 10]",
    "momentum": "[0, 1)",
    "weight_decay": "[0, 1)",
    "warmup_frac": "(0, 1)",
    # objective (each registered term's weight and own settings are added below)
    "temperature": "(0, 100]",
    "at_p": "(0, 16]",
    # causal masks
    "keep": "(0, 1]",
    # engine
    "threads": "[1, 1024]",
    "eval_batch_size": "[1, 65536]",
    "checkpoint_every": "[1, 10000]",
}


RANGES.update({f"w_{t}": "[0, 1e6]" for t in TERMS})
RANGES.update({k: st.range for _, term in TERMS.items() for k, st in term.settings.items()})


def _bound(text: str) -> int | float:
    """``"10"`` -> 10, ``"1e6"`` -> 1000000.0, ``"2**63"`` -> 2**63 (exact)."""
    if "**" in text:
        base, exp = text.split("**")
        return int(base) ** int(exp)
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def _parse_range(text: str) -> tuple[int | float, int | float, bool, bool]:
    m = re.fullmatch(r"([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])", text)
    if m is None:
        raise ValueError(f"bad range {text!r}")
    return _bound(m[2]), _bound(m[3]), m[1] == "(", m[4] == ")"


_BOUNDS = {name: _parse_range(text) for name, text in RANGES.items()}


def _in_range(name: str, value: int | float) -> bool:
    lo, hi, lo_open, hi_open = _BOUNDS[name]
    if isinstance(value, float) and not math.isfinite(value):
        return False  # ints (of any size) are finite; comparisons below are exact for them
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    return above and below


def _range_error(name: str, value: Any) -> ConfigError:
    t = _field_types()[name]
    kind = "an integer" if t.startswith("int") else "a finite number"
    none = " or None" if "None" in t else ""
    return ConfigError(f"setting {name}={_show(value)} must be {kind} in {RANGES[name]}{none}")


def _show(value: Any) -> str:
    """``repr(value)``, shortened for hostile sizes (a 5000-digit int has no repr in Python 3.11+)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<int of {value.bit_length()} bits>"
    return text if len(text) <= 40 else text[:30] + "..." + text[-6:]


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(RunConfig)}


def parse_value(key: str, text: str) -> Any:
    """Parse a ``--set key=value`` string into the field's type, or raise ConfigError."""
    types = _field_types()
    if key not in types:
        raise ConfigError(_unknown_setting(key, types))
    t = types[key]
    if t.startswith("int") and key in RANGES and not _parses(int, text) and _parses(float, text):
        raise _range_error(key, text)  # a number (3.5, 1e3, nan, inf) but not an integer: name the range
    try:
        if text.lower() in ("none", "null") and "None" in t:
            return None
        if t.startswith("bool"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t.startswith("int"):
            return int(text)
        if t.startswith("float"):
            # float() also reads "nan", "inf", "-inf", "infinity": validate() then names the range
            return float(text)
        if t.startswith("list"):
            return [s.strip() for s in text.split(",") if s.strip()]
        return text
    except ValueError:
        raise ConfigError(f"setting {key}={text!r}: expected {t}") from None


def _unknown_setting(key: str, types: dict[str, str]) -> str:
    """One line: a ``w_<term>`` for an unregistered term names the registered terms; any other
    unknown key lists the settings."""
    if key.startswith("w_"):
        return (f"unknown setting {key!r}: {key[2:]!r} is not a registered loss term; "
                f"registered: {', '.join(TERMS)} (set w_<term>)")
    return f"unknown setting {key!r}; allowed: {', '.join(sorted(types))}"


def _parses(kind: type, text: str) -> bool:
    """Whether ``kind(text)`` (int or float) reads ``text``."""
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _check_type(name: str, value: Any, t: str) -> None:
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
    }
    base = t.replace(" | None", "")
    if value is None and "None" in t:
        return
    if not ok[base](value):
        raise ConfigError(f"setting {name}={value!r}: expected {t}")


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field; raise ConfigError naming the first bad field and what is allowed."""
    for name, t in _field_types().items():
        value = getattr(cfg, name)
        if name in RANGES and isinstance(value, float) and not math.isfinite(value):
            raise _range_error(name, value)  # nan/inf, also for an integer setting: name the range
        _check_type(name, value, t)
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"setting {name}={getattr(cfg, name)!r} is unknown; allowed: {', '.join(allowed)}")
    for name in RANGES:
        value = getattr(cfg, name)
        if value is not None and not _in_range(name, value):
            raise _range_error(name, value)
    if cfg.cbam and not ARCHS[cfg.arch].cbam:
        raise ConfigError(f"setting cbam=True: {cfg.arch} has no CBAM variant; set cbam=false (or another arch)")
    if width_problem(cfg.width):  # a layer narrower than the stated minimum: refused before any work
        raise ConfigError(f"setting width={_show(cfg.width)} {width_problem(cfg.width)}")
    if cfg.data_dir == "synthetic":  # the synthetic set's size is known here (10 balanced classes)
        if cfg.val_size > cfg.synthetic_train - 10:
            raise ConfigError(f"setting val_size={cfg.val_size!r} must be in [0, {cfg.synthetic_train - 10}] "
                              f"(synthetic_train={cfg.synthetic_train} less one training image per class)")
        if cfg.train_size is not None and cfg.train_size > cfg.synthetic_train - cfg.val_size:
            raise ConfigError(f"setting train_size={cfg.train_size!r} must be in [10, "
                              f"{cfg.synthetic_train - cfg.val_size}] or None (synthetic_train="
                              f"{cfg.synthetic_train} less val_size={cfg.val_size})")
    if not cfg.stages:
        raise ConfigError("setting stages is empty; allowed: a comma list of " + ", ".join(STAGES))
    for s in cfg.stages:
        if s not in STAGES:
            raise ConfigError(f"setting stages: unknown stage {s!r}; allowed: {', '.join(STAGES)}")
    if cfg.name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", cfg.name):
            raise ConfigError(f"setting name={cfg.name!r}: use letters, digits, '_', '-' and '.' only")
        if re.search(r"-t\d+$", cfg.name):
            raise ConfigError(f"setting name={cfg.name!r}: the suffix -t<k> is reserved for runs of teacher seed k "
                              "(set teacher_seed instead)")
        if cfg.name in CONFIGS and cfg.name != cfg.config or cfg.name in ("notebooks", "evaluation"):
            raise ConfigError(f"setting name={cfg.name!r} is taken by another run folder; choose another name")
    distilling = [f"w_{t}" for t in TERMS if TERMS[t].needs_teacher]
    if cfg.is_teacher and any(getattr(cfg, k) for k in distilling):
        raise ConfigError(f"the teacher trains with cross-entropy only: {', '.join(distilling)} must be 0")
    if sum(cfg.weights.values()) == 0:
        raise ConfigError(f"all loss weights are 0: set at least one of {', '.join('w_' + t for t in TERMS)} > 0")
    return cfg


def make_config(
    config: str, profile: str = "smoke", seed: int = 0, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Assemble and validate the RunConfig for ``config`` under ``profile``."""
    if config not in CONFIGS:
        raise ConfigError(f"unknown config {config!r}; allowed: {', '.join(CONFIGS)}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    prof = dict(PROFILES[profile])
    teacher_part = prof.pop("teacher", {})
    values: dict[str, Any] = dict(prof)
    if config == TEACHER:
        values.update({"arch": "resnet50", "cbam": True, **TEACHER_RECIPE, **teacher_part})
    values.update(PRESETS[config])
    values.update({"config": config, "profile": profile, "seed": seed})
    types = _field_types()
    for key, value in (overrides or {}).items():
        if key not in types:
            raise ConfigError(_unknown_setting(key, types))
        values[key] = parse_value(key, value) if isinstance(value, str) else value
    cfg = validate(RunConfig(**values))
    if cfg.threads is None:
        raise ConfigError(f"setting threads=None must be an integer in {RANGES['threads']}: the thread count is part "
                          f"of a run's numbers (profile {profile}: {PROFILES[profile]['threads']})")
    if cfg.compile and "compile" in (overrides or {}):
        cfg.compile_forced = True
    if not cfg.needs_teacher:  # a run without a teacher has no teacher seed: one baseline serves every teacher
        cfg.teacher_seed = 0
    return cfg


# Settings that change how fast a run goes, not what it computes: they may differ on resume.
# (Not ``threads``: on the CPU the thread count changes a run's sums, so it is part of the run.)
# ``fused_cohort`` is one of them, like ``compile``: it changes the order of a step's sums (grouped
# kernels), not its formula, inputs or random draws, so a run's numbers move only by rounding (the
# test measures it); a run may resume fused that began unfused, alone (a cohort of one is never
# fused) or in another cohort, and it is the same run: not part of its identity.
ENGINE_FIELDS: tuple[str, ...] = ("device", "compile", "compile_mode", "cuda_graphs", "fused_cohort",
                                  "eval_batch_size", "data_dir")
# Settings a run records only since they fix its numbers: a config.json that says null is an older
# run, with whatever the machine gave it (``torch_threads`` records it); it resumes with any value.
UNRECORDED: tuple[str, ...] = ("threads",)
# How often a run saves its checkpoint is an engine setting too: it never changes what a run computes.
ENGINE_FIELDS += ("checkpoint_every",)
# The training recipe: a pipeline may shorten it for every run at once (``parameters={"epochs": 1}``);
# tables state it in their provenance block, read from each run's config.json.
RECIPE_FIELDS: tuple[str, ...] = ("epochs", "patience", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                                  "schedule", "warmup_frac")
# What a run *is* is every other setting but where it lives (``name``, ``seed`` are its folder), the
# numeric engine (``amp``, ``threads``) and the recipe (both in the provenance): objective, masks,
# networks, data, profile. Tables and figures compare these with what they claim a run to be. The
# numeric engine and the recipe still fix a run's numbers: a run resumes only with the values it
# recorded (train refuses others), and the tables state them (``--set threads=1`` for a whole
# series reaches 07–09, which take no overrides, as a shortened recipe does).
NOT_IDENTITY: tuple[str, ...] = ("name", "seed", "amp", "threads", *ENGINE_FIELDS, *RECIPE_FIELDS)


def identity_diff(saved: dict[str, Any], expected: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved, expected)}`` for every identity setting in which a saved ``config.json``
    differs from ``expected`` (settings added since the run was saved count with their default)."""
    have = config_from_dict(saved).to_dict()
    want = expected.to_dict()
    return {k: (have[k], want[k]) for k in want if k not in NOT_IDENTITY and have.get(k) != want[k]}


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from a saved ``config.json`` (unknown keys are ignored)."""
    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: v for k, v in d.items() if k in names})
