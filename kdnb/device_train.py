"""One process that trains a seed of the series on a time-limited machine and packs what comes back.

A lent GPU gives a fixed time (start-up included) and returns a few small files; a notebook
pipeline spends that time on kernels, papermill and figures. ``python -m kdnb device-train OUT``
does only what the table needs, in one Python process: unpack the data, train the teacher, train
the students as one cohort, evaluate them, and write a bundle of at most :data:`MAX_FILES` small
files into ``OUT``. Each phase is timed; a failing phase is recorded (one line, and its traceback in
the log) and the phases that need it are skipped; when time runs out, runs stop after a whole epoch
(checkpointed) and are evaluated from their best-so-far weights, marked *partial*. The bundle is
written in every case. CUDA tests and benchmarks are a separate command (``tools/device_check.sh``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .engine.config import STUDENT_CONFIGS, TEACHER, RunConfig, make_config
from .engine.data import SYNTHETIC, Dataset, load_dataset, resolve_data_dir
from .engine.runs import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, read_json, run_path, write_json, write_text
from .engine.train import evaluate, resolve_device, train, train_cohort

MAX_FILES = 8  # what a device call brings back
BUNDLE = ("summary.json", "results.md", "histories.json", "curves.png", "device_train.log")


@dataclass
class Phase:
    """One phase of the command: ``status`` is done, failed, skipped or "time ran out"."""

    name: str
    status: str = "skipped"
    seconds: float = 0.0
    note: str = ""


class _Tee(io.TextIOBase):
    """Write to the terminal and to the log at once (the log comes back; the terminal may not)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)


