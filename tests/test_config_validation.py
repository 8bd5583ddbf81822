"""Hostile numbers: every numeric setting must be finite and inside its working range, with one
line naming the setting, the value and the range, before anything is written (``--set``,
``make_config`` overrides and notebook parameters alike)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kdnb.engine.config import CONFIGS, PROFILES, RANGES, ConfigError, RunConfig, make_config, parse_value
from kdnb.method.terms import TERMS

REPO = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")

# The ranges this test expects, written out independently of kdnb.engine.config.RANGES:
# setting -> (range text, out-of-range values on both sides, in-range boundary values).
EXPECTED: dict[str, tuple[str, list, list]] = {
    "seed": ("[0, 2**63)", [-1, 2**63], [0, 2**63 - 1]),
    "split_seed": ("[0, 2**63)", [-1, 2**63], [0, 2**63 - 1]),
    "teacher_seed": ("[0, 2**63)", [-1, 2**63], [0, 2**63 - 1]),
    "val_size": ("[0, 10000000]", [-1, 10_000_001], [0, 10_000_000]),
    "train_size": ("[10, 10000000]", [9, 0, 10_000_001], [10, 10_000_000, None]),
    "synthetic_train": ("[10, 1000000]", [9, 0, 1_000_001], [10, 1_000_000]),
    "synthetic_test": ("[10, 1000000]", [9, 0, 1_000_001], [10, 1_000_000]),
    "width": ("(0, 8]", [0.0, -0.125, 8.001], [0.0625, 8.0, 8]),  # narrower: test_impossible_widths_...
    "epochs": ("[1, 10000]", [0, -1, 10_001], [1, 10_000]),
    "patience": ("[1, 10000]", [0, 10_001], [1, 10_000]),
    "batch_size": ("[2, 65536]", [1, 0, 65_537], [2, 65_536]),
    "lr": ("(0, 10]", [0.0, 0, -0.01, 10.0001, 1e308], [1e-12, 10.0, 10]),
    "momentum": ("[0, 1)", [-0.1, 1.0, 1], [0.0, 0, 0.999]),
    "weight_decay": ("[0, 1)", [-1e-9, 1.0], [0.0, 0.5]),
    "warmup_frac": ("(0, 1)", [0.0, 1.0, -0.5], [0.001, 0.999]),
    "w_ce": ("[0, 1e6]", [-1.0, 1e6 + 1, 1e300], [0.0, 1e6, 1_000_000]),
    "w_kd": ("[0, 1e6]", [-1.0, 1e6 + 1], [0.0, 1e6]),
    "w_fa": ("[0, 1e6]", [-1.0, 1e6 + 1], [0.0, 1e6]),
    "w_at": ("[0, 1e6]", [-1.0, 1e6 + 1], [0.0, 1e6]),
    "temperature": ("(0, 100]", [0.0, -4.0, 100.5], [1e-3, 100.0]),
    "at_p": ("(0, 16]", [0.0, -2.0, 16.5], [0.5, 16.0]),
    "keep": ("(0, 1]", [0.0, 1.5, -0.5], [1e-6, 1.0]),
    "threads": ("[1, 1024]", [0, -1, 1025], [1, 1024]),  # None: see test_threads_are_a_count_per_profile
    "eval_batch_size": ("[1, 65536]", [0, 65_537], [1, 65_536]),
    "checkpoint_every": ("[1, 10000]", [0, -1, 10_001], [1, 10_000]),
}
# Registered terms: every weight w_<term> is [0, 1e6] (the rule, written here); a term's own settings
# carry the range the term declares, and the test checks that range is enforced on both sides.
for _, _term in TERMS.items():
    EXPECTED.setdefault(f"w_{_term.name}", ("[0, 1e6]", [-1.0, 1e6 + 1], [0.0, 1e6]))
    for _name, _setting in _term.settings.items():
        _lo, _hi = (float(x) for x in _setting.range.strip("[]()").split(","))
        _low_open, _high_open = _setting.range.startswith("("), _setting.range.endswith(")")
        EXPECTED[_name] = (_setting.range, [_lo - 1.0, _hi + 1.0] + [_lo] * _low_open + [_hi] * _high_open,
                           [_lo] * (not _low_open) + [_hi] * (not _high_open) + [(_lo + _hi) / 2])
TYPES = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
NUMERIC = sorted(n for n, t in TYPES.items() if t.startswith(("int", "float")))


def _is_int(name: str) -> bool:
    return TYPES[name].startswith("int")


def _kind(name: str) -> str:
    return "an integer" if _is_int(name) else "a finite number"


def _expect_error(name: str, value, config: str = "kd", profile: str = "cpu") -> str:
    with pytest.raises(ConfigError) as info:
        make_config(config, profile, 0, {name: value})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"setting {name}=")
    assert f"must be {_kind(name)} in {EXPECTED[name][0]}" in msg, msg
    return msg


def test_every_numeric_setting_has_a_range_and_the_tables_agree():
    assert sorted(RANGES) == NUMERIC
    assert {n: r for n, (r, _, _) in EXPECTED.items()} == RANGES


def test_the_issue_message():
    with pytest.raises(ConfigError, match=r"^setting lr=nan must be a finite number in \(0, 10\]$"):
        make_config("baseline", "smoke", 0, {"lr": "nan"})


@pytest.mark.parametrize("name,value", [(n, v) for n in NUMERIC for v in (NAN, INF, -INF)])
def test_non_finite_python_floats_are_refused(name, value):
    """From a notebook's ``overrides={"lr": float("nan")}``: also for the integer settings."""
    msg = _expect_error(name, value)
    assert f"{name}={value!r} " in msg


