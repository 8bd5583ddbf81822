"""The provenance block of the published results table: every code version, no machine paths."""

from __future__ import annotations

from kdnb.engine.config import make_config
from kdnb.engine.runs import CONFIG_FILE, METRICS_FILE, run_path, write_json
from kdnb.report.tables import provenance, public_source

SOURCE = "image folder /home/someone/data/cifar10-jpeg (50000 train / 10000 test)"


def _fake_run(runs_dir, config: str, seed: int, commit: str) -> None:
    d = run_path(runs_dir, "smoke", config, seed)
    d.mkdir(parents=True)
    cfg = make_config(config, "smoke", seed).to_dict()
    write_json(d / CONFIG_FILE, {**cfg, "git_commit": commit, "kdnb_version": "0.1.0", "data_source": SOURCE,
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
    assert prov["training time (sum over these runs)"] == "3.0 min"  # teacher + two students


def test_public_source_keeps_relative_and_non_path_text():
    assert public_source("image folder /a/b/c/ (1 train / 2 test)") == "image folder c (1 train / 2 test)"
    assert public_source("synthetic (5000 train / 1000 test)") == "synthetic (5000 train / 1000 test)"
    assert public_source("torchvision CIFAR-10 at ./data") == "torchvision CIFAR-10 at ./data"
