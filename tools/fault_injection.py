#!/usr/bin/env python
"""Kill the ``smoke`` pipeline at random moments and check that rerunning it loses nothing; or
(``--storage``) meet each storage and trust fault and check its one line.

    python tools/fault_injection.py [--kills 20] [--seed 0] [--workdir DIR] [--keep]
    python tools/fault_injection.py --storage [--only disk-full read-only ...]

``--storage`` runs every fault of :data:`STORAGE_FAULTS` on the ``smoke`` profile (seconds each),
each in a fresh copy of a runs folder holding a finished teacher: a full disk while a second run
writes, a read-only runs folder (training and the pipeline), a truncated teacher ``best.pt``, a
truncated resume ``checkpoint.pt`` (then ``--restart``), a pickle payload planted in a teacher
checkpoint and in an analysis cache file, and a width too small for a layer. Each must end in one
line naming the file, the cause and the fix, with exit code 2, nothing already written changed
(byte-compared) and no planted code run. The tests (``tests/test_faults_storage.py``) run the same
faults. A full disk is simulated (``fsync`` fails with ENOSPC for one folder) and so is a read-only
folder when running as root (``chmod`` does not stop root): both raise what the kernel raises.

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
import contextlib
import errno
import hashlib
import io
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil

from kdnb.engine.runs import TIMING_FIELDS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the storage faults import this checkout's kdnb (the kills run it as `-m kdnb` here)
CHECK = "# NBVAL_CHECK_OUTPUT"
# Wall-clock facts that legitimately differ between two runs of the same work.
TIMING_KEYS = TIMING_FIELDS


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
    from kdnb.engine.runs import load_checkpoint

    for ckpt in sorted(got.rglob("*.pt")):
        try:
            load_checkpoint(ckpt, "-")  # without running code, and checked against its SHA-256
        except Exception as exc:  # any failure to load is the finding
            problems.append(f"damaged checkpoint: {ckpt} ({exc})")
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


# ---------------------------------------------------------------- storage and trust faults
def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path: what "nothing changed" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _under(path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(folder.resolve())
    except TypeError:  # an fd, or bytes
        return False


@contextlib.contextmanager
def _patched(module, name: str, fake) -> Iterator[None]:
    real = getattr(module, name)
    setattr(module, name, fake(real))
    try:
        yield
    finally:
        setattr(module, name, real)


@contextlib.contextmanager
def disk_full(folder: Path, after: int = 0) -> Iterator[None]:
    """The disk under ``folder`` fills up: after ``after`` completed writes there, flushing a file to
    it fails with ENOSPC, as the kernel reports a full disk at the latest on fsync."""
    left = [after]

    def fake(real):
        def fsync(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if _under(target, folder):
                if left[0] <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left[0] -= 1
            return real(fd)
        return fsync

    with _patched(os, "fsync", fake):
        yield


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` cannot be written: ``chmod a-w`` on it and below, or, for root (whom modes do not
    stop), every call that creates, changes or removes something under it fails with EROFS."""
    folder = folder.resolve()
    if os.geteuid() != 0:
        dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        modes = {d: d.stat().st_mode for d in dirs}
        for d in dirs:
            d.chmod(modes[d] & ~0o222)
        try:
            yield
        finally:
            for d in reversed(dirs):
                d.chmod(modes[d])
        return
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def opener(real):
        def fake(path, flags, *args, **kwargs):
            if flags & write and _under(path, folder):
                refuse(path)
            return real(path, flags, *args, **kwargs)
        return fake

    def changer(real):
        def fake(path, *args, **kwargs):
            if _under(path, folder) or any(_under(a, folder) for a in args if isinstance(a, (str, os.PathLike))):
                refuse(path)
            return real(path, *args, **kwargs)
        return fake

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(os, "open", opener))
        for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
            stack.enter_context(_patched(os, name, changer))
        yield


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to ``keep`` of its bytes, as a power loss or a full disk leaves a file that was not
    written through kdnb's atomic writer."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class Payload:
    """A pickle that, when loaded, creates ``marker``: the code a foreign file could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant_pickle(path: Path, marker: Path, as_checkpoint: bool = True, sidecar: bool = True) -> None:
    """Replace ``path`` by a file that runs code when unpickled: a ``torch.save``d checkpoint (with a
    SHA-256 sidecar that matches, as a file from elsewhere might bring) or a bare pickle."""
    import pickle

    import torch

    if as_checkpoint:
        buf = io.BytesIO()
        torch.save({"model": Payload(marker), "epoch": 1}, buf)
        path.write_bytes(buf.getvalue())
        if sidecar:
            from kdnb.engine.runs import checksum_path

            digest = hashlib.sha256(buf.getvalue()).hexdigest()
            checksum_path(path).write_text(json.dumps({"sha256": [digest], "format": 1}))
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``python -m kdnb ARGV`` in this process: its exit code and what it wrote to stderr (the
    process environment is restored: the pipeline sets the compile cache's)."""
    from kdnb.cli import main

    err, env = io.StringIO(), dict(os.environ)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(env)
    return rc, err.getvalue().strip()


