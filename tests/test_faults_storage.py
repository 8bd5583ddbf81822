"""Faults of storage and of trust (issue 32): a full or read-only disk, damaged checkpoints and caches,
checkpoints from elsewhere and impossible sizes, each met with one line naming the file, the cause and
the fix, a non-zero exit, nothing already written changed (byte-compared) and no code run from a file.

The faults themselves live in ``tools/fault_injection.py`` (``--storage`` runs them by hand)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from kdnb.engine.config import ConfigError, make_config
from kdnb.engine.errors import DamagedFile, StorageError
from kdnb.engine.runs import TIMING_FIELDS, checksum_path, load_checkpoint, save_torch, write_json
from kdnb.engine.train import train
from kdnb.method.models import build_model
from kdnb.report import analyses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fault_injection as faults  # noqa: E402

TIMINGS = TIMING_FIELDS


@pytest.fixture
def runs(tmp_path, smoke_runs) -> Path:
    """A fresh runs folder holding a copy of the session's finished smoke teacher, and nothing else
    (other tests leave their own runs in the session's folder)."""
    out = tmp_path / "runs"
    shutil.copytree(smoke_runs / "smoke" / "teacher", out / "smoke" / "teacher")
    return out


# the user's line of each fault, in the words the closing table quotes
MESSAGES = {
    "disk-full": ("cannot write ", "/smoke/kd/seed0/checkpoint.pt: no space left on the device (errno ENOSPC): "
                  "free space there"),
    "read-only": ("cannot write ", "/smoke/kd/seed0/lock: "),
    "read-only-pipeline": ("the pipeline cannot start: cannot write ", "/smoke/notebooks: "),
    "truncated-teacher": ("/smoke/teacher/seed0/best.pt is damaged", "retrain the teacher with `python -m kdnb train "
                          "--config teacher --profile smoke --seed 0 --runs-dir "),
    "truncated-checkpoint": ("/smoke/baseline/seed0/checkpoint.pt is damaged: its bytes",
                             "start the run again with `python -m kdnb train --config baseline --profile smoke "
                             "--seed 0 --runs-dir "),
    "pickle-teacher": ("best.pt holds more than tensors and plain values (loading it would run code), so it was "
                       "refused and nothing in it ran", "--force`"),
    "pickle-cache": ("t: the stored result ", "is damaged or not kdnb's (UnicodeDecodeError); recomputing"),
    "tiny-width": ("setting width=0.001 makes the narrowest layers (the stem and layer1) 64 x 0.001 = 0.064 channels "
                   "wide, below the minimum of 4 channels", "use width >= 0.0625"),
}


@pytest.mark.parametrize("name", list(faults.STORAGE_FAULTS))
def test_each_fault_is_one_line_with_its_exit_code_and_nothing_written_changes(name, runs):
    result = faults.STORAGE_FAULTS[name](runs)
    assert result.ok, result
    for part in MESSAGES[name]:
        assert part in result.message, result.message
    assert result.unchanged and not result.code_ran


def test_every_fault_of_the_tool_is_tested():
    assert set(MESSAGES) == set(faults.STORAGE_FAULTS)


def test_a_full_disk_leaves_the_previous_checkpoint_and_the_run_resumes(runs, tmp_path):
    """ENOSPC at epoch 2's checkpoint: epoch 1's checkpoint stays as it was, no temporary file is left,
    and once there is space the run resumes to exactly the uninterrupted result."""
    cfg = make_config("baseline", "smoke", 0, {"epochs": 3, "patience": 3})
    run_dir = train(cfg, runs, progress=False, max_epochs=1).run_dir
    before = faults.snapshot(run_dir)
    with faults.disk_full(run_dir), pytest.raises(StorageError, match="no space left on the device") as info:
        train(cfg, runs, progress=False)
    assert "\n" not in str(info.value)
    after = faults.snapshot(run_dir)
    assert {k: after.get(k) for k in before if not k.startswith("tb/")} == \
        {k: v for k, v in before.items() if not k.startswith("tb/")}
    assert not list(run_dir.glob(".*.tmp"))
    resumed = train(cfg, runs, progress=False)
    full = train(cfg, tmp_path / "reference", progress=False)
    strip = [{k: v for k, v in h.items() if k not in TIMINGS} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMINGS} for h in full.history]
    assert resumed.metrics["test_acc"] == full.metrics["test_acc"]


def test_restart_moves_the_damaged_checkpoint_aside_and_trains_from_epoch_one(runs, tmp_path):
    run_dir = faults.interrupted_run(runs)
    faults.truncate(run_dir / "checkpoint.pt")
    damaged = (run_dir / "checkpoint.pt").read_bytes()
    rc, msg = faults.run_cli(["train", "--config", "baseline", "--profile", "smoke", "--runs-dir", str(runs),
                              "--quiet", "--restart"])
    assert rc == 0, msg
    (aside,) = run_dir.glob("checkpoint.pt.set-aside-*")
    assert aside.read_bytes() == damaged  # moved, never deleted
    assert list(run_dir.glob("checkpoint.pt.sha256.json.set-aside-*"))
    full = train(make_config("baseline", "smoke", 0), tmp_path / "reference", progress=False)
    done = json.loads((run_dir / "history.json").read_text())
    assert [{k: v for k, v in h.items() if k not in TIMINGS} for h in done] == \
        [{k: v for k, v in h.items() if k not in TIMINGS} for h in full.history]


