"""The training loop: learning, determinism, kill-and-resume, skipping, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdnb.engine.config import make_config
from kdnb.engine.runs import CHECKPOINT_FILE, METRICS_FILE, TIMING_FIELDS
from kdnb.engine.train import TrainingError, train

REPO = Path(__file__).resolve().parents[1]
TIMING = TIMING_FIELDS


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_loss_decreases_on_synthetic_data(tmp_path):
    cfg = make_config("baseline", "smoke", 0, {"epochs": 3, "patience": 3})
    res = train(cfg, tmp_path, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0]
    assert res.metrics["finished"] and 0 <= res.metrics["test_acc"] <= 1
    assert res.history[-1]["train_acc"] > 0.2  # chance is 0.1


def test_same_seed_same_history_different_seed_differs(tmp_path, smoke_runs):
    def run(seed, where):
        import shutil
        shutil.copytree(smoke_runs / "smoke" / "teacher", where / "smoke" / "teacher", dirs_exist_ok=True)
        return train(make_config("kd_at", "smoke", seed, {"epochs": 1}), where, progress=False)

    a = run(0, tmp_path / "a")
    b = run(0, tmp_path / "b")
    c = run(1, tmp_path / "c")
    assert _strip(a.history) == _strip(b.history)
    assert a.metrics["test_acc"] == b.metrics["test_acc"]
    assert _strip(a.history) != _strip(c.history)


def test_finished_run_is_not_retrained(tmp_path):
    cfg = make_config("baseline", "smoke", 0, {"epochs": 1})
    first = train(cfg, tmp_path, progress=False)
    stamp = (first.run_dir / METRICS_FILE).stat().st_mtime_ns
    again = train(cfg, tmp_path, progress=False)
    assert again.metrics == first.metrics
    assert (first.run_dir / METRICS_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(TrainingError, match="different settings"):
        train(make_config("baseline", "smoke", 0, {"epochs": 1, "lr": 0.02}), tmp_path, progress=False)
    forced = train(cfg, tmp_path, progress=False, force=True)
    assert forced.metrics["test_acc"] == first.metrics["test_acc"]
    assert list(first.run_dir.parent.glob("seed0.replaced-*"))  # the old run is kept, not overwritten


def test_partial_run_resumes_to_the_uninterrupted_result(tmp_path, smoke_runs):
    import shutil
    for d in ("a", "b"):
        shutil.copytree(smoke_runs / "smoke" / "teacher", tmp_path / d / "smoke" / "teacher")
    cfg = make_config("kd_fa_at", "smoke", 0, {"epochs": 3, "patience": 3, "mask_mode": "random"})
    full = train(cfg, tmp_path / "a", progress=False)
    part = train(cfg, tmp_path / "b", progress=False, max_epochs=1)
    assert not part.metrics["finished"]
    part = train(cfg, tmp_path / "b", progress=False, max_epochs=1)
    assert len(part.history) == 2
    rest = train(cfg, tmp_path / "b", progress=False)
    assert _strip(rest.history) == _strip(full.history)
    assert rest.metrics["test_acc"] == full.metrics["test_acc"]


def test_missing_teacher_is_a_clear_error_before_data_loads(tmp_path):
    cfg = make_config("kd", "smoke", 0, {"data_dir": str(tmp_path / "does-not-exist")})
    with pytest.raises(TrainingError, match="--config teacher --profile smoke"):
        train(cfg, tmp_path, progress=False)


def test_nan_loss_names_epoch_step_and_term(tmp_path, smoke_runs, monkeypatch):
    import kdnb.method.terms.kd as kd_term

    monkeypatch.setattr(kd_term, "kd_loss", lambda s, t, T: (s * float("nan")).sum())
    with pytest.raises(TrainingError, match=r"'kd' became NaN/inf at epoch 1, step 1"):
        train(make_config("kd", "smoke", 0, {"epochs": 1}), smoke_runs, progress=False)


def test_all_empty_causal_masks_stop_the_run(tmp_path, smoke_runs, monkeypatch):
    """A Grad-CAM that is zero everywhere would silently turn FA/AT off (it happened once, with a
    compiled teacher under bf16): the engine refuses to go on after such an epoch."""
    import torch

    import kdnb.engine.step as step

    real = step.teacher_forwards

    def zero_cam(model, x, layers, target=None):
        return {k: (logits, feats, None if cam is None else torch.zeros_like(cam))
                for k, (logits, feats, cam) in real(model, x, layers, target).items()}

    monkeypatch.setattr(step, "teacher_forwards", zero_cam)
    with pytest.raises(TrainingError, match="every causal mask of epoch 1 was empty"):
        train(make_config("kd_at", "smoke", 0, {"epochs": 1, "name": "zero-cam"}), smoke_runs, progress=False)


def test_masks_keep_their_share_in_the_history(tmp_path, smoke_runs):
    result = train(make_config("kd_fa_at", "smoke", 0, {"epochs": 1, "name": "share-check"}), smoke_runs,
                   progress=False)
    share = result.history[0]["mask_share"]
    assert 0.3 < share <= 0.5 + 1e-6  # keep 0.5 of the positions where the cam is > 0
    for mode, expected in (("none", 1.0), ("random", 0.25)):
        result = train(make_config("kd_fa_at", "smoke", 0, {"epochs": 1, "name": f"share-{mode}", "mask_mode": mode,
                                                            "keep": 0.25}), smoke_runs, progress=False)
        assert abs(result.history[0]["mask_share"] - expected) < 1e-6, mode


def _cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "kdnb", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, **kw)


@pytest.mark.slow
def test_kill_minus_nine_mid_epoch_then_resume_equals_uninterrupted(tmp_path, cli_env):
    args = ["train", "--config", "baseline", "--profile", "smoke", "--quiet",
            "--set", "epochs=3", "--set", "patience=3", "--set", "synthetic_train=1200"]
    ref = _cli([*args, "--runs-dir", str(tmp_path / "ref")], cli_env, timeout=600)
    assert ref.returncode == 0, ref.stderr
    runs = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "kdnb", *args, "--runs-dir", str(runs)], cwd=REPO, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = runs / "smoke" / "baseline" / "seed0" / CHECKPOINT_FILE
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside epoch 2
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = ckpt.parent
    assert not (run_dir / METRICS_FILE).exists()
    resumed = _cli([*args, "--runs-dir", str(runs)], cli_env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((run_dir / METRICS_FILE).read_text())
    want = json.loads((tmp_path / "ref" / "smoke" / "baseline" / "seed0" / METRICS_FILE).read_text())
    for key in ("best_epoch", "epochs_run", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert got[key] == want[key], key
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("extra,needle", [
    (["--config", "distill"], "unknown config 'distill'"),
    (["--config", "kd", "--profile", "huge"], "unknown profile 'huge'"),
    (["--config", "kd", "--set", "kepp=0.5"], "unknown setting 'kepp'"),
    (["--config", "kd", "--set", "keep=1.5"], "keep=1.5 must be a finite number in (0, 1]"),
    (["--config", "kd", "--set", "w_kd=-1"], "w_kd=-1.0 must be a finite number in [0, 1e6]"),
    (["--config", "kd", "--set", "batch_size=0"], "batch_size=0 must be an integer in [2, 65536]"),
    (["--config", "kd", "--set", "stages=layer3,layer9"], "unknown stage 'layer9'"),
    (["--config", "kd", "--set", "stem=imagenet"], "stem='imagenet' is unknown"),
    (["--config", "kd", "--set", "lr=fast"], "lr='fast': expected float"),
    (["--config", "kd", "--set", "lr=nan"], "lr=nan must be a finite number in (0, 10]"),
    (["--config", "baseline", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
])
def test_bad_values_give_one_line_errors(tmp_path, capsys, extra, needle):
    """In this process (``kdnb.cli.main``, what ``python -m kdnb`` calls; tests/test_config_validation.py
    runs the command itself): exit code 2, one line, nothing trained."""
    from kdnb.cli import main

    code = main(["train", "--profile", "smoke", "--runs-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not list(tmp_path.rglob("checkpoint.pt"))


def test_a_run_is_not_resumed_in_another_precision(tmp_path, capsys):
    """bf16 autocast is active only on some CPUs (AMX): a run begun on such a machine and resumed on
    another would mix bf16 and fp32 epochs. The resume refuses in one line naming both and the fix;
    the checkpoint stays; another CPU model with the same precision is only noted."""
    from kdnb.engine.runs import CONFIG_FILE, read_json, write_json

    over = {"synthetic_train": 400, "val_size": 80, "synthetic_test": 100, "epochs": 2, "compile": False}
    cfg = make_config("baseline", "smoke", 0, over)
    first = train(cfg, tmp_path, progress=False, max_epochs=1)
    saved = read_json(first.run_dir / CONFIG_FILE)
    write_json(first.run_dir / CONFIG_FILE, {**saved, "amp_active": not saved["amp_active"]})
    ckpt = (first.run_dir / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(TrainingError) as info:
        train(cfg, tmp_path, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "mixing precisions" in msg and "--restart" in msg
    assert (first.run_dir / CHECKPOINT_FILE).read_bytes() == ckpt
    write_json(first.run_dir / CONFIG_FILE, {**saved, "device_name": "another CPU"})
    done = train(cfg, tmp_path, progress=True)
    assert done.metrics["finished"] and "began on another CPU" in capsys.readouterr().out
