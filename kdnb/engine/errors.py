"""The engine's error types: a run that cannot start or cannot go on, and the storage faults (a full
or read-only disk, a damaged or untrusted file) that must reach the user as one line."""

from __future__ import annotations

import errno
import os

# errno -> (the cause in words, the fix): the storage failures a user can act on
STORAGE_CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space there (or use another --runs-dir) and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota (or use another --runs-dir) and rerun"),
    errno.EROFS: ("the file system is read-only", "use a writable --runs-dir (or remount it read-write) and rerun"),
    errno.EACCES: ("permission denied", "make it writable for this user (or use another --runs-dir) and rerun"),
    errno.EPERM: ("operation not permitted", "make it writable for this user (or use another --runs-dir) and rerun"),
}


class TrainingError(RuntimeError):
    """A run cannot start or cannot go on; the message says why and what to do."""


class OneLine:
    """Mixin: in Jupyter the error shows as its one-line message, not a traceback (as MissingInput)."""

    def _render_traceback_(self) -> list[str]:  # IPython hook: replaces the traceback display
        return [f"{type(self).__name__}: {self}"]


class StorageError(OneLine, TrainingError):
    """A file could not be written (disk full, read-only, no permission); the message names the path,
    the cause and the fix. Finished runs are untouched: every write goes to a temporary file first."""


class DamagedFile(OneLine, TrainingError):
    """A checkpoint or cache that is truncated, not kdnb's, or would need code to load; the message
    names the file and what to do."""


def is_storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError of a full, read-only or forbidden storage."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_CAUSES


def storage_error(exc: OSError, path: str | os.PathLike | None = None, note: str = "") -> StorageError:
    """One line for a storage OSError: the path, the cause in words and the fix (``note`` after)."""
    cause, fix = STORAGE_CAUSES.get(exc.errno, (exc.strerror or str(exc), "check that storage and rerun"))
    where = path if path is not None else (exc.filename or "a file")
    return StorageError(f"cannot write {where}: {cause} (errno {errno.errorcode.get(exc.errno, exc.errno)}): "
                        f"{fix}{note}")
