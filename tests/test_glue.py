"""The glue the notebooks stand on: the analysis cache and its invalidation, resuming the teacher's
one-cycle schedule, and the refusal of a teacher trained on another split."""

from __future__ import annotations

import time

import pytest

from kdnb.engine.config import make_config
from kdnb.engine.runs import BEST_FILE, CONFIG_FILE, METRICS_FILE, TIMING_FIELDS, run_path, write_json
from kdnb.engine.train import TrainingError, train
from kdnb.report import analyses


def test_cached_result_is_reused_until_its_key_changes(tmp_path, capsys):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    key = {"runs": [["kd", 0, 1, 2]], "code": "abc"}
    assert analyses.cached(tmp_path, "t", key, compute) == {"value": 1}
    assert analyses.cached(tmp_path, "t", dict(key), compute) == {"value": 1}  # an equal key: stored result
    assert "reusing the stored result" in capsys.readouterr().out
    assert analyses.cached(tmp_path, "t", {**key, "code": "abd"}, compute) == {"value": 2}
    assert analyses.cached(None, "t", key, compute) == {"value": 3}  # no cache directory: always computed
    assert len(calls) == 3


def test_a_damaged_cache_file_is_recomputed_not_trusted(tmp_path):
    key = {"k": 1}
    analyses.cached(tmp_path, "t", key, lambda: "first")
    (stored,) = tmp_path.glob(".cache-t-*.json")
    stored.write_bytes(b"not a pickle")
    assert analyses.cached(tmp_path, "t", key, lambda: "again") == "again"


def test_code_fingerprint_follows_every_source_file(tmp_path):
    pkg = tmp_path / "kdnb"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "data.py").write_text("X = 1\n")
    first = analyses._code_fingerprint(pkg)
    assert analyses._code_fingerprint(pkg) == first
    (pkg / "engine" / "data.py").write_text("X = 2\n")  # a module far from the analysis
    second = analyses._code_fingerprint(pkg)
    assert second != first
    (pkg / "engine" / "new.py").write_text("")
    assert analyses._code_fingerprint(pkg) != second
    assert analyses._code_fingerprint() != first  # the real package is hashed by default


def test_run_fingerprint_changes_when_a_checkpoint_is_rewritten(tmp_path):
    d = run_path(tmp_path, "smoke", "kd", 0)
    d.mkdir(parents=True)
    (d / BEST_FILE).write_bytes(b"weights")
    before = analyses._run_fingerprint(tmp_path, "smoke", [("kd", 0)])
    time.sleep(0.01)
    (d / BEST_FILE).write_bytes(b"weights, retrained")
    assert analyses._run_fingerprint(tmp_path, "smoke", [("kd", 0)]) != before


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_FIELDS} for h in history]


@pytest.mark.slow
def test_teacher_one_cycle_schedule_resumes_where_it_stopped(tmp_path):
    cfg = make_config("teacher", "smoke", 0, {"epochs": 2, "patience": 2, "synthetic_train": 400, "val_size": 80,
                                              "synthetic_test": 80})
    assert cfg.schedule == "onecycle"
    full = train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, max_epochs=1)
    rest = train(cfg, tmp_path / "b", progress=False)
    lrs = [h["lr"] for h in full.history]
    assert lrs[0] != lrs[1]  # the schedule moves every epoch, so a restarted one would show
    assert _strip(rest.history) == _strip(full.history)
    assert rest.metrics["test_acc"] == full.metrics["test_acc"]


@pytest.mark.parametrize("setting", ["val_size", "split_seed"])
def test_a_teacher_trained_on_another_split_is_refused_before_data_loads(tmp_path, setting):
    student = make_config("kd", "smoke", 0, {"data_dir": str(tmp_path / "no-data-here")})
    teacher = make_config("teacher", "smoke", 0, {setting: getattr(student, setting) + 1})
    d = run_path(tmp_path, "smoke", "teacher", 0)
    d.mkdir(parents=True)
    write_json(d / CONFIG_FILE, teacher.to_dict())
    write_json(d / METRICS_FILE, {"finished": True})
    (d / BEST_FILE).write_bytes(b"")
    with pytest.raises(TrainingError, match=f"{setting}=.*would have trained on this run's validation images"):
        train(student, tmp_path, progress=False)


# The tables the notebooks print. Their nbval check cells used to compare each with an old print of
# itself (a dict against its own earlier rendering); these compare them with independent computations.

@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_profiles_table_shows_the_split_a_run_gets(profile):
    """Train and validation counts as the engine's split gives them (synthetic labels for smoke, the
    50,000 labels of CIFAR-10's training set, 5,000 per class, otherwise)."""
    import torch

    from kdnb.engine.data import make_synthetic, stratified_split
    from kdnb.report.notebook import profiles_table

    cfg, teacher = make_config("kd", profile, 0), make_config("teacher", profile, 0)
    labels = (make_synthetic(cfg.synthetic_train, 10).train_y if cfg.data_dir == "synthetic"
              else torch.arange(10).repeat_interleave(5000))
    train_idx, val_idx = stratified_split(labels, cfg.val_size, cfg.train_size, cfg.split_seed)
    row = profiles_table().loc[profile]
    assert (int(row["train images"]), int(row["validation images"])) == (len(train_idx), len(val_idx))
    assert (float(row["student width"]), float(row["teacher width"])) == (cfg.width, teacher.width)
    assert (int(row["student epochs (max)"]), int(row["teacher epochs"]), int(row["patience"])) == (
        cfg.epochs, teacher.epochs, cfg.patience)


def test_presets_table_gives_each_configuration_the_weights_its_objective_uses():
    """Rows by label, weights as the training engine's objective applies them."""
    import torch

    from kdnb.engine.config import CONFIGS
    from kdnb.engine.step import build_stepper
    from kdnb.method.models import build_model
    from kdnb.report.notebook import presets_table
    from kdnb.report.series import LABELS

    table = presets_table()
    assert sorted(table.index) == sorted(LABELS[c] for c in CONFIGS)
    teacher = build_model("resnet50", cbam=True, width=0.125).eval()
    for c in CONFIGS:
        cfg = make_config(c, "smoke", 0, {"compile": False})
        stepper = build_stepper(cfg, teacher if cfg.needs_teacher else None, torch.device("cpu"), steps_per_epoch=1)
        used = {f"w_{t}": w for t, w in stepper.objective.weights.items()}
        assert table.loc[LABELS[c]].to_dict() == used, c


def test_paper_table_agrees_with_the_gains_the_paper_states():
    """The paper's text states its gains in points (abstract and section 4: KD +3.08 over the baseline,
    FA +2.22, FA+AT +3.21, and FA+AT +0.13 over KD): the accuracies kdnb quotes must reproduce them."""
    from kdnb.report.tables import paper_table

    delta = paper_table()["paper Δ vs baseline (pp)"]
    assert (delta["KD"], delta["KD+FA"], delta["KD+FA+AT"]) == (3.08, 2.22, 3.21)
    accuracy = paper_table()["paper test top-1 (%)"]
    assert round(accuracy["KD+FA+AT"] - accuracy["KD"], 2) == 0.13
    assert accuracy.idxmax() == "KD+FA+AT"