@dataclass
class FaultResult:
    """How a fault ended: the exit code, the user's one line, whether everything already written is
    byte-identical and whether planted code ran."""

    fault: str
    rc: int
    message: str
    unchanged: bool = True
    code_ran: bool = False
    expect: str = ""  # a phrase the message must hold
    expect_rc: int = 2  # a user error; 0 where the fault is met by recomputing (a cache)

    @property
    def ok(self) -> bool:
        one_line = self.message.count("\n") == 0 and (self.expect_rc == 0 or self.message.startswith("kdnb: error: "))
        return (self.rc == self.expect_rc and one_line and self.expect in self.message and self.unchanged
                and not self.code_ran)


def _train(runs: Path, *args: str) -> tuple[int, str]:
    return run_cli(["train", "--profile", "smoke", "--runs-dir", str(runs), "--quiet", *args])


def fault_disk_full(runs: Path) -> FaultResult:
    """A second run (KD) fills the disk at its first checkpoint; the finished teacher stays as it was."""
    before = snapshot(runs)
    with disk_full(runs / "smoke" / "kd", after=2):
        rc, msg = _train(runs, "--config", "kd")
    after = snapshot(runs)
    return FaultResult("disk-full", rc, msg, all(after.get(k) == v for k, v in before.items()),
                       expect="checkpoint.pt: no space left on the device")


def fault_read_only(runs: Path) -> FaultResult:
    """The runs folder is read-only when a run starts."""
    before = snapshot(runs)
    with read_only(runs):
        rc, msg = _train(runs, "--config", "kd")
    ok = "read-only" if os.geteuid() == 0 else "permission denied"
    return FaultResult("read-only", rc, msg, snapshot(runs) == before, expect=ok)


def fault_read_only_pipeline(runs: Path) -> FaultResult:
    """The pipeline on a read-only runs folder: one line before any notebook starts."""
    before = snapshot(runs)
    with read_only(runs):
        rc, msg = run_cli(["pipeline", "--profile", "smoke", "--only", "00", "--runs-dir", str(runs)])
    return FaultResult("read-only-pipeline", rc, msg, snapshot(runs) == before, expect="the pipeline cannot start")


def fault_truncated_teacher(runs: Path) -> FaultResult:
    """A truncated teacher best.pt when a student starts."""
    truncate(runs / "smoke" / "teacher" / "seed0" / "best.pt")
    before = snapshot(runs)
    rc, msg = _train(runs, "--config", "kd")
    return FaultResult("truncated-teacher", rc, msg, snapshot(runs) == before,
                       expect="python -m kdnb train --config teacher --profile smoke --seed 0")


def interrupted_run(runs: Path, config: str = "baseline") -> Path:
    """A run stopped after its first epoch (its checkpoint.pt written, not finished)."""
    from kdnb.engine.config import make_config
    from kdnb.engine.train import train

    return train(make_config(config, "smoke", 0), runs, progress=False, max_epochs=1).run_dir


def fault_truncated_checkpoint(runs: Path) -> FaultResult:
    """A truncated checkpoint.pt of an interrupted run, on resume."""
    run_dir = interrupted_run(runs)
    truncate(run_dir / "checkpoint.pt")
    before = snapshot(runs)
    rc, msg = _train(runs, "--config", "baseline")
    return FaultResult("truncated-checkpoint", rc, msg, snapshot(runs) == before, expect="--restart")


