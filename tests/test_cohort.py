"""Cohort training: the students of one seed trained in lockstep on shared teacher passes write
exactly what each would write alone (histories, metrics, best weights), also after a kill and
resume, with members at different epochs, and with members leaving at different epochs."""

from __future__ import annotations

import shutil

import pytest
import torch

from kdnb.engine.config import STUDENT_CONFIGS, make_config
from kdnb.engine.runs import BEST_FILE, CONFIG_FILE, TIMING_FIELDS, load_torch, read_json
from kdnb.engine.train import TrainingError, train, train_cohort

TIMING = TIMING_FIELDS
# 320 training images (5 steps an epoch) instead of the smoke profile's 1,000: what is compared is
# the lockstep bookkeeping, which the first steps of every epoch exercise as well as the last
SMALL = {"synthetic_train": 520}


def _same(a, b) -> bool:
    """Equal apart from wall-clock fields."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a if k not in TIMING)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _runs_with_teacher(smoke_runs, where):
    shutil.copytree(smoke_runs / "smoke" / "teacher", where / "smoke" / "teacher")
    return where


def _assert_same_runs(alone, together):
    for a, c in zip(alone, together):
        assert _same(a.history, c.history), a.config.run_name
        assert _same(a.metrics, c.metrics), a.config.run_name
        wa, wc = load_torch(a.run_dir / BEST_FILE)["model"], load_torch(c.run_dir / BEST_FILE)["model"]
        assert all(torch.equal(wa[k], wc[k]) for k in wa), a.config.run_name


@pytest.mark.slow
def test_cohort_of_all_students_equals_each_alone(tmp_path, smoke_runs):
    cfgs = [make_config(c, "smoke", 0, {**SMALL, "epochs": 2}) for c in STUDENT_CONFIGS]
    solo_dir = _runs_with_teacher(smoke_runs, tmp_path / "solo")
    alone = [train(c, solo_dir, progress=False) for c in cfgs]
    together = train_cohort(cfgs, _runs_with_teacher(smoke_runs, tmp_path / "cohort"), progress=False)
    _assert_same_runs(alone, together)
    assert read_json(together[0].run_dir / CONFIG_FILE)["cohort"] == list(STUDENT_CONFIGS)
    assert read_json(alone[0].run_dir / CONFIG_FILE)["cohort"] is None


@pytest.mark.slow
def test_random_masks_and_mixed_cam_needs(tmp_path, smoke_runs):
    """Random-mask variants (their own mask generators; the size-matched one also on the shared cam)
    beside Grad-CAM and KD-only members."""
    cfgs = [make_config("kd_fa_at", "smoke", 0, {**SMALL, "epochs": 2, "mask_mode": "random", "name": "kd_fa_at_random"}),
            make_config("kd_fa_at", "smoke", 0, {**SMALL, "epochs": 2, "mask_mode": "random_matched", "keep": 0.25,
                                                  "name": "kd_fa_at_matched"}),
            make_config("kd_at", "smoke", 0, {**SMALL, "epochs": 2, "cam_stage": "layer2", "name": "kd_at_layer2cam"}),
            make_config("kd_fa", "smoke", 0, {**SMALL, "epochs": 2}),
            make_config("kd", "smoke", 0, {**SMALL, "epochs": 2})]
    alone = [train(c, _runs_with_teacher(smoke_runs, tmp_path / f"solo{i}"), progress=False) for i, c in enumerate(cfgs)]
    together = train_cohort(cfgs, _runs_with_teacher(smoke_runs, tmp_path / "cohort"), progress=False)
    _assert_same_runs(alone, together)


@pytest.mark.slow
def test_killed_cohort_resumes_members_at_different_epochs(tmp_path, smoke_runs):
    cfgs = [make_config(c, "smoke", 0, {**SMALL, "epochs": 3, "patience": 3}) for c in ("kd", "kd_at", "baseline")]
    whole = train_cohort(cfgs, _runs_with_teacher(smoke_runs, tmp_path / "whole"), progress=False)
    parts = _runs_with_teacher(smoke_runs, tmp_path / "parts")
    train(cfgs[0], parts, progress=False, max_epochs=2)  # kd ahead: stopped after epoch 2
    partial = train_cohort(cfgs[1:], parts, progress=False, max_epochs=1)  # the others after epoch 1
    assert [r.metrics["finished"] for r in partial] == [False, False]
    resumed = train_cohort(cfgs, parts, progress=False)  # kd_at and baseline catch up, then all three
    _assert_same_runs(whole, resumed)


@pytest.mark.slow
def test_members_leave_at_their_own_last_epoch(tmp_path, smoke_runs):
    cfgs = [make_config("kd", "smoke", 0, {**SMALL, "epochs": 1}), make_config("kd_fa", "smoke", 0, {**SMALL, "epochs": 3})]
    alone = [train(c, _runs_with_teacher(smoke_runs, tmp_path / f"solo{i}"), progress=False) for i, c in enumerate(cfgs)]
    together = train_cohort(cfgs, _runs_with_teacher(smoke_runs, tmp_path / "cohort"), progress=False)
    assert [len(r.history) for r in together] == [1, 3]
    _assert_same_runs(alone, together)


def test_cohort_members_must_share_the_batches():
    with pytest.raises(TrainingError, match="must share seed"):
        train_cohort([make_config("kd", "smoke", 0), make_config("kd_at", "smoke", 1)])
    with pytest.raises(TrainingError, match="teacher trains alone"):
        train_cohort([make_config("teacher", "smoke", 0), make_config("kd", "smoke", 0)])
    with pytest.raises(TrainingError, match="repeated"):
        train_cohort([make_config("kd", "smoke", 0), make_config("kd", "smoke", 0)])


@pytest.mark.slow
def test_cohort_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, smoke_runs, cli_env):
    """SIGKILL of a training cohort (``kdnb train --config …``) inside its second epoch, then the
    same command again: every member ends exactly as in an uninterrupted cohort."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    members = ["kd_fa_at", "baseline"]  # a member with masks and one without a teacher
    args = [sys.executable, "-m", "kdnb", "train", "--config", *members, "--profile", "smoke", "--quiet",
            "--set", "epochs=2", "--set", "patience=2", "--set", "synthetic_train=1200"]
    ref = _runs_with_teacher(smoke_runs, tmp_path / "ref")
    assert subprocess.run([*args, "--runs-dir", str(ref)], env=cli_env, capture_output=True).returncode == 0
    runs = _runs_with_teacher(smoke_runs, tmp_path / "killed")
    proc = subprocess.Popen([*args, "--runs-dir", str(runs)], env=cli_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = runs / "smoke" / "baseline" / "seed0" / "checkpoint.pt"  # the last member to end epoch 1
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # inside epoch 2
    assert proc.poll() is None, "the cohort finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any((runs / "smoke" / m / "seed0" / "metrics.json").exists() for m in members)
    assert subprocess.run([*args, "--runs-dir", str(runs)], env=cli_env, capture_output=True).returncode == 0
    for m in members:
        for name in ("history.json", "metrics.json"):
            want = json.loads((ref / "smoke" / m / "seed0" / name).read_text())
            got = json.loads((runs / "smoke" / m / "seed0" / name).read_text())
            assert _same(want, got), (m, name)
