"""Run locks: two processes never train the same run folder at once, and a crash leaves no claim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdnb.engine.config import make_config
from kdnb.engine.runs import LOCK_FILE, TIMING_FIELDS, RunLock, RunLocked, run_path
from kdnb.engine.train import TrainingError, train

HOLD = """
import sys, time
from kdnb.engine.runs import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(run_dir: Path, seconds: float, env: dict) -> subprocess.Popen:
    """Another process that holds the run's lock for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path, cli_env):
    cfg = make_config("baseline", "smoke", 0)
    run_dir = run_path(tmp_path, "smoke", "baseline", 0)
    holder = _holder(run_dir, 60, cli_env)
    try:
        with pytest.raises(TrainingError, match=rf"being trained by another process \(pid {holder.pid} on "):
            train(cfg, tmp_path, progress=False)
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == holder.pid
        assert not (run_dir / "config.json").exists()  # refused before anything was written
        out = subprocess.run([sys.executable, "-m", "kdnb", "train", "--config", "baseline", "--runs-dir",
                              str(tmp_path), "--quiet"], capture_output=True, text=True, env=cli_env)
        assert out.returncode == 2 and out.stderr.startswith("kdnb: error: ") and "Traceback" not in out.stderr
        assert f"pid {holder.pid}" in out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_claim(tmp_path, cli_env):
    """SIGKILL gives the process no chance to clean up; the OS drops its lock all the same."""
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, 60, cli_env)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (run_dir / LOCK_FILE).exists()  # the file is still there, the lock is not
    with RunLock(run_dir) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run_dir / LOCK_FILE).exists()


def test_wait_blocks_until_the_holder_is_done(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, 2, cli_env)
    t0 = time.perf_counter()
    with RunLock(run_dir, wait=True, poll_seconds=0.1) as lock:
        waited = time.perf_counter() - t0
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    holder.wait()
    assert waited > 1.0  # it got the lock only when the holder let go, 2 s after taking it
    with RunLock(run_dir):
        with pytest.raises(RunLocked):  # the same process, a second claim: refused as well
            RunLock(run_dir).acquire()


def test_a_run_that_never_started_leaves_no_folder(tmp_path):
    """A refused start (bad data) must not leave an empty run folder behind its lock."""
    cfg = make_config("baseline", "smoke", 0, {"data_dir": str(tmp_path / "missing")})
    with pytest.raises(Exception, match="does not exist"):
        train(cfg, tmp_path / "runs", progress=False)
    assert not run_path(tmp_path / "runs", "smoke", "baseline", 0).exists()


def test_force_keeps_the_lock_in_place_and_the_old_run_aside(tmp_path):
    cfg = make_config("baseline", "smoke", 0, {"epochs": 1})
    first = train(cfg, tmp_path, progress=False)
    again = train(cfg, tmp_path, progress=False, force=True)
    assert again.metrics == {**first.metrics, **{k: again.metrics[k] for k in TIMING_FIELDS & again.metrics.keys()}}
    (backup,) = first.run_dir.parent.glob("seed0.replaced-*")
    assert (backup / "metrics.json").is_file() and not (backup / LOCK_FILE).exists()
    assert not (first.run_dir / LOCK_FILE).exists()


def test_a_killed_writer_leaves_no_temporary_file_behind(tmp_path, cli_env):
    """A SIGKILL between writing the temporary file and renaming it leaves litter; the next write
    of the same file removes it (only files of writers on this host that no longer run)."""
    import socket

    from kdnb.engine.runs import write_json

    target = tmp_path / "metrics.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".metrics.json~{socket.gethostname()}~{dead.pid}~abc.tmp"
    alive = tmp_path / f".metrics.json~{socket.gethostname()}~{os.getppid()}~abc.tmp"
    other_host = tmp_path / f".metrics.json~elsewhere~{dead.pid}~abc.tmp"
    for p in (stale, alive, other_host):
        p.write_text("{")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not stale.exists() and alive.exists() and other_host.exists()


TIMING_KEYS = TIMING_FIELDS


def _train_cli(runs_dir: Path, env: dict) -> subprocess.Popen:
    """``python -m kdnb train`` of a smoke baseline (2 epochs)."""
    return subprocess.Popen([sys.executable, "-m", "kdnb", "train", "--config", "baseline", "--runs-dir", str(runs_dir),
                             "--set", "epochs=2", "--set", "patience=2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finished(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    weights = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}, weights


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
def test_two_real_trainers_one_trains_the_other_refuses_and_the_run_equals_a_lone_one(tmp_path, cli_env):
    """Two ``kdnb train`` processes on one run: the first trains, the second (started while the first
    holds the run) refuses with one line naming it; the finished run is the run a lone trainer makes.
    The first is held still (SIGSTOP) while the second tries, so the two meet whatever the machine's load."""
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    shared, lone = tmp_path / "shared", tmp_path / "lone"
    run_dir = run_path(shared, "smoke", "baseline", 0)
    first = _train_cli(shared, env)
    deadline = time.monotonic() + 120
    while not ((run_dir / LOCK_FILE).is_file() and (run_dir / LOCK_FILE).read_text().strip()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _train_cli(shared, env)
        out2, err2 = second.communicate(timeout=300)
        assert first.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and not out2
    assert err2.count("\n") == 1 and err2.startswith("kdnb: error: ")
    assert f"being trained by another process (pid {first.pid} on " in err2 and "Traceback" not in err2
    assert not (run_dir / LOCK_FILE).exists()

    alone = _train_cli(lone, env)
    _, err = alone.communicate(timeout=600)
    assert alone.returncode == 0, err
    metrics, weights = _finished(run_dir)
    lone_metrics, lone_weights = _finished(run_path(lone, "smoke", "baseline", 0))
    assert metrics == lone_metrics and metrics["epochs_run"] == 2
    assert _same_tensors(weights, lone_weights)