def fault_pickle_teacher(runs: Path) -> FaultResult:
    """A teacher checkpoint from elsewhere that runs code when unpickled (its checksum matching)."""
    marker = runs.parent / f"{runs.name}-code-ran"
    plant_pickle(runs / "smoke" / "teacher" / "seed0" / "best.pt", marker)
    before = snapshot(runs)
    rc, msg = _train(runs, "--config", "kd")
    return FaultResult("pickle-teacher", rc, msg, snapshot(runs) == before, marker.exists(),
                       expect="nothing in it ran")


def fault_pickle_cache(runs: Path) -> FaultResult:
    """An analysis cache file replaced by a pickle payload (at the cache's name and at the old .pkl name)."""

    from kdnb.report import analyses

    marker, cache = runs.parent / f"{runs.name}-cache-code-ran", runs / "cache"
    cache.mkdir()
    key = {"k": 1}
    analyses.cached(cache, "t", key, lambda: {"value": 1})
    (stored,) = cache.glob(".cache-t-*.json")
    plant_pickle(stored, marker, as_checkpoint=False)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    plant_pickle(cache / f".cache-t-{digest}.pkl", marker, as_checkpoint=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = analyses.cached(cache, "t", key, lambda: {"value": 2})
    rc = 0 if value == {"value": 2} else 1  # recomputed, not read
    return FaultResult("pickle-cache", rc, out.getvalue().strip(), True, marker.exists(),
                       expect="is damaged or not kdnb's", expect_rc=0)


def fault_tiny_width(runs: Path) -> FaultResult:
    """A width that makes a layer narrower than the minimum: refused before anything is written."""
    before = snapshot(runs)
    rc, msg = _train(runs, "--config", "kd", "--set", "width=0.001")
    return FaultResult("tiny-width", rc, msg, snapshot(runs) == before, expect="use width >= 0.0625")


STORAGE_FAULTS: dict[str, Callable[[Path], FaultResult]] = {
    "disk-full": fault_disk_full,
    "read-only": fault_read_only,
    "read-only-pipeline": fault_read_only_pipeline,
    "truncated-teacher": fault_truncated_teacher,
    "truncated-checkpoint": fault_truncated_checkpoint,
    "pickle-teacher": fault_pickle_teacher,
    "pickle-cache": fault_pickle_cache,
    "tiny-width": fault_tiny_width,
}


def teacher_runs(folder: Path) -> Path:
    """A runs folder with a finished smoke teacher (seed 0), trained once."""
    from kdnb.engine.config import make_config
    from kdnb.engine.train import train

    runs = folder / "teacher-runs"
    if not (runs / "smoke" / "teacher" / "seed0" / "metrics.json").is_file():
        train(make_config("teacher", "smoke", 0), runs, progress=False)
    return runs


def storage_faults(work: Path, only: list[str] | None = None) -> list[FaultResult]:
    """Every storage fault (or those in ``only``), each in a fresh copy of a teacher's runs folder."""
    base = teacher_runs(work)
    results = []
    for name, fault in STORAGE_FAULTS.items():
        if only and name not in only:
            continue
        runs = work / name / "runs"
        shutil.rmtree(runs.parent, ignore_errors=True)
        shutil.copytree(base, runs)
        results.append(fault(runs))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--workdir", default=None, help="where the two runs folders go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the runs folders")
    ap.add_argument("--storage", action="store_true", help="the storage and trust faults instead of the kills")
    ap.add_argument("--only", nargs="*", default=None, help=f"with --storage: these faults ({', '.join(STORAGE_FAULTS)})")
    ap.add_argument("--fault", choices=("pipeline", "compile"), default="pipeline",
                    help="pipeline: kill the smoke pipeline at random moments (default); "
                         "compile: kill a compiled run during its compile")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kdnb-faults-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.storage:
        results = storage_faults(work, args.only)
        for r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'} {r.fault:21} exit {r.rc}  unchanged {r.unchanged}  code ran "
                  f"{r.code_ran}\n     {r.message}", flush=True)
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        return 0 if all(r.ok for r in results) else 1
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
