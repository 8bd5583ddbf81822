"""A finished run's network as one deployable file: ONNX (onnxruntime, any ONNX runtime) or TorchScript.

The file holds the trained network alone (no feature-alignment connectors, no teacher) in eval
mode, with kdnb's input normalisation folded in, so a deployment feeds it what a camera or an
image decoder gives: float32 RGB images in [0, 1], shape (N, 3, 32, 32), any batch size N. It
returns logits (N, classes), in the order of the dataset's classes (recorded in the file where
the run's data source tells them). docs/deploy.md shows how to load either file.

Everything that can be checked is checked before any work: the folder must hold a finished run,
the format's packages must be installed, and an existing file is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .config import config_from_dict
from .data import DEFAULT_DATASET
from .datasets import DATASETS
from .errors import OneLine, TrainingError
from .runs import BEST_FILE, CONFIG_FILE, METRICS_FILE, atomic_write, read_json
from .train import load_trained, train_command

# format -> default file name beside the run
FORMATS: dict[str, str] = {"onnx": "student.onnx", "torchscript": "student.torchscript.pt"}
# what each format needs beyond kdnb's own dependencies (the `export` extra installs them)
NEEDS: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript"), "torchscript": ()}
# ONNX opset of the exported graph: onnxruntime >= 1.14 runs it
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
IMAGE_SHAPE = (3, 32, 32)
TOLERANCE = 1e-4  # max |logit difference| allowed between an exported file and the trained network


class ExportError(OneLine, TrainingError):
    """An export that cannot start (no finished run, a missing package, a file in the way); the
    message names the problem and the fix, in one line."""


class Deployable(nn.Module):
    """``net`` behind kdnb's normalisation: takes float images in [0, 1] (what decoders give), so
    no deployment has to know kdnb's mean and std, and none can apply them twice or forget them."""

    def __init__(self, net: nn.Module, dataset: str = DEFAULT_DATASET) -> None:
        super().__init__()
        self.net = net
        spec = DATASETS[dataset]  # the mean and std the run trained with
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def finished_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved settings (config.json) of the finished run in ``run_dir``, or an :class:`ExportError`
    saying what the folder lacks and how to get a finished run there."""
    run_dir = Path(run_dir)
    example = "runs/<profile>/<config>/seed<k>, e.g. runs/cpu/kd_fa_at/seed0"
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a folder: give the folder of a finished run ({example})")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ExportError(f"{run_dir} is not a kdnb run folder (no {CONFIG_FILE}): give the folder of a finished "
                          f"run ({example})")
    try:
        saved = read_json(run_dir / CONFIG_FILE)
        cfg = config_from_dict(saved)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ExportError(f"{run_dir / CONFIG_FILE} cannot be read as a kdnb run's settings "
                          f"({type(exc).__name__}): give the folder of a finished run ({example})") from None
    missing = [f for f in (METRICS_FILE, BEST_FILE) if not (run_dir / f).is_file()]
    if missing:
        runs_dir = run_dir.parents[2] if len(run_dir.parents) > 2 else Path("runs")
        raise ExportError(f"{run_dir} holds no finished run (no {' or '.join(missing)}): finish it with "
                          f"`{train_command(cfg, runs_dir)}`, then export again")
    return saved


def default_out(run_dir: str | os.PathLike, fmt: str) -> Path:
    """Where :func:`export_run` writes by default: beside the run's own files."""
    return Path(run_dir) / FORMATS[fmt]


def class_names(saved: dict[str, Any], num_classes: int) -> list[str] | None:
    """The names of the logits' classes, in order, as far as the run's data source (config.json)
    tells them: CIFAR-10's, the synthetic set's, or an image folder's (its class folders, sorted,
    when the folder is still there); None when they cannot be known."""
    source = str(saved.get("data_source") or "")
    names: list[str] | None = None
    spec = DATASETS[saved.get("dataset") or DEFAULT_DATASET]
    if source.startswith(f"canonical {spec.label} "):
        names = list(spec.classes)
    elif source.startswith("synthetic"):
        names = [f"class{c}" for c in range(num_classes)]
    elif (m := re.match(r"^image folder (.+) \(\d+ train / \d+ test\)$", source)) and Path(m.group(1), "train").is_dir():
        names = sorted(p.name for p in Path(m.group(1), "train").iterdir() if p.is_dir())
    return names if names is not None and len(names) == num_classes else None


def _check_packages(fmt: str) -> None:
    missing = [p for p in NEEDS[fmt] if find_spec(p) is None]
    if missing:
        raise ExportError(f"the {fmt} export needs {' and '.join(missing)}, not installed here: "
                          "pip install -e '.[export]' (or pip install -r requirements.txt)")


def _metadata(saved: dict[str, Any], run_dir: Path, classes: list[str] | None) -> dict[str, Any]:
    """What the file records about itself (ONNX metadata_props, as strings; TorchScript's kdnb.json)."""
    spec = DATASETS[saved.get("dataset") or DEFAULT_DATASET]
    return {"producer": f"kdnb {__version__}", "run": str(run_dir), "config": str(saved.get("config")),
            "profile": str(saved.get("profile")), "seed": str(saved.get("seed")), "arch": str(saved.get("arch")),
            "input": f"{INPUT_NAME}: float32 RGB in [0, 1], shape (N, 3, 32, 32); normalisation "
                     f"(mean {spec.mean}, std {spec.std}) is inside the graph",
            "output": f"{OUTPUT_NAME}: float32 (N, classes), unnormalised scores; softmax gives probabilities",
            "classes": classes}


def _onnx_bytes(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """The ONNX model of ``model`` with a dynamic batch axis, exported by torch's maintained
    (torch.export-based) exporter; its progress lines and deprecation chatter are kept quiet."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.doc_string = meta["input"] + "; " + meta["output"]
    return proto.SerializeToString()


def _torchscript_bytes(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """The traced TorchScript module of ``model`` (tracing keeps the batch size free for a network
    without data-dependent control flow, as kdnb's are); ``kdnb.json`` inside holds ``meta``."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the TorchScript format
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        # the check that matters: another batch size gives the eager network's logits
        other = torch.rand(3, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            delta = (traced(other) - model(other)).abs().max().item()
        if not delta <= TOLERANCE:
            raise ExportError(f"the traced network differs from the trained one (max |delta| {delta:.3g} on a batch "
                              "of 3): export --format onnx instead")
        torch.jit.save(traced, buf, _extra_files={"kdnb.json": json.dumps(meta)})
    return buf.getvalue()


def export_run(run_dir: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
               force: bool = False) -> Path:
    """Write the network of the finished run in ``run_dir`` as a deployable ``fmt`` file (``out``,
    default beside the run); the path written. An existing file is replaced only with ``force``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    saved = finished_run(run_dir)
    path = Path(out) if out is not None else default_out(run_dir, fmt)
    if path.is_dir():
        raise ExportError(f"{path} is a folder: give --out a file name, e.g. {path / FORMATS[fmt]}")
    if path.exists() and not force:
        raise ExportError(f"{path} already exists: pass --force to replace it, or --out another file")
    _check_packages(fmt)
    net = load_trained(run_dir)  # a damaged best.pt: one line naming the command that retrains the run
    model = Deployable(net, saved.get("dataset") or DEFAULT_DATASET).eval().requires_grad_(False)
    classes = class_names(saved, net.fc.out_features)
    meta = _metadata(saved, run_dir, classes)
    example = torch.rand(2, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    blob = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(model, example, meta)
    atomic_write(path, lambda f: f.write(blob))
    return path
