"""A damaged compile cache (a 0-byte ``….main.so`` left by a compile that was killed) is recognised
at the first compiled call, moved aside, and compiled afresh; a compile that still fails trains
eager (the same numbers, ``compiled: false`` in config.json) or, with compile=true set, stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import InductorError

from kdnb.engine import compile_cache
from kdnb.engine.compile_cache import CACHE_ENV, cache_damage, first_compiled_call, move_aside, use_compile_cache
from kdnb.engine.config import make_config
from kdnb.engine.data import plan_epoch
from kdnb.engine.errors import TrainingError
from kdnb.engine.runs import CONFIG_FILE, read_json
from kdnb.engine.step import CohortStep, build_stepper, build_student, prepare_teacher_for
from kdnb.engine.train import train

import tiny_network

SO = "/runs/compile-cache/ab/cabcdef.main.so"


def _damage(inner: Exception | None = None) -> BackendCompilerFailed:
    """What dynamo raises when inductor loads a 0-byte library (seen in torch 2.14)."""
    return BackendCompilerFailed(torch.compile, inner or ImportError(f"{SO}: file too short"), None)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An isolated compile cache, as a user's TORCHINDUCTOR_CACHE_DIR."""
    path = tmp_path / "compile-cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


# ---------------------------------------------------------------- recognising damage
def test_a_truncated_library_is_damage():
    assert cache_damage(_damage()) == f"ImportError: {SO}: file too short"
    inductor = InductorError(ImportError(f"{SO}: file too short"), None)  # a lazily compiled backward's
    assert cache_damage(inductor) == f"ImportError: {SO}: file too short"
    try:  # wrapped once more, as the error reaches the training loop
        try:
            raise _damage()
        except BackendCompilerFailed as exc:
            raise RuntimeError("step failed") from exc
    except RuntimeError as outer:
        assert cache_damage(outer) is not None


def test_a_truncated_python_module_and_a_load_error_naming_the_cache_are_damage(tmp_path):
    cut = AttributeError("module 'torch._inductor.runtime.compile_tasks.c5aiml' has no attribute 'call'")
    assert cache_damage(_damage(cut)).startswith("AttributeError: module 'torch._inductor.runtime.compile_tasks")
    named = OSError(f"cannot read {tmp_path}/xy/k.so")
    assert cache_damage(_damage(named), cache=tmp_path) is not None


def test_other_failures_are_not_damage():
    assert cache_damage(ImportError(f"{SO}: file too short")) is None  # not the compiler's
    assert cache_damage(_damage(RuntimeError("Compiler: g++ not found"))) is None
    assert cache_damage(ValueError("loss is nan")) is None


# ---------------------------------------------------------------- moving aside, choosing the cache
def test_move_aside_renames_and_never_deletes(tmp_path):
    cache = tmp_path / "compile-cache"
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / "k.main.so").write_bytes(b"")
    first = move_aside(cache)
    assert first.name.startswith("compile-cache.damaged-") and (first / "ab" / "k.main.so").is_file()
    assert not cache.exists()
    cache.mkdir()
    second = move_aside(cache)  # the same second: another name
    assert second != first and first.is_dir() and second.is_dir()
    assert move_aside(cache) is None


def test_kdnb_chooses_the_cache_unless_the_user_did(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "_ours", None)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert use_compile_cache(tmp_path / "a") == tmp_path / "a"
    assert use_compile_cache(tmp_path / "b") == tmp_path / "b"  # its own earlier choice may change
    monkeypatch.setenv(CACHE_ENV, compile_cache._inductor_default())  # what inductor writes at its first compile
    assert use_compile_cache(tmp_path / "c") == tmp_path / "c"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert use_compile_cache(tmp_path / "d") == tmp_path / "mine"


# ---------------------------------------------------------------- the first compiled call
class _Calls:
    """A first compiled call that fails ``fails`` times with ``error``, then works."""

    def __init__(self, fails: int, error: Exception | None = None) -> None:
        self.fails, self.error, self.n, self.restored, self.eager = fails, error or _damage(), 0, 0, False

    def __call__(self) -> str:
        self.n += 1
        if self.n <= self.fails:
            raise self.error
        return "eager" if self.eager else "compiled"

    def run(self, forced: bool = False) -> str:
        return first_compiled_call(self, self.restore, self.go_eager, forced)

    def restore(self) -> None:
        self.restored += 1

    def go_eager(self) -> None:
        self.eager = True