@pytest.mark.parametrize("name,text", [(n, t) for n in NUMERIC for t in ("nan", "inf", "-inf", "Infinity")])
def test_non_finite_text_is_refused_with_the_range(name, text):
    """The ``--set`` path: ``parse_value`` reads nan/inf as numbers, ``validate`` names the range."""
    _expect_error(name, text)


@pytest.mark.parametrize("name,value", [(n, v) for n, (_, bad, _) in EXPECTED.items() for v in bad])
def test_out_of_range_values_are_refused(name, value):
    msg = _expect_error(name, value)
    if abs(value) < 1e9:
        assert f"{name}={value!r} " in msg


@pytest.mark.parametrize("name,value", [(n, v) for n, (_, bad, _) in EXPECTED.items() for v in bad
                                        if abs(v) < 1e9])
def test_out_of_range_text_is_refused(name, value):
    _expect_error(name, str(value))


@pytest.mark.parametrize("name,value", [(n, v) for n, (_, _, good) in EXPECTED.items() for v in good])
def test_boundary_values_are_accepted(name, value):
    cfg = make_config("kd", "cpu", 0, {name: value})
    assert getattr(cfg, name) == value
    if value is not None:
        assert getattr(make_config("kd", "cpu", 0, {name: repr(value)}), name) == value


@pytest.mark.parametrize("name,text", [("epochs", "3.5"), ("epochs", "1e3"), ("seed", "0.5"), ("threads", "nan")])
def test_integer_settings_given_other_numbers_name_the_range(name, text):
    _expect_error(name, text)


@pytest.mark.parametrize("name,value,needle", [
    ("epochs", 3.0, "setting epochs=3.0: expected int"),  # unchanged: whole floats are a type error
    ("epochs", 2.5, "setting epochs=2.5: expected int"),
    ("lr", True, "setting lr=True: expected float"),
    ("lr", "fast", "setting lr='fast': expected float"),
    ("epochs", "many", "setting epochs='many': expected int"),
])
def test_type_errors_are_unchanged(name, value, needle):
    with pytest.raises(ConfigError) as info:
        make_config("kd", "cpu", 0, {name: value})
    assert str(info.value) == needle


def test_huge_integers_give_a_short_line():
    for value in (10**400, 10**5000):
        with pytest.raises(ConfigError) as info:
            make_config("kd", "cpu", 0, {"w_kd": value})
        assert len(str(info.value)) < 120 and "setting w_kd=" in str(info.value)


