"""torch.compile's on-disk cache: one place kdnb owns, and recovery when an artefact in it is damaged.

Why: inductor never rebuilds a kernel library that exists, so a compile killed while it wrote one
(a timeout, Ctrl-C, an OOM kill) leaves a 0-byte ``….main.so`` behind, and every later compile of
the same graph fails with ``ImportError: ….main.so: file too short``. kdnb keeps the cache beside
its runs (``<runs_dir>/compile-cache``; the benchmark, which has no runs folder, under
``$KDNB_CACHE_DIR``), recognises such a failure at the first compiled call, moves the cache aside
(never deletes it) and compiles afresh; if that fails too, the run goes on eager (the same
computation) or, when the user asked for ``compile=true``, stops with one line.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from .errors import TrainingError

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's; its triton kernels go beneath it too
CACHE_NAME = "compile-cache"
# What a truncated or half-written artefact says when it is loaded (a 0-byte .so, an empty
# pickle, a cut Python module of inductor's code cache, which loads as compile_tasks.<hash>).
DAMAGE_SIGNS = ("file too short", "invalid elf header", "ran out of input", "truncated", "compile_tasks.")
LOAD_ERRORS = (ImportError, OSError, EOFError, pickle.UnpicklingError, SyntaxError, AttributeError)

_ours: str | None = None  # the cache this process chose, so a later choice may replace it
T = TypeVar("T")


def cache_for_runs(runs_dir: str | os.PathLike) -> Path:
    """The compile cache of a runs folder: ``<runs_dir>/compile-cache``."""
    return Path(runs_dir).expanduser().resolve() / CACHE_NAME


def use_compile_cache(path: str | os.PathLike) -> Path:
    """Point inductor's cache at ``path`` unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``);
    returns the cache in use. Every compile after it uses it (inductor reads the variable each time).

    Inductor writes its default (a folder in the system temp dir) into the environment at its first
    compile, so that value, like one kdnb set itself, counts as not chosen."""
    global _ours
    current = os.environ.get(CACHE_ENV)
    if current is None or current == _ours or os.path.abspath(current) == _inductor_default():
        _ours = os.environ[CACHE_ENV] = str(Path(path).expanduser().resolve())
    return Path(os.environ[CACHE_ENV])


def _inductor_default() -> str | None:
    """Inductor's own default cache folder, when inductor is loaded: only then can it have written
    it into this process's environment (and importing inductor takes a second)."""
    utils = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
    return os.path.abspath(utils.default_cache_dir()) if utils is not None else None


def active_cache() -> Path:
    """The folder inductor compiles into now."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it (inductor's ``inner_exception``, causes, contexts)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the compiler failing (dynamo's ``BackendCompilerFailed``, inductor's
    ``InductorError``, which a lazily compiled backward raises), not the model's own error."""
    from torch._dynamo.exc import BackendCompilerFailed

    return any(isinstance(e, BackendCompilerFailed) for e in _chain(exc))


def cache_damage(exc: BaseException, cache: str | os.PathLike | None = None) -> str | None:
    """The cause in one line (``ImportError: …main.so: file too short``) when ``exc`` is a compile
    failure from loading a damaged artefact of the on-disk cache, else ``None``.

    A load error counts when its text names the cache folder (``cache``, default the active one)
    or reads like a truncated file (:data:`DAMAGE_SIGNS`)."""
    if not is_compile_failure(exc):
        return None
    where = str(cache) if cache is not None else os.environ.get(CACHE_ENV)
    for e in _chain(exc):
        text = str(e)
        if isinstance(e, LOAD_ERRORS) and (any(s in text.lower() for s in DAMAGE_SIGNS) or (where and where in text)):
            return one_line(e)
    return None


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (dynamo's messages run over several lines)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def move_aside(cache: str | os.PathLike) -> Path | None:
    """Rename ``cache`` to ``<cache>.damaged-<time>`` beside it (kept for inspection, never
    deleted); the new name, or ``None`` when there was no such folder."""
    cache = Path(cache)
    if not cache.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = cache.with_name(f"{cache.name}.damaged-{stamp}"), 1
    while target.exists():
        target, n = cache.with_name(f"{cache.name}.damaged-{stamp}-{n}"), n + 1
    os.rename(cache, target)
    return target


def reset_compiler() -> None:
    """Forget every compiled graph and loaded kernel of this process, so the next call compiles."""
    import torch
    from torch._inductor.utils import clear_caches

    torch._dynamo.reset()
    clear_caches()


def set_aside(cause: str) -> None:
    """Move the active cache aside, say so in one line (with ``cause``), and make the next call compile."""
    cache = active_cache()
    try:
        aside = move_aside(cache)
        moved = f"moved it to {aside}" if aside is not None else "it is gone"
    except OSError as exc:
        moved = f"could not move it aside ({one_line(exc)})"
    print(f"kdnb: the compile cache {cache} is damaged ({cause}); {moved}, compiling afresh", file=sys.stderr,
          flush=True)
    reset_compiler()


def retry_on_damage(call: Callable[[], T]) -> T:
    """``call()``, once more after :func:`set_aside` when it failed on a damaged cache (for a call
    that changes nothing, such as a compiler probe; a second failure passes through)."""
    try:
        return call()
    except Exception as exc:
        cause = cache_damage(exc)
        if cause is None:
            raise
    set_aside(cause)
    return call()


def first_compiled_call(call: Callable[[], T], restore: Callable[[], None], go_eager: Callable[[], None],
                        forced: bool) -> T:
    """``call()``, the first call of compiled code, recovering when the compile cache is damaged.

    torch.compile is lazy: its errors surface here, not where the model was compiled. On a
    failure :func:`cache_damage` recognises, ``restore()`` undoes what the failed call changed,
    the cache is moved aside (one line says where) and ``call()`` compiles afresh. If that fails
    too: with ``forced`` (the user set compile=true) a :class:`TrainingError` stops the run;
    otherwise one warning line, ``go_eager()`` and ``call()`` eager. Other errors pass through."""
    try:
        return call()
    except Exception as exc:
        cause = cache_damage(exc)
        if cause is None:
            raise
    restore()
    set_aside(cause)
    try:
        return call()
    except Exception as exc:
        if not is_compile_failure(exc):
            raise
        failure = one_line(exc)
    restore()
    if forced:
        raise TrainingError(f"compiling failed again with a fresh compile cache ({failure}); compile=true was "
                            "set, so the run stops: rerun with --set compile=false to train eager")
    print(f"kdnb: warning: compiling failed again with a fresh compile cache ({failure}); training eager "
          "(the same computation, slower; config.json records compiled: false)", file=sys.stderr, flush=True)
    go_eager()
    reset_compiler()
    return call()
