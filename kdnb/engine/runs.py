"""Run directories: layout, atomic writes and loading finished runs.

Layout: ``<runs_dir>/<profile>/<config>/seed<k>/`` with ``config.json``, ``history.json``,
``checkpoint.pt`` (everything needed to resume, rewritten after each epoch), and when the run
is finished ``best.pt`` (best-by-validation-loss weights) and ``metrics.json`` (written last: its
presence marks a finished run). Every file is written to a temporary name and renamed, so a
kill at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
# Fields of history.json and metrics.json that come from the clock or the schedule (how many runs
# shared an epoch), not from the computation: two runs of the same work may differ in these only.
TIMING_FIELDS: frozenset[str] = frozenset({
    "seconds", "images_per_s", "own_seconds", "shared_seconds", "timed_steps", "cohort_size",
    "train_seconds", "median_epoch_seconds", "own_train_seconds", "shared_train_seconds"})


def run_path(runs_dir: str | os.PathLike, profile: str, config: str, seed: int) -> Path:
    return Path(runs_dir) / profile / config / f"seed{seed}"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write a file through ``write(binary_file)`` so that readers (and a process killed midway)
    see either the old file or the complete new one, never a truncated one: a temporary file in the
    same folder, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_writers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}~{_HOST}~{os.getpid()}~", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_HOST = socket.gethostname()


def _sweep_dead_writers(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers on this host that no longer run (a
    SIGKILL between creating the temporary file and renaming it leaves one behind)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}~*~*~*.tmp"):
        host, pid = tmp.name[len(path.name) + 2:].split("~")[:2]
        if host != _HOST or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8): tables and reports a kill must not leave half-written."""
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=False)


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file()


LOCK_FILE = "lock"


class RunLocked(RuntimeError):
    """Another process is training this run; the message names it."""


class RunLock:
    """An exclusive claim on a run folder while a process trains it, so that two notebooks or two
    pipelines on the same runs folder never train (and corrupt) the same run at once.

    An OS file lock (``flock``) on ``<run_dir>/lock``: the kernel releases it when the holder exits,
    even on SIGKILL, so a crash never leaves a stale claim. The file holds the holder's host, pid
    and start time for the message a second trainer gets. ``wait``: block until the run is free
    instead of refusing."""

    def __init__(self, run_dir: str | os.PathLike, wait: bool = False, poll_seconds: float = 2.0):
        self.run_dir, self.wait, self.poll = Path(run_dir), wait, poll_seconds
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._made_dir = False

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> "RunLock":
        import fcntl
        import socket
        import time

        while True:
            made = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a holder that never started removed the empty folder meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not self.wait:
                    h = self.holder() or {}
                    raise RunLocked(
                        f"{self.run_dir} is being trained by another process (pid {h.get('pid', '?')} on "
                        f"{h.get('host', '?')}, since {h.get('since', '?')}): wait for it to finish, or stop it; "
                        "the run resumes from its last epoch either way") from None
                time.sleep(self.poll)
                continue
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._made_dir = made
                break
            os.close(fd)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self._made_dir:  # a run that never started (bad data, say) leaves no empty folder
            try:
                self.run_dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
