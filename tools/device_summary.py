#!/usr/bin/env python3
"""Summarise one GPU device check (``tools/device_check.sh``) as ``summary.json``.

Reads whatever the check left behind, all of it optional so that a run cut off at any point
still gives a summary:

- the runs folder ``<runs>/<profile>/<config>/seed<k>/`` (``config.json`` with provenance,
  ``history.json`` with one record per finished epoch, ``metrics.json`` once the run finished);
- the pipeline log (``python -m kdnb pipeline`` output): wall seconds per notebook, and the
  notebook that was running when the step ended (deadline or failure);
- the benchmark JSON (``python -m kdnb bench --json``): ms/step and images/s per variant, ratios;
- an environment JSON written by the check (GPU name, versions), a GPU monitor CSV
  (``nvidia-smi --query-gpu=... --format=csv,noheader,nounits -l N``);
- the steps' exit codes and seconds (``--step NAME=RC[:SECONDS]``; RC ``skip`` for a skipped step).

Standard library only (torch is imported only when nothing else names the GPU and torch version).
``--markdown`` prints a short table of the same numbers (for docs/gpu.md); ``--from-json`` renders a
summary.json written earlier instead of reading the run again.

    python3 tools/device_summary.py --runs-dir /tmp/runs --profile paper --seed 0 \\
        --pipeline-log OUT/pipeline.log --bench-json OUT/bench_gpu.json --step pipeline=124:300 \\
        --started 1700000000 --budget 540 --out OUT/summary.json --markdown
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS: tuple[str, ...] = ("teacher", "baseline", "kd", "kd_fa", "kd_at", "kd_fa_at")
TEACHER_SEED = 0  # 01_train_teacher always trains seed 0; the students distil from it

# The pipeline's progress lines (kdnb/pipeline.py): "[3/9] 02_baseline (seed 0) → /path.ipynb",
# "[3/9] 02_baseline (seed 0) done in 123 s", and after the last notebook a breakdown
# "     123.4 s  02_baseline (seed 0)" below "kdnb pipeline finished in ...".
_STEP = r"^\[(?P<i>\d+)/(?P<n>\d+)\] (?P<name>\S+)(?: \((?P<label>[^)]*)\))?"
START_RE = re.compile(_STEP + r" → (?P<path>.+)$")
DONE_RE = re.compile(_STEP + r" done in (?P<s>\d+(?:\.\d+)?) s$")
FINISHED_RE = re.compile(r"^kdnb pipeline finished in (?P<total>.+)$")
BREAKDOWN_RE = re.compile(r"^\s+(?P<s>\d+(?:\.\d+)?) s  (?P<name>\S+)(?: \((?P<label>[^)]*)\))?$")
# The CLI's one-line failures ("kdnb: error: notebook 03_kd (seed 0) failed in cell 9 ...") and Ctrl-C.
ERROR_RE = re.compile(r"^kdnb: (?:error: (?P<msg>.+)|(?P<interrupted>interrupted.*))$")


def read_json(path: Path | None) -> Any:
    """The parsed file, or None when it is missing or unreadable (a run cut off mid-write)."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _num(x: Any, digits: int = 3) -> float | None:
    return round(float(x), digits) if isinstance(x, (int, float)) else None


