"""The engine's per-epoch mask statistics (``mask_share``, ``cam_short_share``) and the size-matched
random control in training: its masks keep exactly what the Grad-CAM masks of the same batches keep."""

from __future__ import annotations

import math

import pytest
import torch

import kdnb.engine.step as step
from kdnb.engine.config import make_config
from kdnb.engine.runs import read_json
from kdnb.engine.train import train
from kdnb.report.lookup import history_frame, mask_statistics

# A fixed cam pattern: image i of a batch is positive on POSITIVES[i % 6] of the 8×8 = 64 positions.
POSITIVES = (0, 1, 5, 16, 40, 64)


def _fixed_cam(like: torch.Tensor) -> torch.Tensor:
    b = like.shape[0]
    flat = torch.zeros(b, 64, dtype=like.dtype, device=like.device)
    for i in range(b):
        flat[i, : POSITIVES[i % 6]] = torch.linspace(1.0, 0.1, 64)[: POSITIVES[i % 6]]
    return flat.view(b, 8, 8)


def _config(name: str, **settings):
    # 4 full batches of 64: every step sees the same pattern, so the epoch mean is the pattern's
    return make_config("kd_fa_at", "smoke", 0, {"epochs": 1, "patience": 1, "train_size": 256, "val_size": 200,
                                                "name": name, **settings})


def test_statistics_on_a_fixed_cam_match_an_independent_count(smoke_runs, monkeypatch):
    keep = 0.25
    real = step.teacher_forwards

    def fixed(model, x, layers, target=None):
        return {k: (logits, feats, None if cam is None else _fixed_cam(cam))
                for k, (logits, feats, cam) in real(model, x, layers, target).items()}

    monkeypatch.setattr(step, "teacher_forwards", fixed)
    # independently: keep asks for ceil(keep * 64) positions (the student's layer3 is 8×8, as the cam)
    wanted = math.ceil(keep * 64)
    pattern = [POSITIVES[i % 6] for i in range(64)]
    short = sum(p < wanted for p in pattern) / 64
    kept = sum(min(p, wanted) for p in pattern) / 64 / 64
    for mode in ("gradcam", "random_matched"):
        h = train(_config(f"fixed-{mode}-{keep:g}", mask_mode=mode, keep=keep), smoke_runs,
                         progress=False).history[0]
        assert h["cam_short_share"] == pytest.approx(short, abs=1e-12), mode
        assert h["mask_share"] == pytest.approx(kept, abs=1e-12), mode


def test_matched_control_keeps_what_gradcam_keeps_on_the_same_batches(smoke_runs):
    """Same seed, same batches, same frozen teacher: the size-matched random masks keep exactly as many
    positions as the Grad-CAM masks, every step, so the epoch statistics are equal bit for bit."""
    grad = train(_config("stat-gradcam", keep=0.25), smoke_runs, progress=False)
    matched = train(_config("stat-matched", mask_mode="random_matched", keep=0.25), smoke_runs, progress=False)
    unmatched = train(_config("stat-random", mask_mode="random", keep=0.25), smoke_runs, progress=False)
    g, m, u = grad.history[0], matched.history[0], unmatched.history[0]
    assert m["mask_share"] == g["mask_share"] and m["cam_short_share"] == g["cam_short_share"]
    assert m["train_loss"] != g["train_loss"]  # other positions, other losses
    assert u["mask_share"] == pytest.approx(0.25) and u["cam_short_share"] is None  # no cam: null
    assert g["mask_share"] <= 0.25 + 1e-9 and 0 <= g["cam_short_share"] <= 1
    # the null is stored as JSON null and read back as NaN
    assert read_json(unmatched.run_dir / "history.json")[0]["cam_short_share"] is None
    assert math.isnan(history_frame(unmatched.history)["cam_short_share"][0])
    assert math.isnan(mask_statistics(unmatched.history)["cam_short_share"])
    assert mask_statistics(grad.history)["mask_share"] == pytest.approx(g["mask_share"])


def test_old_histories_without_mask_statistics_load():
    h = history_frame([{"epoch": 1, "val_acc": 0.5}])
    assert math.isnan(h["mask_share"][0]) and math.isnan(h["cam_short_share"][0]) and h["val_acc"][0] == 50.0
    assert all(math.isnan(v) for v in mask_statistics([{"epoch": 1}]).values())
    assert all(math.isnan(v) for v in mask_statistics([]).values())
