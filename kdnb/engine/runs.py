"""Run directories: layout, atomic writes and loading finished runs.

Layout: ``<runs_dir>/<profile>/<config>/seed<k>/`` with ``config.json``, ``history.json``,
``checkpoint.pt`` (everything needed to resume, rewritten after each epoch), and when the run
is finished ``best.pt`` (best-by-validation-loss weights) and ``metrics.json`` (written last: its
presence marks a finished run). Every file is written to a temporary name and renamed, so a
kill at any moment leaves either the old or the new file, never half of one; a full or read-only
disk is a :class:`~kdnb.engine.errors.StorageError` of one line, and the old file stays as it was.

Checkpoints (``*.pt``) hold only tensors and plain values (dicts, lists, numbers, strings), so they
load with ``torch.load(weights_only=True)``: a file from elsewhere cannot run code. Beside each one,
``<name>.sha256.json`` records the SHA-256 of the bytes kdnb wrote, so a damaged file (truncated,
changed) is told apart from an intact one this version cannot read.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import pickle
import socket
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .errors import DamagedFile, is_storage_fault, storage_error

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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_dead_writers(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}~{_HOST}~{os.getpid()}~", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if is_storage_fault(exc):  # one line naming the file; the old one (if any) is unchanged
            raise storage_error(exc, path, f" (the previous {path.name}, if any, is unchanged)") from None
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


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` in memory: written to disk by plain writes, a full disk is an OSError
    (torch's own file writer reports it as an opaque ``RuntimeError: ... unexpected pos``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


CHECKPOINT_FORMAT = 1  # what this kdnb writes and reads; a newer format is refused by name
CHECKSUM_SUFFIX = ".sha256.json"
KEEP_CHECKSUMS = 3  # recorded digests: the file on disk is one of them even after a failed or killed write


def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar ``<checkpoint>.sha256.json`` of a checkpoint."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _recorded(path: Path) -> dict[str, Any] | None:
    """The checkpoint's sidecar, or None when it has none (written elsewhere or by an older kdnb)."""
    try:
        side = read_json(checksum_path(path))
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) and isinstance(side.get("sha256"), list) else None


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write checkpoint ``obj`` (tensors and plain values only) and record its SHA-256.

    The sidecar is written first and keeps the last few digests, so whenever a kill or a full disk
    stops this between the two writes, the checkpoint on disk (old or new) still matches."""
    data = torch_bytes(obj)
    side = _recorded(Path(path)) or {}
    digests = [hashlib.sha256(data).hexdigest(), *side.get("sha256", [])][:KEEP_CHECKSUMS]
    write_json(checksum_path(path), {"sha256": digests, "format": CHECKPOINT_FORMAT, "kdnb_version": __version__,
                                     "torch_version": torch.__version__})
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | os.PathLike, fix: str, required: Iterable[str] = (),
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, read without running any code (``weights_only=True``), or
    :class:`DamagedFile` of one line: damaged (checksum), needing code (refused), another format or
    foreign (missing ``required`` keys); ``fix`` says what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedFile(f"{path} cannot be read ({exc.strerror}): {fix}") from None
    side = _recorded(path)
    intact = side is not None and hashlib.sha256(data).hexdigest() in side["sha256"]
    if side is not None and not intact:
        raise DamagedFile(f"{path} is damaged: its bytes ({len(data)}) do not match the SHA-256 kdnb recorded when it "
                          f"wrote it (truncated or changed since): {fix}")
    fmt = side.get("format", CHECKPOINT_FORMAT) if side is not None else CHECKPOINT_FORMAT
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise DamagedFile(f"{path} has checkpoint format {fmt}, newer than this kdnb {__version__} reads "
                          f"({CHECKPOINT_FORMAT}): upgrade kdnb, or {fix}")
    try:
        ck = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError) as exc:
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            # weights_only refused a global: the file wants code run to load
            raise DamagedFile(f"{path} holds more than tensors and plain values (loading it would run code), so "
                              f"it was refused and nothing in it ran: {fix}") from None
        if intact:
            raise DamagedFile(f"{path} is intact but this torch {torch.__version__} cannot read it (written by kdnb "
                              f"{side.get('kdnb_version')}, torch {side.get('torch_version')}): use that version, "
                              f"or {fix}") from None
        raise DamagedFile(f"{path} is damaged or not a PyTorch checkpoint ({_first_line(exc)}): {fix}") from None
    missing = [k for k in required if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise DamagedFile(f"{path} is not a kdnb checkpoint of this kind (no {', '.join(missing)}): {fix}")
    return ck


def _first_line(exc: BaseException) -> str:
    """The error's kind and first line (torch's own unpickling errors are pages of advice: the kind)."""
    text = [] if isinstance(exc, pickle.UnpicklingError) else str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:80]}" if text else type(exc).__name__


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """A checkpoint read without running code (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, "retrain the run that wrote it", map_location=map_location)


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
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a holder that never started removed the empty folder meanwhile
                continue
            except OSError as exc:
                if is_storage_fault(exc):
                    raise storage_error(exc, self.path, " (nothing in that folder was changed)") from None
                raise
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
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as exc:
            self.release()
            if is_storage_fault(exc):
                raise storage_error(exc, self.path, " (nothing in that folder was changed)") from None
            raise
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:  # gone, or the disk turned read-only meanwhile: the flock is the claim, not the file
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