# ---------------------------------------------------------------- pieces
def parse_steps(items: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME=RC[:SECONDS]`` → {name: {"rc": int | "skip", "seconds": float | None}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, rest = item.partition("=")
        rc_s, _, secs = rest.partition(":")
        rc: int | str | None
        try:
            rc = int(rc_s)
        except ValueError:
            rc = rc_s or None
        meaning = {0: "ok", 124: "timed out (cap reached)", 137: "killed after the cap", 5: "no tests collected"}
        out[name] = {"rc": rc, "seconds": _num(float(secs), 1) if secs else None,
                     "meaning": "skipped (no time left)" if rc == "skip" else meaning.get(rc, "failed")
                     if isinstance(rc, int) else None}
    return out


def parse_pipeline_log(path: Path | None, step_seconds: float | None = None,
                       step_rc: int | str | None = None) -> dict[str, Any]:
    """Per-notebook wall seconds, the notebook still running at the end, and the error line.

    ``step_seconds``/``step_rc``: the pipeline step's wall time and exit code (124/137: the deadline).
    """
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            return {"log": str(path), "found": False}
    started: dict[tuple[str, str], dict[str, Any]] = {}
    planned = None
    finished_total = None
    errors: list[str] = []
    in_breakdown = False
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if m := START_RE.match(line):
            key = (m["name"], m["label"] or "")
            planned = int(m["n"])
            started[key] = {"index": int(m["i"]), "notebook": m["name"], "label": m["label"], "status": "running",
                            "seconds": None}
        elif m := DONE_RE.match(line):
            key = (m["name"], m["label"] or "")
            entry = started.setdefault(key, {"index": int(m["i"]), "notebook": m["name"], "label": m["label"]})
            entry.update(status="done", seconds=float(m["s"]))
        elif m := FINISHED_RE.match(line):
            finished_total, in_breakdown = m["total"], True
        elif in_breakdown and (m := BREAKDOWN_RE.match(line)):
            key = (m["name"], m["label"] or "")
            if key in started:
                started[key]["seconds"] = float(m["s"])  # 0.1 s precision instead of 1 s
        elif m := ERROR_RE.match(line.strip()):
            errors.append(m["msg"] or m["interrupted"])
    notebooks = sorted(started.values(), key=lambda e: e["index"])
    running = [e for e in notebooks if e["status"] == "running"]
    done_seconds = sum(e["seconds"] or 0.0 for e in notebooks if e["status"] == "done")
    last = running[-1] if running else None
    if last is not None:
        if step_seconds is not None:
            # No timestamps in the log: the step's wall time less the finished notebooks (and startup).
            last["seconds_approx"] = round(max(step_seconds - done_seconds, 0.0), 1)
        if step_rc in (124, 137):
            last["status"] = "cut off"
        elif errors or (isinstance(step_rc, int) and step_rc != 0):
            last["status"] = "failed"
    return {
        "log": None if path is None else str(path), "found": bool(text), "planned": planned,
        "started": len(notebooks), "done": sum(e["status"] == "done" for e in notebooks),
        "finished": finished_total is not None, "finished_in": finished_total,
        "notebooks": notebooks, "done_seconds": round(done_seconds, 1),
        "interrupted_in": None if last is None else _label(last),
        "error": errors[-1] if errors else None,
    }


def parse_tests_log(path: Path | None) -> dict[str, Any] | None:
    """pytest's closing line ("2 passed, 1 skipped, 300 deselected, 1 error in 9.1s") as counts."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        text = line.strip().strip("=").strip()
        if re.search(r" in \d+(?:\.\d+)?s\b", text) and re.search(r"\b(passed|failed|errors?|skipped|deselected|"
                                                                  r"no tests ran)\b", text):
            counts = {("errors" if k.startswith("error") else "warnings" if k.startswith("warning") else k): int(n)
                      for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|"
                                             r"warnings?)", text)}
            return {"line": text, **counts}
    # No closing line (cut off by the cap): count the per-test lines of `pytest -v`.
    counts = {}
    for m in re.finditer(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", "\n".join(lines)):
        key = {"ERROR": "errors"}.get(m[1], m[1].lower())
        counts[key] = counts.get(key, 0) + 1
    return {"line": None, "cut_off": True, **counts}


def _label(entry: dict[str, Any]) -> str:
    """``02_baseline (seed 0)``, as the pipeline names a notebook run."""
    return str(entry["notebook"]) + (f" ({entry['label']})" if entry.get("label") else "")


def summarise_run(run_dir: Path) -> dict[str, Any]:
    """One configuration's run: finished or not, epoch times, accuracy."""
    cfg = read_json(run_dir / "config.json") or {}
    history = read_json(run_dir / "history.json") or []
    metrics = read_json(run_dir / "metrics.json")
    history = [h for h in history if isinstance(h, dict)]
    secs = [float(h["seconds"]) for h in history if isinstance(h.get("seconds"), (int, float))]
    finished = bool(metrics and metrics.get("finished", True))
    out: dict[str, Any] = {
        "run_dir": str(run_dir), "exists": run_dir.is_dir(), "started": bool(cfg) or bool(history),
        "finished": finished, "epochs_run": (metrics or {}).get("epochs_run", len(history)),
        "epochs_planned": cfg.get("epochs"), "patience": cfg.get("patience"),
        "first_epoch_seconds": _num(secs[0], 2) if secs else None,  # includes compilation / warm-up
        "median_epoch_seconds": _num(statistics.median(secs), 2) if secs else None,
        "mean_epoch_seconds": _num(statistics.fmean(secs), 2) if secs else None,
        "median_images_per_s": _num(statistics.median(h["images_per_s"] for h in history), 1)
        if history and all(isinstance(h.get("images_per_s"), (int, float)) for h in history) else None,
        "train_seconds": _num(sum(secs), 1) if secs else None,
    }
    if secs and out["epochs_planned"]:
        # Upper bound for a full run at this pace (no early stop, evaluation not counted).
        rest = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
        out["projected_seconds_all_epochs"] = _num(secs[0] + rest * (int(out["epochs_planned"]) - 1), 0)
    if finished:
        out.update(accuracy=_num(metrics.get("test_acc"), 4), accuracy_kind="test_acc",
                   best_epoch=metrics.get("best_epoch"), stopped_early=metrics.get("stopped_early"),
                   val_acc_best=_num(metrics.get("val_acc"), 4))
    elif history:
        best = min(history, key=lambda h: h.get("val_loss", float("inf")))
        out.update(accuracy=_num(history[-1].get("val_acc"), 4), accuracy_kind="last val_acc",
                   best_epoch=best.get("epoch"), stopped_early=None)
    else:
        out.update(accuracy=None, accuracy_kind=None, best_epoch=None, stopped_early=None)
    out["provenance"] = {k: cfg.get(k) for k in ("device_name", "torch_version", "git_commit", "kdnb_version",
                                                 "amp_active", "compile", "data_source", "n_train", "n_val", "n_test",
                                                 "width", "batch_size")} if cfg else None
    return out


def summarise_bench(path: Path | None) -> dict[str, Any] | None:
    """The benchmark's per-variant numbers and ratios (None when it did not write its JSON)."""
    rep = read_json(path)
    if not isinstance(rep, dict):
        return None
    meta = rep.get("meta", {})
    return {
        "device_name": meta.get("device_name"), "torch_version": meta.get("torch_version"),
        "profile": meta.get("profile"), "batch_size": meta.get("batch_size"), "steps": meta.get("steps"),
        "repeats": meta.get("repeats"), "amp_bf16": meta.get("amp_bf16"), "compile": meta.get("compile"),
        "variants": {v: {"ms_per_step": _num(r.get("ms_per_step"), 2), "images_per_s": _num(r.get("images_per_s"), 1),
                         "rel_reference": _num(r.get("rel_reference"), 2)}
                     for v, r in rep.get("variants", {}).items()},
        "ratios": {k: _num(v, 3) for k, v in rep.get("ratios", {}).items()},
        "targets_met": {k: t.get("met") for k, t in rep.get("targets", {}).items()},
    }


def summarise_gpu_monitor(path: Path | None) -> dict[str, Any] | None:
    """Mean/max GPU utilisation and peak memory from ``nvidia-smi ... --format=csv,noheader,nounits``
    lines ``timestamp, utilization.gpu, memory.used, power.draw``."""
    if path is None or not Path(path).is_file():
        return None
    util, mem, power = [], [], []
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            util.append(float(parts[1]))
            mem.append(float(parts[2]))
            if len(parts) > 3:
                power.append(float(parts[3]))
        except (IndexError, ValueError):
            continue
    if not util:
        return None
    return {"samples": len(util), "util_mean_pct": _num(statistics.fmean(util), 1), "util_max_pct": max(util),
            "util_median_pct": _num(statistics.median(util), 1), "memory_max_mib": max(mem),
            "power_mean_w": _num(statistics.fmean(power), 1) if power else None}


def _torch_facts() -> dict[str, Any]:
    try:
        import torch  # optional: only when the check's own records are missing
    except ImportError:
        return {}
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"torch_version": torch.__version__, "gpu_name": name}


def build_summary(args: argparse.Namespace) -> dict[str, Any]:
    steps = parse_steps(args.step)
    runs_root = Path(args.runs_dir) / args.profile
    runs = {c: summarise_run(runs_root / c / f"seed{TEACHER_SEED if c == 'teacher' else args.seed}") for c in CONFIGS}
    pipe_step = steps.get("pipeline") or {}
    pipeline = parse_pipeline_log(Path(args.pipeline_log) if args.pipeline_log else None,
                                  pipe_step.get("seconds"), pipe_step.get("rc"))
    bench = summarise_bench(Path(args.bench_json) if args.bench_json else None)
    env = read_json(Path(args.env_json)) if args.env_json else None
    env = env if isinstance(env, dict) else {}
    prov = next((r["provenance"] for r in runs.values() if r["provenance"]), None) or {}
    gpu = env.get("gpu_name") or (bench or {}).get("device_name") or prov.get("device_name")
    torch_version = env.get("torch_version") or (bench or {}).get("torch_version") or prov.get("torch_version")
    if gpu is None or torch_version is None:
        facts = _torch_facts()
        gpu, torch_version = gpu or facts.get("gpu_name"), torch_version or facts.get("torch_version")
    now = time.time()
    projected = [r.get("projected_seconds_all_epochs") for r in runs.values()]
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "profile": args.profile, "seed": args.seed, "gpu_name": gpu, "torch_version": torch_version,
        "git_commit": prov.get("git_commit") or env.get("git_commit"),
        "budget_seconds": args.budget,
        "total_wall_seconds": _num(now - args.started, 1) if args.started else None,
        "steps": steps, "environment": env or None,
        "configs": runs,
        "all_finished": all(r["finished"] for r in runs.values()),
        # Upper bound of the six trainings at the measured pace, when every one has started.
        "projected_training_seconds_all": _num(sum(projected), 0) if all(p is not None for p in projected) else None,
        "tests": parse_tests_log(Path(args.tests_log) if args.tests_log else None),
        "pipeline": pipeline, "bench": bench,
        "gpu_monitor": summarise_gpu_monitor(Path(args.gpu_monitor) if args.gpu_monitor else None),
    }