def test_damage_moves_the_cache_aside_and_compiles_afresh(cache, capsys):
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / "k.main.so").write_bytes(b"")
    calls = _Calls(fails=1)
    assert calls.run() == "compiled" and calls.restored == 1
    err = capsys.readouterr().err.splitlines()
    aside = next(cache.parent.glob("compile-cache.damaged-*"))
    assert err == [f"kdnb: the compile cache {cache} is damaged (ImportError: {SO}: file too short); "
                   f"moved it to {aside}, compiling afresh"]
    assert (aside / "ab" / "k.main.so").is_file()


def test_a_compile_that_fails_again_trains_eager_with_one_warning(cache, capsys):
    calls = _Calls(fails=2)
    assert calls.run() == "eager" and calls.restored == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("kdnb: warning: compiling failed again with a fresh compile cache")


def test_a_forced_compile_that_fails_again_stops_in_one_line(cache, capsys):
    with pytest.raises(TrainingError) as info:
        _Calls(fails=2).run(forced=True)
    assert "\n" not in str(info.value) and "rerun with --set compile=false" in str(info.value)


def test_other_errors_pass_through_and_leave_the_cache(cache):
    cache.mkdir()
    with pytest.raises(ValueError):
        _Calls(fails=1, error=ValueError("a bug in the model")).run()
    assert cache.is_dir() and not list(cache.parent.glob("*.damaged-*"))


def test_a_probe_is_retried_once_on_a_damaged_cache(cache, capsys):
    calls = _Calls(fails=1)
    assert compile_cache.retry_on_damage(calls) == "compiled" and calls.n == 2
    with pytest.raises(BackendCompilerFailed):
        compile_cache.retry_on_damage(_Calls(fails=2))
    assert len(capsys.readouterr().err.splitlines()) == 2  # one line per damaged cache


# ---------------------------------------------------------------- the training step
class _Flaky(torch.nn.Module):
    """A stand-in for a compiled module whose compile fails ``fails`` times: each failure runs the
    module first, so it changes what a real failure may have changed (BatchNorm statistics)."""

    def __init__(self, inner: torch.nn.Module, fails: int) -> None:
        super().__init__()
        self.inner, self.fails = inner, fails

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if self.fails > 0:
            self.fails -= 1
            raise _damage()
        return out


def _always_damaged(*args, **kwargs):
    raise _damage()


def _cohort(fail_teacher: bool = False, fail_student: int = 0):
    """One step of a kd_fa_at + kd cohort (random teacher, smoke widths), the step's state after it."""
    cfgs = [make_config(c, "smoke", 0, {"synthetic_train": 200, "val_size": 40}) for c in ("kd_fa_at", "kd")]
    torch.manual_seed(0)
    teacher = build_student(make_config("teacher", "smoke", 0)).eval().requires_grad_(False)
    prepared = prepare_teacher_for(cfgs[0], teacher, torch.device("cpu"))
    steppers = [build_stepper(c, prepared, torch.device("cpu"), 2, teacher_prepared=True) for c in cfgs]
    if fail_teacher:  # a compiled stage whose compile always fails
        prepared.layer4._compiled_call_impl = _always_damaged
    if fail_student:  # the second member fails after the first one's whole step
        steppers[1].forward = _Flaky(steppers[1].student, fail_student)
    for s in steppers:
        s.compiled = fail_teacher or bool(fail_student)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    step = CohortStep(steppers, prepared, x, y, torch.device("cpu"))
    step.start_epoch(plan_epoch(len(y), 64, torch.Generator().manual_seed(1)))
    step()
    step()
    state = [{**s.student.state_dict(), **{f"obj.{k}": v for k, v in s.objective.state_dict().items()},
              "sums": s.sums, "mask_share": s.mask_share, "bad": s.bad} for s in steppers]
    return steppers, state


