#!/usr/bin/env python
"""Kill the ``smoke`` pipeline at random moments and check that rerunning it loses nothing.

    python tools/fault_injection.py [--kills 20] [--seed 0] [--workdir DIR] [--keep]

1. Runs ``python -m kdnb pipeline --profile smoke --ablation`` once without interruption (the
   reference) and records how long each of its steps (notebooks, the cohort) took.
2. Draws ``--kills`` moments from a seeded schedule stratified over the reference's whole duration
   (the k-th kill falls in the k-th slice) and maps each to a step and an offset inside it. Into a
   second runs folder it starts the same command, waits until that step starts *in this attempt*
   (the pipeline prints ``[i/N] step``), waits the offset, and sends SIGKILL to the whole process
   tree (the pipeline, the notebook kernel, the cohort's training process); then the next attempt.
   Reruns skip what is finished, so timing kills on each attempt's own step lines is what makes them
   land in kernel start-up, training, checkpoint and metrics writes, evaluation and table writing
   alike rather than in the re-execution of finished notebooks. After the last kill the pipeline
   runs to the end.
3. Compares the interrupted series with the reference: the results table (``results.csv``), every
   run's ``metrics.json`` and ``history.json`` (timings aside), and the outputs of the notebooks'
   checked cells (``# NBVAL_CHECK_OUTPUT``). Any JSON, checkpoint or table that does not load is
   reported by path. Exit code 0 when everything matches, 1 otherwise.

Slow (about 20 pipeline starts); not part of the test suite. Use ``--kills 3`` for a quick look.

    python tools/fault_injection.py --fault compile [--workdir DIR] [--keep]

The "kill during compile" fault: starts a compiled ``smoke`` run (``python -m kdnb train --config
baseline --set compile=true``) on a fresh runs folder, SIGKILLs its process tree as soon as the
compiler's first graph library (``….main.so``) appears in ``<runs>/compile-cache``, and truncates
the newest one to 0 bytes (what a kill in the middle of its write leaves; a kill cannot be timed to that
moment). Then the same command runs to the end: it must finish, say in one line that the cache was
damaged and where it went, and leave the damaged cache beside the new one. Prints what the rerun
cost. About two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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


STEP_START = re.compile(r"^\[(\d+)/(\d+)\] (\S+)")
STEP_DONE = re.compile(r"^\[(\d+)/(\d+)\] .* done in (\d+) s")


def run_to_end(runs: Path, log: Path) -> list[float]:
    """Run the pipeline to the end; the seconds of each of its steps, in order."""
    with open(log, "ab") as out:
        rc = subprocess.run(pipeline_command(runs), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"the pipeline failed (exit {rc}); see {log}")
    lines = log.read_text(errors="replace").split("kdnb pipeline: profile")[-1].splitlines()
    return [float(m[3]) for m in map(STEP_DONE.match, lines) if m]


def attempt(runs: Path, log: Path, step: int, offset: float) -> str:
    """Start the pipeline; once step ``step`` (1-based) has started, wait ``offset`` seconds and
    SIGKILL the whole tree. Returns where the kill landed (or that the pipeline ended first)."""
    proc = subprocess.Popen(pipeline_command(runs), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = threading.Event()
    current = ["start-up"]

    def pump() -> None:
        with open(log, "ab") as out:
            for raw in proc.stdout:
                out.write(raw)
                m = STEP_START.match(raw.decode(errors="replace"))
                if m and " done in " not in raw.decode(errors="replace"):
                    current[0] = m[3]
                    if int(m[1]) >= step:
                        started.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while not started.wait(0.05):
        if proc.poll() is not None:
            reader.join()
            return f"the pipeline ended (exit {proc.returncode}) before step {step}"
    time.sleep(offset)
    if proc.poll() is not None:
        reader.join()
        return f"the pipeline ended (exit {proc.returncode}) before the kill"
    where = current[0]
    n = kill_tree(proc)
    reader.join()
    return f"SIGKILL to {n} processes in {where} ({offset:.1f} s after step {step} started)"


# A compiled graph's library, which inductor loads again on a later compile of that graph (and never
# rebuilds while the file exists); kernel libraries beside it are rebuilt or not reloaded.
LIBRARY = "*.main.so"


def compile_command(runs: Path) -> list[str]:
    return [sys.executable, "-m", "kdnb", "train", "--config", "baseline", "--profile", "smoke", "--runs-dir",
            str(runs), "--set", "compile=true", "--set", "epochs=1", "--quiet"]


def kill_during_compile(work: Path, log: Path) -> list[str]:
    """The "kill during compile" fault (see the module's docstring); the problems found (none: recovered)."""
    runs = work / "compile"
    cache = runs / "compile-cache"
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}  # kdnb's own cache
    with open(log, "ab") as out:
        proc = subprocess.Popen(compile_command(runs), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None and not list(cache.rglob(LIBRARY)):
            time.sleep(0.05)
        if proc.poll() is not None:
            return [f"the run ended (exit {proc.returncode}) before it compiled a library; see {log}"]
        n = kill_tree(proc)
    newest = max(cache.rglob(LIBRARY), key=lambda p: p.stat().st_mtime)
    newest.write_bytes(b"")
    print(f"SIGKILL to {n} processes while compiling; truncated {newest.relative_to(runs)} to 0 bytes", flush=True)
    t0 = time.perf_counter()
    rerun = subprocess.run(compile_command(runs), cwd=ROOT, env=env, capture_output=True, text=True)
    with open(log, "a") as out:
        out.write(rerun.stdout + rerun.stderr)
    print(f"rerun: exit {rerun.returncode} in {time.perf_counter() - t0:.1f} s", flush=True)
    said = [line for line in rerun.stderr.splitlines() if line.startswith("kdnb: the compile cache")]
    for line in said:
        print(f"  {line}")
    problems = [] if rerun.returncode == 0 else [f"the rerun failed (exit {rerun.returncode}); see {log}"]
    if not (runs / "smoke" / "baseline" / "seed0" / "metrics.json").is_file():
        problems.append("the rerun left no metrics.json")
    if said and not list(runs.glob("compile-cache.damaged-*")):
        problems.append("the damaged cache was not kept beside the new one")
    if not said:
        print("  (the rerun found nothing damaged)")
    if len(said) > 1:
        problems.append(f"{len(said)} lines about the damaged cache (one expected)")
    return problems


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
        except Exception as exc:  # any failure to load is the finding
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
        except Exception as exc:
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
    ap.add_argument("--fault", choices=("pipeline", "compile"), default="pipeline",
                    help="pipeline: kill the smoke pipeline at random moments (default); "
                         "compile: kill a compiled run during its compile")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kdnb-faults-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.fault == "compile":
        print(f"fault injection: kill during compile, in {work}", flush=True)
        problems = kill_during_compile(work, work / "compile.log")
        for p in problems:
            print(f"  {p}")
        print("FAILED" if problems else "OK: the run after the kill recovered from the damaged compile cache", flush=True)
        if not args.keep and not problems and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        return 1 if problems else 0
    reference, interrupted = work / "reference", work / "interrupted"
    log = work / "pipeline.log"
    env_note = f"KDNB_CACHE_DIR={os.environ.get('KDNB_CACHE_DIR', '~/.cache/kdnb')}"
    print(f"fault injection: {args.kills} kills, schedule seed {args.seed}, in {work} ({env_note})", flush=True)

    t0 = time.perf_counter()
    steps = run_to_end(reference, log)
    duration = sum(steps)
    print(f"reference run: {time.perf_counter() - t0:.0f} s, {len(steps)} steps", flush=True)
    rng = random.Random(args.seed)
    # stratified over the reference duration: kill k lands somewhere in slice k
    moments = sorted(duration * (k + rng.random()) / args.kills for k in range(args.kills))
    starts = [sum(steps[:i]) for i in range(len(steps))]
    for i, at in enumerate(moments, 1):
        step = max(j for j, s0 in enumerate(starts) if s0 <= at)
        print(f"kill {i:2d}/{args.kills} (at {at:5.1f} s of the reference): "
              f"{attempt(interrupted, log, step + 1, at - starts[step])}", flush=True)
    t1 = time.perf_counter()
    run_to_end(interrupted, log)
    print(f"final uninterrupted rerun: {time.perf_counter() - t1:.0f} s; whole check {time.perf_counter() - t0:.0f} s",
          flush=True)

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