# ---------------------------------------------------------------- markdown
def _fmt(x: Any, spec: str = ".1f", none: str = "–") -> str:
    return none if x is None else format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def to_markdown(summary: dict[str, Any]) -> str:
    """A short markdown report: one line of context, the configurations' table, the benchmark."""
    wall = summary.get("total_wall_seconds")
    lines = [f"Device check, profile `{summary.get('profile')}`, seed {summary.get('seed')}: "
             f"{summary.get('gpu_name') or 'unknown device'}, torch {summary.get('torch_version') or '?'}, "
             f"{summary.get('date_utc')}, {_fmt(wall, '.0f')} s wall"
             + (f" of a {summary['budget_seconds']} s budget" if summary.get("budget_seconds") else "") + ".", ""]
    lines += ["| configuration | finished | epochs | 1st epoch (s) | median epoch (s) | mean epoch (s) | img/s | "
              "accuracy (%) | best epoch |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in summary.get("configs", {}).items():
        acc = r.get("accuracy")
        acc_s = "–" if acc is None else f"{100 * acc:.2f}" + ("" if r.get("accuracy_kind") == "test_acc" else " (val)")
        planned = r.get("epochs_planned")
        epochs = f"{r.get('epochs_run', 0)}" + (f"/{planned}" if planned else "")
        finished = "yes" if r.get("finished") else ("running/cut off" if r.get("started") else "not started")
        lines.append(f"| {name} | {finished} | {epochs} | {_fmt(r.get('first_epoch_seconds'))} | "
                     f"{_fmt(r.get('median_epoch_seconds'))} | {_fmt(r.get('mean_epoch_seconds'))} | "
                     f"{_fmt(r.get('median_images_per_s'), '.0f')} | {acc_s} | {_fmt(r.get('best_epoch'), 'd')} |")
    pipe = summary.get("pipeline") or {}
    if pipe.get("notebooks"):
        per_nb = ", ".join(f"{_label(e)} {_fmt(e.get('seconds') or e.get('seconds_approx'), '.0f')} s"
                           + ("" if e.get("status") == "done" else f" ({e.get('status')})") for e in pipe["notebooks"])
        lines += ["", f"Pipeline ({pipe.get('done')}/{pipe.get('planned')} notebooks done): {per_nb}."]
    if pipe.get("error"):
        lines.append(f"Pipeline error: {pipe['error']}")
    bench = summary.get("bench")
    if bench and bench.get("variants"):
        lines += ["", "| bench variant | ms/step | images/s | × reference |", "| --- | ---: | ---: | ---: |"]
        for v, r in bench["variants"].items():
            lines.append(f"| {v} | {_fmt(r.get('ms_per_step'), '.2f')} | {_fmt(r.get('images_per_s'), '.0f')} | "
                         f"{_fmt(r.get('rel_reference'), '.2f')} |")
        ratios = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in bench.get("ratios", {}).items())
        lines += ["", f"Bench ratios: {ratios}."]
    tests = summary.get("tests") or {}
    if tests.get("line"):
        lines += ["", f"Tests (-m cuda): {tests['line']}."]
    elif tests.get("cut_off"):
        done = ", ".join(f"{v} {k}" for k, v in tests.items() if isinstance(v, int)) or "nothing"
        lines += ["", f"Tests (-m cuda): cut off before the end; {done} so far."]
    steps = summary.get("steps") or {}
    if steps:
        lines += ["", "Steps: " + ", ".join(f"{k} rc {v.get('rc')} ({_fmt(v.get('seconds'), '.0f')} s)"
                                           for k, v in steps.items()) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="/tmp/runs", help="the pipeline's --runs-dir")
    p.add_argument("--profile", default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipeline-log", default=None)
    p.add_argument("--bench-json", default=None)
    p.add_argument("--tests-log", default=None, help="the pytest output (its closing line is parsed)")
    p.add_argument("--env-json", default=None, help="facts the check recorded (gpu_name, torch_version, ...)")
    p.add_argument("--gpu-monitor", default=None, help="nvidia-smi CSV: timestamp, util %%, memory MiB, power W")
    p.add_argument("--step", action="append", default=[], metavar="NAME=RC[:SECONDS]", help="a step's exit code")
    p.add_argument("--started", type=float, default=None, help="the check's start (Unix seconds)")
    p.add_argument("--budget", type=int, default=None, help="the check's wall-clock budget in seconds")
    p.add_argument("--out", default=None, help="write the JSON here (default: print it unless --markdown)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table of the numbers")
    p.add_argument("--from-json", default=None, help="render this summary.json instead of reading a run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        summary = read_json(Path(args.from_json))
        if not isinstance(summary, dict):
            print(f"{args.from_json}: not a summary JSON", file=sys.stderr)
            return 2
    else:
        summary = build_summary(args)
    text = json.dumps(summary, indent=2, sort_keys=False)
    if args.out and not args.from_json:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        print(to_markdown(summary))
    elif not args.out:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
