"""The device command's CPU rehearsal: ``python -m kdnb device-train`` on the smoke profile forms its
bundle when everything works, when a phase fails, and when time runs out (partial results, marked);
and the engine's deadline stops runs after a whole epoch, resumable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
import types

import pytest

import kdnb.device_train as device_train
import kdnb.engine.train as train_mod
from kdnb.device_train import BUNDLE, MAX_FILES, run_device_training, unpack
from kdnb.engine.config import make_config
from kdnb.engine.runs import METRICS_FILE, read_json, run_path

SMALL = {"synthetic_train": 400, "val_size": 80, "synthetic_test": 100}


def _bundle_ok(out):
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and set(files) <= set(BUNDLE), files
    assert all((out / f).stat().st_size < 2**20 for f in files)  # far below a device's return limit
    summary = json.loads((out / "summary.json").read_text())
    assert "| configuration | status |" in (out / "results.md").read_text()
    return summary


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-train")
    t0 = time.perf_counter()
    summary = run_device_training(root / "out", profile="smoke", budget=600, work=root / "work", overrides=SMALL,
                                  progress=False)
    return root, summary, time.perf_counter() - t0


def test_a_complete_rehearsal_writes_the_bundle(rehearsal):
    root, summary, seconds = rehearsal
    assert _bundle_ok(root / "out") == json.loads(json.dumps(summary))
    assert summary["complete"] and [p["status"] for p in summary["phases"]] == ["done"] * 5
    assert [r["config"] for r in summary["runs"]] == ["teacher", "baseline", "kd", "kd_fa", "kd_at", "kd_fa_at"]
    for r in summary["runs"]:  # the table's numbers are the runs' own
        metrics = read_json(run_path(root / "work" / "runs", "smoke", r["run_name"], 0) / METRICS_FILE)
        assert r["status"] == "finished" and r["test_acc"] == metrics["test_acc"]
    assert (root / "out" / "curves.png").stat().st_size > 10_000
    assert set(json.loads((root / "out" / "histories.json").read_text())) == {r["run_name"] for r in summary["runs"]}
    print(f"CPU rehearsal (smoke, small synthetic set): {seconds:.1f} s")


def _with_teacher(rehearsal, tmp_path):
    """A work folder holding the rehearsal's finished teacher (the teacher phase then only reads it)."""
    src = rehearsal[0] / "work" / "runs" / "smoke" / "teacher"
    shutil.copytree(src, tmp_path / "work" / "runs" / "smoke" / "teacher")
    return tmp_path / "work"


def test_a_failing_phase_is_recorded_and_the_bundle_still_forms(rehearsal, tmp_path, monkeypatch):
    work = _with_teacher(rehearsal, tmp_path)

    def broken(*a, **k):
        raise RuntimeError("injected failure\nsecond line")

    monkeypatch.setattr(device_train, "train_cohort", broken)
    summary = run_device_training(tmp_path / "out", profile="smoke", budget=600, work=work,
                                  overrides=SMALL, progress=False)
    assert _bundle_ok(tmp_path / "out") and not summary["complete"]
    phases = {p["name"]: p for p in summary["phases"]}
    assert phases["students"]["status"] == "failed" and phases["students"]["note"] == "RuntimeError: injected failure"
    assert phases["evaluate"]["status"] == "done"
    assert [r["status"] for r in summary["runs"]] == ["finished"] + ["not started"] * 5
    assert "Traceback" in (tmp_path / "out" / "device_train.log").read_text()
    assert "PARTIAL" in (tmp_path / "out" / "results.md").read_text()


def test_time_running_out_gives_partial_results_marked(rehearsal, tmp_path, monkeypatch):
    work = _with_teacher(rehearsal, tmp_path)
    real = train_mod.train_cohort
    monkeypatch.setattr(device_train, "train_cohort", lambda *a, **k: real(*a, **{**k, "max_epochs": 1}))
    summary = run_device_training(tmp_path / "out", profile="smoke", budget=600, work=work,
                                  overrides=SMALL, progress=False)
    _bundle_ok(tmp_path / "out")
    phases = {p["name"]: p for p in summary["phases"]}
    assert phases["students"]["status"] == "time ran out" and "did not finish" in phases["students"]["note"]
    rows = summary["runs"][1:]
    assert [r["status"] for r in rows] == ["partial"] * 5 and all(r["epochs_run"] == 1 for r in rows)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    assert "| baseline | partial | 1 | 1 |" in (tmp_path / "out" / "results.md").read_text()
    # the same command again resumes the runs; the partial bundle is kept beside the new one
    monkeypatch.setattr(device_train, "train_cohort", real)
    again = run_device_training(tmp_path / "out", profile="smoke", budget=600, work=work, overrides=SMALL,
                                progress=False)
    assert again["complete"] and [r["status"] for r in again["runs"]] == ["finished"] * 6
    kept = list(tmp_path.glob("out.previous-*"))
    assert len(kept) == 1 and "| baseline | partial | 1 | 1 |" in (kept[0] / "results.md").read_text()


@pytest.mark.parametrize("every", [1, 2])
def test_the_deadline_stops_after_a_whole_epoch_and_the_run_resumes(tmp_path, monkeypatch, every):
    """A fake clock: each reading advances 10 s, so epoch 1 "takes" 10 s and the next would end past
    the deadline. The run stops checkpointed after epoch 1 (also between two of its regular
    checkpoints, ``every`` 2); a call without deadline finishes it with the numbers of an
    uninterrupted run."""
    cfg = make_config("baseline", "smoke", 0, {**SMALL, "epochs": 3, "patience": 3, "compile": False,
                                               "checkpoint_every": every})
    whole = train_mod.train(cfg, tmp_path / "whole", progress=False)
    clock = iter(range(0, 10**6, 10))
    fake = types.SimpleNamespace(perf_counter=time.perf_counter, monotonic=lambda: float(next(clock)))
    monkeypatch.setattr(train_mod, "time", fake)
    cut = train_mod.train(cfg, tmp_path / "cut", progress=False, deadline=25.0)
    assert cut.metrics == {"finished": False, "epochs_run": 1}
    monkeypatch.setattr(train_mod, "time", time)
    resumed = train_mod.train(cfg, tmp_path / "cut", progress=False)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]


def test_an_archive_is_unpacked_once(tmp_path):
    folder = tmp_path / "src" / "cifar10-jpeg"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        (folder / split / "cat" / "0.jpg").write_bytes(b"x")
    archive = tmp_path / "data.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(folder, arcname="cifar10-jpeg")
    got = unpack(archive, tmp_path / "work")
    assert got == tmp_path / "work" / "data" / "cifar10-jpeg" and (got / "train" / "cat" / "0.jpg").is_file()
    (got / "train" / "cat" / "0.jpg").unlink()
    assert unpack(archive, tmp_path / "work") == got and not (got / "train" / "cat" / "0.jpg").exists()
    assert unpack(folder, tmp_path / "work") == folder


def test_the_command_refuses_a_bad_setting_in_one_line(tmp_path, cli_env):
    proc = subprocess.run([sys.executable, "-m", "kdnb", "device-train", str(tmp_path / "out"), "--profile", "smoke",
                           "--set", "lr=-1"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "lr=-1" in proc.stderr
    assert not (tmp_path / "out").exists()