def test_parse_value_reads_non_finite_floats():
    assert math.isnan(parse_value("lr", "nan"))
    assert parse_value("lr", "inf") == INF and parse_value("lr", "-inf") == -INF


def test_synthetic_sizes_are_checked_against_each_other():
    make_config("baseline", "smoke", 0, {"val_size": 1190})  # smoke: 1200 synthetic training images
    with pytest.raises(ConfigError, match=r"^setting val_size=1191 must be in \[0, 1190\]"):
        make_config("baseline", "smoke", 0, {"val_size": 1191})
    make_config("baseline", "smoke", 0, {"train_size": 1000})  # 1200 - val_size 200
    with pytest.raises(ConfigError, match=r"^setting train_size=1001 must be in \[10, 1000\] or None"):
        make_config("baseline", "smoke", 0, {"train_size": 1001})


def test_existing_rules_still_hold():
    with pytest.raises(ConfigError, match="all loss weights are 0"):
        make_config("baseline", "cpu", 0, {"w_ce": 0.0})
    with pytest.raises(ConfigError, match="the teacher trains with cross-entropy only"):
        make_config("teacher", "cpu", 0, {"w_kd": 0.5})


def test_threads_are_a_count_per_profile():
    """The thread count is part of a run's numbers: one per profile (cpu: the 2 threads its recorded
    numbers were trained with; smoke: 1, so two smoke runs share 2 cores), never "the machine's",
    which None once meant."""
    assert {p: make_config("kd", p, 0).threads for p in PROFILES} == {"smoke": 1, "cpu": 2, "paper": 4}
    assert make_config("teacher", "cpu", 0).threads == 2
    for value in (None, "none"):
        with pytest.raises(ConfigError, match=r"^setting threads=None must be an integer in \[1, 1024\]: the thread "
                                              r"count is part of a run's numbers \(profile cpu: 2\)$"):
            make_config("kd", "cpu", 0, {"threads": value})


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_and_profile_validates(config, profile):
    make_config(config, profile, 0)


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize("setting,needle", [
    ("lr=nan", "kdnb: error: setting lr=nan must be a finite number in (0, 10]"),
    ("epochs=inf", "kdnb: error: setting epochs='inf' must be an integer in [1, 10000]"),
])
def test_cli_refuses_non_finite_before_creating_anything(tmp_path, cli_env, setting, needle):
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "kdnb", "train", "--config", "baseline", "--profile", "smoke",
                          "--set", setting, "--runs-dir", str(runs)], cwd=tmp_path, env=cli_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [needle]
    assert not runs.exists() and list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


# ------------------------------------------------------------------ notebook parameters
@pytest.mark.parametrize("params,needle", [
    ({"epochs": 0}, "setting epochs=0 must be an integer in [1, 10000]"),
    ({"epochs": NAN}, "setting epochs=nan must be an integer in [1, 10000]"),
    ({"epochs": "inf"}, "setting epochs='inf' must be an integer in [1, 10000]"),
    ({"seed": -1}, "setting seed=-1 must be an integer in [0, 2**63)"),
    ({"overrides": {"lr": INF}}, "setting lr=inf must be a finite number in (0, 10]"),
    ({"overrides": {"lr": NAN}}, "setting lr=nan must be a finite number in (0, 10]"),
    ({"overrides": {"batch_size": 1}}, "setting batch_size=1 must be an integer in [2, 65536]"),
])
def test_notebook_parameters_fail_in_context(tmp_path, params, needle):
    from kdnb.report.notebook import context

    with pytest.raises(ConfigError) as info:
        context("smoke", runs_dir="runs", base=tmp_path, **params)
    assert str(info.value) == needle
    assert list(tmp_path.iterdir()) == []


def test_notebook_whole_float_epochs_still_work(tmp_path, monkeypatch):
    from kdnb.report.notebook import context

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile-cache"))
    ctx = context("smoke", runs_dir="runs", base=tmp_path, epochs=2.0, seed=1.0)
    assert ctx.config("kd").epochs == 2 and ctx.config("kd").seed == 1
