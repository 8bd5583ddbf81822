"""Small helpers the notebooks call: turning the ``parameters`` cell into absolute paths and run
configurations, loading data, saving figures.

The parameters cell of every notebook holds literal defaults only (papermill injects new values
after it, so anything computed there would go stale). :func:`context` derives everything else:

- relative paths are taken relative to the kernel's working directory, which is ``notebooks/``
  when a notebook is opened in JupyterLab or run by ``python -m kdnb pipeline`` (papermill users:
  pass ``--cwd notebooks``);
- ``data_dir=None`` means the profile's own source (``synthetic`` for smoke), else
  ``$KDNB_DATA_DIR``, else ``../data`` (CIFAR-10 is downloaded there on first use);
- ``figures_dir=None`` means ``<runs_dir>/<profile>/figures``, next to the runs the figures come
  from, for every profile: a user's run never overwrites the committed reference tables and
  figures in ``../figures`` (the README and docs/results.md quote them). Refreshing those is an explicit step:
  ``figures_dir="../figures"`` (``python -m kdnb pipeline --figures-dir figures``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.compile_cache import cache_for_runs, use_compile_cache
from ..engine.config import PRESETS, PROFILES, ConfigError, RunConfig, make_config, parse_value
from ..engine.data import download_cifar10 as _download
from ..engine.data import load_dataset, stratified_split
from ..engine.runs import atomic_write, write_text
from ..method.masks import causal_mask
from ..method.models import build_model, count_parameters
from ..method.objective import TERMS, Objective
from .lookup import MissingInput as MissingInput  # re-exported for the notebooks
from .lookup import require_run as require_run
from .series import LABELS

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_DATA_DIR = "../data"
CIFAR10_TRAIN = 50000

# Evaluation sizes per profile used by 07/08 when their parameter is None: smoke must take
# seconds in CI, cpu minutes on 2 cores, paper the whole test set on a GPU. ``latency_batch``: the
# large batch of 08's latency study (beside batch 1); smoke's 32 keeps it to seconds (256 took 27 s).
EVAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {"eval_images": None, "robustness_images": 50, "latency_repeats": 5, "latency_batch": 32},
    "cpu": {"eval_images": None, "robustness_images": 2000, "latency_repeats": 20, "latency_batch": 256},
    "paper": {"eval_images": None, "robustness_images": None, "latency_repeats": 50, "latency_batch": 256},
}


def figures_dir_for(profile: str, runs_dir: str | os.PathLike, figures_dir: str | os.PathLike | None,
                    base: str | os.PathLike | None = None) -> Path:
    """Where a notebook saves its tables and figures: ``figures_dir`` if given, else
    ``<runs_dir>/<profile>/figures`` (never the committed ``figures/``; see the module docstring)."""
    base = Path(base) if base is not None else Path.cwd()
    if figures_dir is not None:
        return (base / Path(figures_dir).expanduser()).resolve()
    return (base / Path(runs_dir).expanduser()).resolve() / profile / "figures"


def data_dir_for(profile: str, data_dir: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str | None:
    """The data source to put into the run settings (``None`` = the profile's own source)."""
    base = Path(base) if base is not None else Path.cwd()
    if data_dir is None:
        if "data_dir" in PROFILES.get(profile, {}):
            return None
        if os.environ.get("KDNB_DATA_DIR"):
            return os.environ["KDNB_DATA_DIR"]
        return str((base / DEFAULT_DATA_DIR).resolve())
    data_dir = str(data_dir)
    if data_dir == "synthetic":
        return data_dir
    return str((base / Path(data_dir).expanduser()).resolve())


@dataclass
class Context:
    """Everything a notebook derives from its parameters."""
    profile: str
    runs_dir: Path
    figures_dir: Path
    data_dir: str | None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    download_to: str | None = None  # the default ../data directory, filled by a download if empty

    def config(self, config: str, seed: int | None = None) -> RunConfig:
        """The validated run settings of ``config`` under this profile with the notebook's overrides."""
        return make_config(config, self.profile, self.seed if seed is None else seed, self.overrides)

    def require(self, config: str, seed: int | None = None) -> Path:
        """The finished run's directory, or :class:`MissingInput` naming the notebook to run first."""
        seed = self.seed if seed is None else seed
        return require_run(self.runs_dir, self.profile, config, seed, expected=self.config(config, seed))

    def require_inputs(self, cfg: RunConfig) -> None:
        """Check that what ``cfg`` needs from earlier notebooks (the teacher) is on disk."""
        if cfg.needs_teacher:
            require_run(self.runs_dir, self.profile, "teacher", cfg.teacher_seed)

    def load_data(self, cfg: RunConfig | None = None):
        """The dataset the profile's runs use (``kdnb.engine.data.Dataset``)."""

        cfg = cfg or self.config("baseline")
        if self.download_to is not None and cfg.data_dir == self.download_to:
            download_cifar10(self.download_to)
        return load_dataset(cfg.data_dir, synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test,
                            dataset=cfg.dataset)

    def eval_default(self, name: str, value: Any) -> Any:
        """``value`` if given, else this profile's default for evaluation setting ``name``."""
        return value if value is not None else EVAL_DEFAULTS.get(self.profile, EVAL_DEFAULTS["cpu"])[name]

    def read_bench(self, path: str | os.PathLike | None) -> dict[str, Any] | None:
        """A ``python -m kdnb bench --json`` report (relative to the notebook), or None without one."""
        if path is None:
            return None
        full = (Path.cwd() / Path(path).expanduser()).resolve()
        if not full.is_file():
            raise MissingInput(f"bench_json={str(path)!r}: no such file ({full}); write one with "
                               f"`python -m kdnb bench --profile {self.profile} --json {path}`, or pass None")
        return json.loads(full.read_text())

    @property
    def results_dir(self) -> Path:
        """``<runs_dir>/<profile>/evaluation``: CSV tables of 07 and 08."""
        d = self.runs_dir / self.profile / "evaluation"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save(self, fig, name: str) -> None:
        """Save a matplotlib figure as ``<figures_dir>/<name>.png`` (the figure still shows inline)."""

        path = self.figures_dir / f"{name}.png"
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
        print(f"saved {path}")

    def save_csv(self, table, name: str, index: bool = True) -> Path:
        """Save a DataFrame as ``<runs_dir>/<profile>/evaluation/<name>.csv`` (atomically: a later
        notebook never reads a half-written table), for the notebooks after this one."""

        path = self.results_dir / f"{name}.csv"
        write_text(path, table.to_csv(index=index))
        return path

    def describe(self) -> str:
        lines = [f"profile      {self.profile}", f"runs_dir     {self.runs_dir}",
                 f"figures_dir  {self.figures_dir}",
                 f"data         {self.data_dir or PROFILES[self.profile].get('data_dir') or 'KDNB_DATA_DIR'}"]
        if self.overrides:
            lines.append(f"overrides    {self.overrides}")
        return "\n".join(lines)


def context(
    profile: str,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    runs_dir: str | os.PathLike = "../runs",
    figures_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: str | os.PathLike | None = None,
) -> Context:
    """Build the :class:`Context` from a notebook's parameters (validated: a bad profile or
    setting fails here with one line)."""
    if profile not in PROFILES:

        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    base_path = Path(base) if base is not None else Path.cwd()
    extra = dict(overrides or {})
    data = data_dir_for(profile, data_dir, base_path)
    if data is not None:
        extra["data_dir"] = data
    if epochs is not None:
        extra["epochs"] = _int_parameter("epochs", epochs)
    if device is not None:
        extra["device"] = device
    ctx = Context(
        profile=profile,
        runs_dir=(base_path / Path(runs_dir).expanduser()).resolve(),
        figures_dir=figures_dir_for(profile, runs_dir, figures_dir, base_path),
        data_dir=data,
        seed=_int_parameter("seed", seed),
        overrides=extra,
        download_to=data if data_dir is None and data == str((base_path / DEFAULT_DATA_DIR).resolve()) else None,
    )
    ctx.config("baseline")  # validate the overrides now, before any long work
    share_compile_cache(ctx.runs_dir)
    return ctx


def _int_parameter(name: str, value: Any) -> Any:
    """A notebook's integer parameter as the setting: ints and whole floats (3.0) as int, text as
    ``--set`` reads it; anything else (2.5, nan, inf) is left for ``validate`` to name the range."""
    if isinstance(value, str):
        return parse_value(name, value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def share_compile_cache(runs_dir: str | os.PathLike) -> Path:
    """Point torch.compile's on-disk cache at ``<runs_dir>/compile-cache`` (unless the user chose one).

    Every notebook runs in a fresh kernel; with one cache beside the runs, the second kernel of a
    series (and a JupyterLab kernel opened on the same runs) reuses the first one's compiled
    kernels instead of compiling again. Must run before the first compilation of the process.
    (:mod:`kdnb.engine.compile_cache` recovers from a damaged one.)
    """
    return use_compile_cache(cache_for_runs(runs_dir))


def download_cifar10(path: str | os.PathLike) -> None:
    """Download CIFAR-10 (torchvision) into ``path`` unless a copy (or an image folder) is there."""
    if not (Path(path) / "train").is_dir():
        _download(path)


def presets_table():
    """Loss weights of every configuration (the same under every profile)."""
    import pandas as pd

    return pd.DataFrame(PRESETS).T.rename(index=LABELS).rename_axis("configuration")


def profiles_table():
    """The profiles side by side: data, split sizes, widths and epochs, as :func:`make_config` builds
    the runs (student: KD; teacher: its own settings)."""
    import pandas as pd

    rows = {}
    for name in PROFILES:
        s, t = make_config("kd", name, 0), make_config("teacher", name, 0)
        pool = (s.synthetic_train if s.data_dir == "synthetic" else CIFAR10_TRAIN) - s.val_size
        rows[name] = {
            "data": "synthetic" if s.data_dir == "synthetic" else "CIFAR-10",
            "train images": s.train_size or pool,
            "validation images": s.val_size,
            "student width": s.width,
            "teacher width": t.width,
            "student epochs (max)": s.epochs,
            "teacher epochs": t.epochs,
            "patience": s.patience,
        }
    return pd.DataFrame(rows).T.rename_axis("profile").astype(str)


# Full-width parameter counts (CIFAR stem, 10 classes): ResNet-18 is the usual CIFAR number, the
# ResNet-50 pair comes from the CBAM reference implementation (Jongchan/attention-module).
REFERENCE_PARAMS = {("resnet18", False): 11_173_962, ("resnet50", False): 23_520_842, ("resnet50", True): 26_053_434}


def architecture_table():
    """Parameters of the student and teacher architectures at full width (width 1.0, CIFAR stem)
    next to the reference counts; the profiles then scale every width (see the run settings)."""
    import pandas as pd

    rows = []
    for (arch, cbam), ref in REFERENCE_PARAMS.items():
        name = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[arch] + (" + CBAM" if cbam else "")
        role = {("resnet18", False): "student", ("resnet50", True): "teacher"}.get((arch, cbam), "")
        n = count_parameters(build_model(arch, cbam=cbam))
        rows.append({"architecture": name, "role": role, "parameters": f"{n:,}", "reference": f"{ref:,}",
                     "matches": n == ref})
    return pd.DataFrame(rows).set_index("architecture")


def objective_example(config: str) -> "pd.DataFrame":
    """Every term of ``config``'s objective on a fixed random batch (seed 0; 4 images, student
    features 16×8×8, teacher 32×8×8, a binary causal mask keeping half of each random cam).

    Deterministic, so the notebooks pin these numbers: a change to a loss changes them."""
    import pandas as pd
    import torch

    w = PRESETS[config]
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3])
    s_logits, t_logits = torch.randn(4, 10, generator=g), 2 * torch.randn(4, 10, generator=g)
    s_feat, t_feat = torch.randn(4, 16, 8, 8, generator=g), torch.randn(4, 32, 8, 8, generator=g)
    mask = causal_mask(torch.rand(4, 8, 8, generator=g), keep=0.5)
    torch.manual_seed(0)  # the FA connector's initialisation
    obj = Objective({t: w[f"w_{t}"] for t in TERMS}, temperature=4.0, stages=["layer3"],
                    student_channels={"layer3": 16}, teacher_channels={"layer3": 32})
    with torch.no_grad():
        total, terms = obj(s_logits, {"layer3": s_feat}, labels, t_logits, {"layer3": t_feat}, {"layer3": mask})
    def sig(v: float) -> float:  # 5 significant digits: stable across CPUs
        return float(f"{v:.5g}")

    rows = [{"term": t.upper(), "weight": w[f"w_{t}"], "value": sig(terms[t].item()),
             "weighted": sig(w[f"w_{t}"] * terms[t].item())} for t in TERMS if t in terms and w[f"w_{t}"] > 0]
    rows.append({"term": "total", "weight": None, "value": None, "weighted": sig(total.item())})
    return pd.DataFrame(rows).set_index("term").astype(object).fillna("")


def split_table(data, cfg: RunConfig):
    """Images per class in the training subset, the held-out validation split and the test set
    (the split every run of the profile shares: ``val_size``, ``train_size``, ``split_seed``)."""
    import pandas as pd
    import torch

    train_idx, val_idx = stratified_split(data.train_y, cfg.val_size, cfg.train_size, cfg.split_seed)
    k = data.num_classes
    table = pd.DataFrame({
        "train": torch.bincount(data.train_y[train_idx], minlength=k).tolist(),
        "validation": torch.bincount(data.train_y[val_idx], minlength=k).tolist(),
        "test": torch.bincount(data.test_y, minlength=k).tolist(),
    }, index=pd.Index(list(data.classes), name="class"))
    table.loc["total"] = table.sum()
    return table