def _assert_same(a, b):
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_a_failed_first_step_is_retried_as_the_same_step(cache, capsys):
    _, reference = _cohort()
    steppers, state = _cohort(fail_student=1)
    _assert_same(reference, state)
    assert all(s.compiled for s in steppers)  # compiled afresh: still compiled
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_the_eager_fallback_is_the_same_computation(cache, capsys):
    _, reference = _cohort()
    steppers, state = _cohort(fail_teacher=True)
    _assert_same(reference, state)
    assert "training eager" in capsys.readouterr().err.splitlines()[-1]
    assert not any(s.compiled for s in steppers)
    assert steppers[0].teacher.layer4._compiled_call_impl is None


def _always_failing_compile(module, **_):
    return _Flaky(module, fails=10**9)


TINY = {"synthetic_train": 200, "val_size": 40, "synthetic_test": 40, "epochs": 1}


def test_a_run_that_falls_back_records_compiled_false(tmp_path, cache, monkeypatch):
    eager = train(make_config("baseline", "smoke", 0, TINY), tmp_path / "eager", progress=False)
    monkeypatch.setattr(torch, "compile", _always_failing_compile)
    cfg = make_config("baseline", "smoke", 0, TINY)
    cfg.compile = True  # as a profile turns it on (not the user's --set): falls back
    fell = train(cfg, tmp_path / "fell", progress=False)
    assert read_json(fell.run_dir / CONFIG_FILE)["compiled"] is False
    assert read_json(eager.run_dir / CONFIG_FILE)["compiled"] is False  # never asked to compile
    assert {k: v for k, v in fell.metrics.items() if "seconds" not in k} == \
        {k: v for k, v in eager.metrics.items() if "seconds" not in k}


def test_a_forced_compile_that_cannot_work_stops_the_run(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(torch, "compile", _always_failing_compile)
    cfg = make_config("baseline", "smoke", 0, {**TINY, "compile": "true"})
    assert cfg.compile_forced and not make_config("baseline", "cpu", 0).compile_forced
    with pytest.raises(TrainingError, match="compile=true was set, so the run stops"):
        train(cfg, tmp_path / "runs", progress=False)


# ---------------------------------------------------------------- a real damaged cache
@pytest.mark.slow
def test_a_zero_byte_library_in_the_cache_no_longer_fails_the_next_run(tmp_path, cli_env):
    """What an interrupted compile leaves: every compiled library of a first run truncated to 0 bytes
    (inductor never rebuilds one that exists). The next compiled run says so in one line, keeps the
    damaged cache aside and trains; its numbers equal the undamaged run's. Real ``kdnb train``
    processes and real inductor compiles, of a four-conv network (tests/tiny_network.py) in fp32
    (so the first compile is the training step's on every CPU, not the bf16 probe's): what is
    tested is the cache, and a ResNet-18 would spend ~60 s per compile on it."""
    env = {k: v for k, v in cli_env.items() if k != CACHE_ENV}
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-c", tiny_network.LAUNCH.format(tests=str(Path(__file__).parent)),
           "train", "--config", "baseline", "--profile", "smoke", "--runs-dir",
           str(runs), "--quiet", "--set", "compile=true", "--set", "threads=1", "--set", f"arch={tiny_network.NAME}",
           "--set", "amp=false",
           *[f"--set={k}={v}" for k, v in TINY.items()]]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    libraries = list((runs / "compile-cache").rglob("*.main.so"))
    assert libraries, "kdnb compiles into <runs>/compile-cache"
    for lib in libraries:
        lib.write_bytes(b"")
    t0 = time.perf_counter()
    second = subprocess.run([*cmd, "--force"], env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert second.returncode == 0, second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith("kdnb: the compile cache")]
    assert len(lines) == 1 and "file too short" in lines[0] and "compiling afresh" in lines[0], second.stderr
    assert len(list(runs.glob("compile-cache.damaged-*"))) == 1
    def accuracies(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if "best epoch" in ln]

    assert accuracies(first.stdout) == accuracies(second.stdout) != []
    assert read_json(runs / "smoke" / "baseline" / "seed0" / CONFIG_FILE)["compiled"] is True
    print(f"recovered run: {seconds:.1f} s")