def test_damage_is_told_apart_from_a_version_mismatch(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_torch(path, {"model": {"w": torch.ones(2)}})
    assert load_checkpoint(path, "fix", required=("model",))["model"]["w"].tolist() == [1.0, 1.0]
    side = json.loads(checksum_path(path).read_text())
    # intact (its checksum matches) but unreadable here: a version mismatch, not damage
    garbage = b"not a zip archive of another torch"
    path.write_bytes(garbage)
    write_json(checksum_path(path), {**side, "sha256": [hashlib.sha256(garbage).hexdigest()]})
    with pytest.raises(DamagedFile, match=r"is intact but this torch .* cannot read it \(written by kdnb .*: "
                                          r"use that version, or fix$"):
        load_checkpoint(path, "fix")
    write_json(checksum_path(path), {**side, "sha256": [hashlib.sha256(garbage).hexdigest()], "format": 2})
    with pytest.raises(DamagedFile, match="has checkpoint format 2, newer than this kdnb"):
        load_checkpoint(path, "fix")
    path.write_bytes(garbage[:-1])
    with pytest.raises(DamagedFile, match="is damaged: its bytes .* do not match the SHA-256"):
        load_checkpoint(path, "fix")
    save_torch(path, {"weights": torch.ones(1)})
    with pytest.raises(DamagedFile, match=r"is not a kdnb checkpoint of this kind \(no model\): fix$"):
        load_checkpoint(path, "fix", required=("model",))


def test_a_kill_between_the_checksum_and_the_checkpoint_leaves_a_valid_pair(tmp_path):
    """The sidecar is written first and keeps recent digests: the checkpoint on disk, old or new, matches."""
    path = tmp_path / "checkpoint.pt"
    save_torch(path, {"epoch": 1})
    old = path.read_bytes()
    save_torch(path, {"epoch": 2})
    path.write_bytes(old)  # as if killed after the sidecar's rename, before the checkpoint's
    assert load_checkpoint(path, "fix") == {"epoch": 1}


def test_a_checkpoint_needing_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "best.pt"
    faults.plant_pickle(path, marker, sidecar=False)  # no checksum: a file from elsewhere
    with pytest.raises(DamagedFile) as info:
        load_checkpoint(path, "retrain")
    assert "loading it would run code" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_storage_and_damage_errors_show_one_line_in_notebooks():
    assert StorageError("x")._render_traceback_() == ["StorageError: x"]
    assert DamagedFile("y")._render_traceback_() == ["DamagedFile: y"]


def test_a_cache_that_cannot_be_written_is_said_and_the_result_returned(tmp_path, capsys):
    with faults.disk_full(tmp_path):
        assert analyses.cached(tmp_path, "t", {"k": 1}, lambda: {"v": 1.5}) == {"v": 1.5}
    out = capsys.readouterr().out
    assert "t: result not stored, it is recomputed next time: cannot write " in out
    assert not list(tmp_path.iterdir())


def test_the_cache_holds_frames_exactly():
    import pandas as pd

    frame = pd.DataFrame({"config": ["kd", "kd_fa"], "seed": [0, 1], "x": [0.1 + 0.2, float("nan")],
                          "ok": [True, False], "inf": [float("inf"), -1e-300]})
    value = {"per_run": frame, "reliability": {"KD": frame.iloc[1:]}, "n": 3}
    back = analyses.decode(json.loads(json.dumps(analyses.encode(value))))
    pd.testing.assert_frame_equal(back["per_run"], frame, check_exact=True)
    pd.testing.assert_frame_equal(back["reliability"]["KD"], frame.iloc[1:], check_exact=True)
    with pytest.raises(TypeError):
        analyses.encode({"x": object()})


def test_impossible_widths_are_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"^setting width=0.06 makes .* 3.84 channels wide, below the minimum of 4 "
                                          r"channels: use width >= 0.0625$"):
        make_config("teacher", "smoke", 0, {"width": 0.06})
    assert make_config("kd", "smoke", 0, {"width": 0.0625}).width == 0.0625
    with pytest.raises(ValueError, match="minimum of 4 channels"):
        build_model("resnet18", width=0.01)


def test_the_pipeline_stops_at_a_storage_fault(tmp_path, monkeypatch):
    """A storage fault in one job: no other job starts, and the failure names the step and the file."""
    from kdnb import jobs
    from kdnb.executors import local
    from kdnb.steps import PipelineError, Step, _failure

    steps = [Step(f"0{i}_nb", {"seed": 0}, tmp_path / f"0{i}.ipynb") for i in range(3)]
    ran = []

    def execute(step, verbose=True):
        ran.append(step.notebook)
        if step.notebook == "00_nb":
            raise _failure(step, OSError(errno.ENOSPC, "No space left on device", str(step.output)))
        return []

    monkeypatch.setattr(jobs, "execute_step", execute)
    job_list = [jobs.Job(i, s) for i, s in enumerate(steps)]  # independent jobs: each would run
    results = local._one_at_a_time(job_list, verbose=False)
    assert ran == ["00_nb"]
    assert results[0].stop and f"notebook 00_nb failed: cannot write {steps[0].output}: no space left" in \
        results[0].error
    assert [r.status for r in results[1:]] == [jobs.SKIPPED] * 2
    assert all("not started: the pipeline stopped at the storage fault of 00_nb" in r.error for r in results[1:])

    class CellError(Exception):  # what papermill raises for a cell's StorageError
        ename, evalue, exec_count, cell_index, source, traceback = (
            "StorageError", "cannot write /r/x.csv: the file system is read-only", 4, 5, "ctx.save_csv(t, 'x')", [])

    err = _failure(steps[1], CellError())
    assert isinstance(err, PipelineError) and err.stop and "StorageError: cannot write /r/x.csv" in str(err)
