#!/usr/bin/env python
"""Kill the ``smoke`` pipeline at random moments and check that rerunning it loses nothing.

    python tools/fault_injection.py [--kills 20] [--seed 0] [--workdir DIR] [--keep]

1. Runs ``python -m kdnb pipeline --profile smoke --ablation`` once without interruption (the
   reference) and times it.
2. Into a second runs folder, starts the same command and sends SIGKILL to its whole process tree
   (the pipeline, the notebook kernels, the cohort's training process) at a moment drawn from a
   seeded schedule, then starts it again, ``--kills`` times. The moments are spread over the whole
   reference duration (stratified: the k-th kill falls in the k-th slice), so they land in kernel
   start-up, training, checkpoint and metrics writes, evaluation and table writing alike. After
   the last kill the pipeline runs to the end.
3. Compares the interrupted series with the reference: the results table (``results.csv``), every
   run's ``metrics.json`` and ``history.json`` (timings aside), and the outputs of the notebooks'
   checked cells (``# NBVAL_CHECK_OUTPUT``). Any JSON, checkpoint or table that does not load is
   reported by path. Exit code 0 when everything matches, 1 otherwise.

Slow (about 20 pipeline starts); not part of the test suite. Use ``--kills 3`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parent.parent
CHECK = "# NBVAL_CHECK_OUTPUT"
# Wall-clock facts that legitimately differ between two runs of the same work.
TIMING_KEYS = {"train_seconds", "median_epoch_seconds", "seconds", "images_per_s"}


def pipeline_command(runs: Path) -> list[str]:
    return [sys.executable, "-m", "kdnb", "pipeline", "--profile", "smoke", "--ablation", "--runs-dir", str(runs)]


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the process and every descendant at once (kernels and spawned trainers included)."""
    try:
        parent = psutil.Process(proc.pid)
        victims = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()
    return len(victims)


def run_to_end(runs: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        rc = subprocess.run(pipeline_command(runs), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"the pipeline failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def checked_outputs(nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    return [json.dumps(c.get("outputs", []), sort_keys=True) for c in nb.cells
            if c.cell_type == "code" and c.source.startswith(CHECK)]


def compare(reference: Path, interrupted: Path) -> list[str]:
    """Every difference between the two runs folders (empty when they agree)."""
    problems = []
    ref, got = reference / "smoke", interrupted / "smoke"
    for name in ("metrics.json", "history.json", "config.json"):
        for a in sorted(ref.rglob(name)):
            rel = a.relative_to(ref)
            if ".replaced-" in str(rel):
                continue
            b = got / rel
            try:
                left, right = json.loads(a.read_text()), json.loads(b.read_text())
            except FileNotFoundError:
                problems.append(f"missing: {b}")
                continue
            except json.JSONDecodeError as exc:
                problems.append(f"damaged JSON: {b} ({exc})")
                continue
            if name == "config.json":  # provenance differs (commit, threads); the settings must not
                left = {k: v for k, v in left.items() if k in ("config", "seed", "lr", "epochs", "cohort")}
                right = {k: v for k, v in right.items() if k in left}
            if without_timings(left) != without_timings(right):
                problems.append(f"differs: {rel}")
    import torch

    for ckpt in sorted(got.rglob("*.pt")):
        try:
            torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 (any failure to load is the finding)
            problems.append(f"damaged checkpoint: {ckpt} ({type(exc).__name__})")
    for table in ("results.csv", "ablation_table.md", "results_table.md"):
        a, b = ref / "figures" / table, got / "figures" / table
        if not b.is_file():
            problems.append(f"missing: {b}")
        elif table.endswith(".csv"):
            import pandas as pd

            left, right = pd.read_csv(a), pd.read_csv(b)
            cols = [c for c in left.columns if not c.startswith("prov_")]
            if not left[cols].equals(right[cols]):
                problems.append(f"differs: figures/{table}")
    for a in sorted((ref / "notebooks").glob("*.ipynb")):
        b = got / "notebooks" / a.name
        try:
            if checked_outputs(a) != checked_outputs(b):
                problems.append(f"checked outputs differ: notebooks/{a.name}")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"damaged notebook: {b} ({type(exc).__name__}: {exc})")
    leftovers = [p for p in got.rglob("*.tmp")]
    problems += [f"temporary file left behind: {p}" for p in leftovers]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--workdir", default=None, help="where the two runs folders go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the runs folders")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kdnb-faults-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    reference, interrupted = work / "reference", work / "interrupted"
    log = work / "pipeline.log"
    env_note = f"KDNB_CACHE_DIR={os.environ.get('KDNB_CACHE_DIR', '~/.cache/kdnb')}"
    print(f"fault injection: {args.kills} kills, schedule seed {args.seed}, in {work} ({env_note})", flush=True)

    duration = run_to_end(reference, log)
    print(f"reference run: {duration:.0f} s", flush=True)
    rng = random.Random(args.seed)
    # stratified over the reference duration: kill k lands somewhere in slice k
    moments = [duration * (k + rng.random()) / args.kills for k in range(args.kills)]
    rng.shuffle(moments)
    for i, at in enumerate(moments, 1):
        with open(log, "ab") as out:
            proc = subprocess.Popen(pipeline_command(interrupted), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=at)
                print(f"kill {i:2d}/{args.kills}: the pipeline finished before {at:.0f} s (exit {proc.returncode})",
                      flush=True)
                continue
            except subprocess.TimeoutExpired:
                n = kill_tree(proc)
        print(f"kill {i:2d}/{args.kills}: SIGKILL to {n} processes at {at:5.0f} s", flush=True)
    final = run_to_end(interrupted, log)
    print(f"final uninterrupted rerun: {final:.0f} s", flush=True)

    problems = compare(reference, interrupted)
    for p in problems:
        print(f"  {p}")
    n_runs = len(list((interrupted / "smoke").rglob("metrics.json")))
    print(f"{'FAILED' if problems else 'OK'}: {n_runs} runs, results table and checked notebook outputs "
          f"{'differ' if problems else 'equal the uninterrupted run'} after {args.kills} kills", flush=True)
    if not args.keep and not problems and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
