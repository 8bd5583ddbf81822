"""Decoupled KD (kdnb/method/terms/dkd.py) against an independent formula written here, its
warm-up ramp, and the dkd presets training end to end."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from kdnb.engine.config import CONFIGS, ConfigError, make_config
from kdnb.method.objective import Objective
from kdnb.method.terms import TERMS, TermContext, TermInputs


def reference_dkd(zs, zt, y, alpha, beta, t):
    """Zhao et al. (2022), eq. (4)-(6), in probability space: b = [p_y, 1 - p_y]; the non-target
    distribution by pushing the target logit 1000 below the others."""
    gt = F.one_hot(y, zs.shape[1]).float()
    ps, pt = F.softmax(zs / t, 1), F.softmax(zt / t, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * t**2
    ls = F.log_softmax(zs / t - 1000.0 * gt, 1)
    qt = F.softmax(zt / t - 1000.0 * gt, 1)
    nckd = (qt * (qt.clamp_min(1e-30).log() - ls)).sum(1).mean() * t**2
    return alpha * tckd + beta * nckd


def _term(**options):
    return TERMS["dkd"](TermContext(["layer3"], temperature=4.0, options=options))


@pytest.mark.parametrize("classes", [10, 100])
def test_dkd_matches_the_independent_formula(classes):
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(16, classes, generator=g, dtype=torch.float64)
    zt = 3 * torch.randn(16, classes, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (16,), generator=g)
    term = _term(dkd_alpha=1.0, dkd_beta=8.0)
    got = term(TermInputs(zs.float(), {}, y, zt.float()))
    want = reference_dkd(zs, zt, y, 1.0, 8.0, 4.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # alpha and beta weight the two parts: (1, 0) and (0, 1) add up to (1, 1)
    a = _term(dkd_alpha=1.0, dkd_beta=0.0)(TermInputs(zs.float(), {}, y, zt.float()))
    b = _term(dkd_alpha=0.0, dkd_beta=1.0)(TermInputs(zs.float(), {}, y, zt.float()))
    assert (a + b).item() == pytest.approx(reference_dkd(zs, zt, y, 1.0, 1.0, 4.0).item(), rel=1e-5)


def test_dkd_is_zero_for_equal_logits_and_its_gradient_is_finite():
    z = torch.randn(8, 10, requires_grad=True)
    y = torch.arange(8)
    loss = _term()(TermInputs(z, {}, y, z.detach().clone()))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    zs = torch.randn(8, 10, requires_grad=True)
    _term()(TermInputs(zs, {}, y, 5 * torch.randn(8, 10))).backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


def test_the_warm_up_ramps_linearly_then_holds():
    term = _term(dkd_warmup=0.1)  # 3 of 30 epochs
    ramps = []
    for epoch in range(1, 6):
        term.start_epoch(epoch, 30)
        ramps.append(term.ramp.item())
    assert ramps == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    off = _term(dkd_warmup=0.0)
    off.start_epoch(1, 30)
    assert off.ramp.item() == 1.0


def test_presets_settings_and_the_objective():
    assert {"dkd", "dkd_fa_at"} <= set(CONFIGS)
    cfg = make_config("dkd_fa_at", "smoke", 0, {"dkd_beta": "4"})
    assert cfg.weights == {"ce": 1.0, "kd": 0.0, "fa": 1.0, "at": 1000.0, "dkd": 1.0}
    assert cfg.dkd_beta == 4.0 and cfg.dkd_alpha == 1.0 and cfg.needs_teacher and cfg.needs_cam
    with pytest.raises(ConfigError, match=r"dkd_beta=-1.0 must be a finite number in \[0, 1e6\]"):
        make_config("dkd", "smoke", 0, {"dkd_beta": "-1"})
    with pytest.raises(ConfigError, match="w_dkd"):
        make_config("teacher", "smoke", 0, {"w_dkd": "1"})
    obj = Objective(cfg.weights, options=cfg.term_options, stages=["layer3"],
                    student_channels={"layer3": 8}, teacher_channels={"layer3": 8})
    assert obj.active == ["ce", "fa", "at", "dkd"] and obj.terms["dkd"].beta == 4.0


@pytest.mark.parametrize("config", ["dkd", "dkd_fa_at"])
def test_the_dkd_presets_train_and_evaluate(smoke_runs, tmp_path, config):
    from kdnb.engine.train import train

    shutil.copytree(smoke_runs / "smoke" / "teacher", tmp_path / "smoke" / "teacher")
    result = train(make_config(config, "smoke", 0, {"epochs": 1}), tmp_path, progress=False)
    h = result.history[0]
    assert h["train_dkd"] > 0 and h["train_kd"] == 0.0
    assert (h["train_fa"] > 0) == (config == "dkd_fa_at")
    assert 0.0 <= result.metrics["test_acc"] <= 1.0