def unpack(data: str | Path, work: Path) -> Path:
    """The image folder in ``data``: an archive (``.tar.xz``/``.tar.gz``/``.tar``) is unpacked into
    ``work/data`` once (a marker file says it is complete); a folder is used as it is."""
    data = Path(data)
    if not data.is_file():  # a folder, or nothing there: the data loader names what it expects
        return data
    if not tarfile.is_tarfile(data):
        raise ValueError(f"{data}: neither a folder nor a tar archive of one")
    target = work / "data"
    done = target / ".unpacked"
    if not done.is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(data) as tar:
            tar.extractall(target, filter="data")
        done.write_text(str(data))
    tops = [p for p in target.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 and not (target / "train").is_dir() else target


def run_device_training(out: str | Path, *, profile: str = "paper", seed: int = 0, budget: float = 540.0,
                        data: str | Path | None = None, work: str | Path | None = None,
                        overrides: dict[str, Any] | None = None, configs: Sequence[str] = STUDENT_CONFIGS,
                        reserve: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train teacher and students of ``seed`` within ``budget`` seconds and write the bundle to ``out``.

    ``reserve`` (default 10 % of the budget, at most 60 s) is kept for evaluating unfinished runs and
    writing the bundle. Returns the summary (also ``out/summary.json``)."""
    t0 = time.monotonic()
    deadline = t0 + budget - (min(60.0, budget / 10) if reserve is None else reserve)
    out = Path(out)
    _keep_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work is not None else out.parent / f"{out.name}-work"
    runs = work / "runs"
    overrides = dict(overrides or {})
    phases = {n: Phase(n) for n in ("data", "teacher", "students", "evaluate", "bundle")}
    state: dict[str, Any] = {}
    with open(out / "device_train.log", "w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        print(f"kdnb device-train: profile {profile}, seed {seed}, budget {budget:.0f} s, runs in {runs}")

        def load() -> str:
            source = resolve_data_dir(data if data is not None else make_config(configs[0], profile, seed,
                                                                                 overrides).data_dir)
            folder = source if source == SYNTHETIC else str(unpack(source, work))
            overrides["data_dir"] = folder
            cfg = make_config(configs[0], profile, seed, overrides)
            state["data"] = load_dataset(cfg.data_dir, synthetic_train=cfg.synthetic_train,
                                         synthetic_test=cfg.synthetic_test, dataset=cfg.dataset)
            state["students"] = [make_config(c, profile, seed, overrides) for c in configs]
            ds: Dataset = state["data"]
            return f"{folder}: {len(ds.train_y)} training and {len(ds.test_y)} test images"

        def teacher() -> str:
            tcfg = make_config(TEACHER, profile, state["students"][0].teacher_seed, overrides)
            state["teacher"] = tcfg
            result = train(tcfg, runs, data=state["data"], progress=progress, deadline=deadline)
            if not result.metrics.get("finished"):
                raise TimeoutError(f"the teacher stopped after epoch {result.metrics['epochs_run']} of at most "
                                   f"{tcfg.epochs}; the students need it finished")
            return f"test acc {result.metrics['test_acc']:.4f} after {result.metrics['epochs_run']} epochs"

        def students() -> str:
            results = train_cohort(state["students"], runs, data=state["data"], progress=progress, deadline=deadline)
            unfinished = [r.config.run_name for r in results if not r.metrics.get("finished")]
            if unfinished:
                raise TimeoutError(f"{', '.join(unfinished)} did not finish (checkpointed; rerun to resume)")
            return f"{len(results)} runs finished"

        def evaluate() -> str:
            state["rows"] = _rows(runs, [c for c in [state.get("teacher"), *state.get("students", [])] if c],
                                  state.get("data"))
            return f"{len(state['rows'])} runs evaluated"

        _phase(phases["data"], load)
        _phase(phases["teacher"], teacher, needs=phases["data"])
        _phase(phases["students"], students, needs=phases["teacher"])
        _phase(phases["evaluate"], evaluate, needs=phases["data"])
        rows = state.get("rows", [])
        summary = {
            "profile": profile, "seed": seed, "budget_seconds": budget, "runs_dir": str(runs),
            "complete": all(p.status == "done" for n, p in phases.items() if n != "bundle"),
            "phases": [asdict(p) for p in phases.values()], "runs": rows,
            "device": _device_line(state.get("students")),
        }
        _phase(phases["bundle"], lambda: _write_bundle(out, runs, summary, state.get("students", []), rows))
        summary["phases"] = [asdict(p) for p in phases.values()]
        summary["seconds"] = round(time.monotonic() - t0, 1)
        print(f"kdnb device-train: {'complete' if summary['complete'] else 'PARTIAL'} in {summary['seconds']} s; "
              + "; ".join(f"{p.name} {p.status} {p.seconds:.0f} s" for p in phases.values()))
    write_json(out / "summary.json", summary)
    return summary


def _keep_previous(out: Path) -> None:
    """A bundle already in ``out`` (an earlier call, say one that ran out of time) moves beside it,
    never overwritten: ``OUT.previous-<time>``."""
    if out.is_dir() and any((out / f).exists() for f in BUNDLE):
        stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
        aside = out.with_name(f"{out.name}.previous-{stamp}")
        while aside.exists():
            aside, n = out.with_name(f"{out.name}.previous-{stamp}-{n}"), n + 1
        out.rename(aside)
        print(f"kdnb device-train: kept the previous bundle as {aside}")


def _phase(phase: Phase, body: Callable[[], str], needs: Phase | None = None) -> None:
    """Run one phase, timing it; a failure becomes its status and note (and the traceback, logged)."""
    if needs is not None and needs.status != "done":
        phase.note = f"not run: {needs.name} {needs.status}"
        print(f"kdnb device-train: {phase.name}: {phase.note}")
        return
    t = time.monotonic()
    try:
        phase.note = body() or ""
        phase.status = "done"
    except TimeoutError as exc:
        phase.status, phase.note = "time ran out", str(exc)
    except Exception as exc:  # recorded, never fatal: the bundle must still form
        phase.status, phase.note = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc(file=sys.stdout)
    phase.seconds = round(time.monotonic() - t, 1)
    print(f"kdnb device-train: {phase.name} {phase.status} in {phase.seconds:.1f} s: {phase.note}")


def _rows(runs: Path, cfgs: list[RunConfig], data: Dataset | None) -> list[dict[str, Any]]:
    """Each run's test accuracy: from metrics.json when it finished, else from the best-so-far
    weights of its checkpoint (``partial``), else nothing (``not started``)."""
    rows = []
    for cfg in cfgs:
        d = run_path(runs, cfg.profile, cfg.run_name, cfg.seed)
        row: dict[str, Any] = {"config": cfg.config, "run_name": cfg.run_name, "seed": cfg.seed, "status": "not started"}
        if (d / METRICS_FILE).is_file():
            m = read_json(d / METRICS_FILE)
            row.update(status="finished", test_acc=m["test_acc"], val_acc=m["val_acc"], best_epoch=m["best_epoch"],
                       epochs_run=m["epochs_run"], stopped_early=m["stopped_early"],
                       train_seconds=m["train_seconds"], own_train_seconds=m.get("own_train_seconds"))
        elif (d / "checkpoint.pt").is_file() and data is not None:
            row.update(status="partial", **_evaluate_partial(d, cfg, data))
        rows.append(row)
    return rows


def _evaluate_partial(run_dir: Path, cfg: RunConfig, data: Dataset) -> dict[str, Any]:
    """Test accuracy of an unfinished run's best-so-far weights (as a finished run is evaluated)."""
    from .engine.runs import load_checkpoint
    from .engine.step import build_student

    ck = load_checkpoint(run_dir / "checkpoint.pt", "rerun device-train to resume it", required=("state",))
    st = ck["state"]
    device = resolve_device(cfg.device)
    model = build_student(cfg, data.num_classes)
    model.load_state_dict(st["best"]["model"])
    _, acc = evaluate(model.to(device).eval(), data.test_x.to(device), data.test_y.to(device), cfg.eval_batch_size,
                      amp=False, normalize=data.normalize)
    return {"test_acc": acc, "best_epoch": st["best_epoch"], "epochs_run": st["epoch"],
            "val_acc": st["history"][st["best_epoch"] - 1]["val_acc"]}


def _device_line(cfgs: list[RunConfig] | None) -> str:
    from .engine.speedups import device_name

    try:
        return device_name(resolve_device(cfgs[0].device if cfgs else "auto"))
    except Exception as exc:  # the bundle names what it can
        return f"unknown ({type(exc).__name__})"


def _write_bundle(out: Path, runs: Path, summary: dict[str, Any], students: list[RunConfig],
                  rows: list[dict[str, Any]]) -> str:
    """results.md, histories.json and curves.png beside the log (summary.json is written last)."""
    from .report.series import LABELS, PAPER_ACCURACY, PAPER_TEACHER_ACCURACY

    lines = [f"# {summary['profile']} profile, seed {summary['seed']}: "
             f"{'complete' if summary['complete'] else 'PARTIAL: see the status column and summary.json'}", "",
             "| configuration | status | epochs | best epoch | test acc (%) | paper (%) |", "|---|---|---|---|---|---|"]
    for r in rows:
        paper = PAPER_TEACHER_ACCURACY if r["config"] == TEACHER else PAPER_ACCURACY.get(r["config"])
        acc = f"{100 * r['test_acc']:.2f}" if "test_acc" in r else "–"
        lines.append(f"| {LABELS[r['run_name']]} | {r['status']} | {r.get('epochs_run', '–')} | "
                     f"{r.get('best_epoch', '–')} | {acc} | {paper if paper is not None else '–'} |")
    lines += ["", "One seed; the paper's numbers are its reported best test accuracies (one run each). "
              "partial: the run stopped when time ran out and is evaluated from its best-so-far weights.", "",
              "| phase | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['status']} | {p['seconds']} | {p['note']} |" for p in summary["phases"]
              if p["name"] != "bundle"]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    histories = {}
    for r in rows:
        d = run_path(runs, summary["profile"], r["run_name"], r["seed"])
        if (d / HISTORY_FILE).is_file():
            histories[r["run_name"]] = {"history": read_json(d / HISTORY_FILE),
                                        "config": read_json(d / CONFIG_FILE) if (d / CONFIG_FILE).is_file() else None}
    write_text(out / "histories.json", json.dumps(histories, indent=1, default=_jsonable))
    if histories:
        _curves(histories, out / "curves.png")
    return f"{len(list(out.iterdir()))} files in {out}"


def _jsonable(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def _curves(histories: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from .report.plots import learning_curves_by_config
    from .report.series import LABELS

    frame = pd.DataFrame([{**h, "label": LABELS[name]} for name, v in histories.items() for h in v["history"]])
    fig = learning_curves_by_config(frame)
    fig.savefig(path, dpi=90)
