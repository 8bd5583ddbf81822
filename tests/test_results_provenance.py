"""The provenance block of the published results table: every code version, no machine paths."""

from __future__ import annotations

from kdnb.engine.config import make_config
from kdnb.engine.runs import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, run_path, write_json
from kdnb.report.tables import TRAINING_TIME, provenance, public_source

SOURCE = "image folder /home/someone/data/cifar10-jpeg (50000 train / 10000 test)"


def _fake_run(runs_dir, config: str, seed: int, commit: str, **recorded) -> None:
    d = run_path(runs_dir, "smoke", config, seed)
    d.mkdir(parents=True)
    cfg = make_config(config, "smoke", seed).to_dict()
    write_json(d / CONFIG_FILE, {**cfg, **recorded, "git_commit": commit, "kdnb_version": "0.1.0", "data_source": SOURCE,
                                 "device_name": "cpu-x", "device_type": "cpu", "torch_threads": 2,
                                 "torch_version": "2.14.1", "n_train": 10, "n_val": 2, "n_test": 5})
    write_json(d / METRICS_FILE, {"test_acc": 0.5, "train_seconds": 60.0})


def test_provenance_lists_every_commit_and_no_absolute_path(tmp_path):
    _fake_run(tmp_path, "teacher", 0, "a" * 40)
    _fake_run(tmp_path, "baseline", 0, "b" * 40)
    _fake_run(tmp_path, "kd", 0, "c" * 40)
    prov = provenance(tmp_path, "smoke", [0], configs=["baseline", "kd"])
    assert prov["kdnb"] == "0.1.0 (git aaaaaaaaaa, bbbbbbbbbb, cccccccccc)"
    assert prov["data"] == "image folder cifar10-jpeg (50000 train / 10000 test)"
    assert prov[TRAINING_TIME] == "3.0 min"  # teacher + two students, trained alone (no history)


def test_training_time_counts_a_cohorts_epochs_once(tmp_path):
    """Every member of a cohort records the cohort's wall time as its ``train_seconds``; the
    provenance's training time is the wall time: each epoch split among the runs it trained."""
    _fake_run(tmp_path, "teacher", 0, "a" * 40)  # trained alone: its 60 s count whole
    for config, sizes in {"baseline": [3, 3, 2, 1], "kd": [3, 3, 2], "kd_fa": [3, 3]}.items():
        _fake_run(tmp_path, config, 0, "a" * 40)  # train_seconds 60 each: the sum would say 4.0 min
        write_json(run_path(tmp_path, "smoke", config, 0) / HISTORY_FILE,
                   [{"epoch": e + 1, "seconds": 30.0, "cohort_size": n} for e, n in enumerate(sizes)])
    prov = provenance(tmp_path, "smoke", [0], configs=["baseline", "kd", "kd_fa"])
    assert prov[TRAINING_TIME] == "3.0 min"  # teacher 60 s + the cohort's 4 epochs of 30 s
    only_kd = provenance(tmp_path, "smoke", [0], configs=["kd"])  # its share: 10 + 10 + 15 s, with the teacher
    assert only_kd[TRAINING_TIME] == f"{(60 + 35) / 60:.1f} min"


def test_public_source_keeps_relative_and_non_path_text():
    assert public_source("image folder /a/b/c/ (1 train / 2 test)") == "image folder c (1 train / 2 test)"
    assert public_source("synthetic (5000 train / 1000 test)") == "synthetic (5000 train / 1000 test)"
    assert public_source("torchvision CIFAR-10 at ./data") == "torchvision CIFAR-10 at ./data"


def test_provenance_names_the_arithmetic_the_runs_used_not_the_one_asked_for(tmp_path):
    """`amp` asks for bf16; a CPU without AMX trains in fp32 all the same (``amp_active`` false)."""
    for name, runs in {"fp32": [False, False], "bf16": [True, True], "mixed": [True, False]}.items():
        for config, active in zip(["baseline", "kd"], runs):
            _fake_run(tmp_path / name, config, 0, "a" * 40, amp=True, amp_active=active, compile=True)
    torch = {name: provenance(tmp_path / name, "smoke", [0], configs=["baseline", "kd"])["torch"]
             for name in ("fp32", "bf16", "mixed")}
    assert torch == {"fp32": "2.14.1, fp32, compiled", "bf16": "2.14.1, bf16 autocast, compiled",
                     "mixed": "2.14.1, bf16 autocast in 1 of 2 runs, the others fp32 or not recorded, compiled"}
    _fake_run(tmp_path / "old", "baseline", 0, "a" * 40, amp=True, compile=False)  # before amp_active was kept
    assert provenance(tmp_path / "old", "smoke", [0], configs=["baseline"])["torch"] == (
        "2.14.1, bf16 autocast asked for (whether it ran is not recorded)")


def test_provenance_counts_runs_that_trained_eager_after_a_failed_compile(tmp_path):
    """A run whose compile failed even with a fresh cache trained eager (``compiled: false``)."""
    _fake_run(tmp_path, "baseline", 0, "a" * 40, amp=False, compile=True, compiled=True)
    _fake_run(tmp_path, "kd", 0, "a" * 40, amp=False, compile=True, compiled=False)
    assert provenance(tmp_path, "smoke", [0], configs=["baseline", "kd"])["torch"] == (
        "2.14.1, fp32, compiled (1 of 2 runs eager after a failed compile)")
