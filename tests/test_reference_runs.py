"""The five configurations (and the teacher) compute exactly what they computed before the loss
terms, mask sources, networks and datasets became registries: their smoke histories and metrics
are compared with tests/reference/smoke.json (written by tools/record_reference.py; the one-epoch
`cpu` reference is checked with its --check). It was recorded on the code before that refactor at
2 threads; when the smoke profile went to 1 thread it was recorded again, on code that still
reproduced the 2-thread recording bit for bit at 2 threads.

Bit-exact numbers hold only where the reference was recorded (same torch, CPU instruction set, AMX
and thread count); elsewhere the first epoch's loss terms are compared at 1 % (training diverges
slowly from other rounding), which still catches a changed loss, weight, mask or batch order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdnb.engine.config import STUDENT_CONFIGS, TEACHER
from kdnb.engine.reference import comparable, differences, platform_fingerprint
from kdnb.engine.runs import read_json

REFERENCE = Path(__file__).parent / "reference" / "smoke.json"


@pytest.fixture(scope="module")
def smoke_series(smoke_pipeline) -> dict:
    """The session's smoke series (tests/conftest.py): its teacher and its cohort of the five
    students are the runs the reference was recorded from (same profile, seed and threads)."""
    runs = smoke_pipeline.runs_dir
    return {name: comparable(read_json(runs / "smoke" / name / "seed0" / "history.json"),
                             read_json(runs / "smoke" / name / "seed0" / "metrics.json"))
            for name in (TEACHER, *STUDENT_CONFIGS)}


def test_the_five_configurations_reproduce_the_recorded_numbers(smoke_series):
    ref = json.loads(REFERENCE.read_text())
    if ref["platform"] == platform_fingerprint():
        assert differences(ref, smoke_series) == []
        return
    for name, r in ref["runs"].items():  # another platform: the first epoch's terms, at 1 %
        first, new = r["history"][0], smoke_series[name]["history"][0]
        for key in [k for k in first if k.startswith("train_")]:
            assert new[key] == pytest.approx(first[key], rel=1e-2, abs=1e-6), (name, key)


def test_the_comparison_fails_on_a_changed_number(smoke_series):
    ref = json.loads(REFERENCE.read_text())
    changed = json.loads(json.dumps(smoke_series))
    changed["kd_fa_at"]["history"][0]["train_at"] += 1e-12
    changed["kd"]["metrics"]["test_acc"] = 0.5
    changed["baseline"]["history"][0]["train_new_term"] = 0.25
    diff = differences(ref, changed)
    if ref["platform"] == platform_fingerprint():
        assert len(diff) == 3
    assert any("kd_fa_at epoch 1 train_at" in d for d in diff)
    assert any("kd test_acc" in d for d in diff)
    assert any("train_new_term: new key" in d for d in diff)
