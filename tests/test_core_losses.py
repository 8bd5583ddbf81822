"""Losses against independent computations (NumPy, written differently from kdnb.method.losses).

Each test would fail on one of the released notebook's mistakes: MSE on channel means instead
of KL, raw features instead of attention maps, masks ignored, detached student features.
"""

import numpy as np
import pytest
import torch

from kdnb.method.losses import Connector, at_loss, attention_map, fa_loss, kd_loss
from kdnb.method.models import build_model
from kdnb.method.objective import Objective


def np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_kd_equals_hinton_formula(T):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 10)) * 3, rng.normal(size=(6, 10)) * 3
    p_t, p_s = np_softmax(t / T), np_softmax(s / T)
    expected = T * T * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    got = kd_loss(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_for_equal_logits_and_directional():
    z = torch.randn(4, 10)
    assert kd_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(4, 10), torch.randn(4, 10) * 3
    assert kd_loss(a, b).item() != pytest.approx(kd_loss(b, a).item(), rel=1e-3)  # KL(t||s), not symmetric


def np_attention(f, p=2, size=None):
    a = np.abs(f) ** p
    a = a.sum(axis=1) / f.shape[1]
    if size is not None and a.shape[-2:] != size:
        kh, kw = a.shape[1] // size[0], a.shape[2] // size[1]
        a = a.reshape(a.shape[0], size[0], kh, size[1], kw).mean(axis=(2, 4))
    a = a.reshape(a.shape[0], -1)
    return a / np.sqrt((a * a).sum(axis=1, keepdims=True))


def test_attention_map_independent():
    f = np.random.default_rng(1).normal(size=(3, 5, 4, 4))
    for p in (1, 2, 3):
        np.testing.assert_allclose(attention_map(torch.tensor(f), p).numpy(), np_attention(f, p), rtol=1e-6)
    out = attention_map(torch.tensor(f))
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, rtol=1e-6)  # normalised over all positions


def _weighted(err, mask):
    return float((err * mask).sum() / mask.sum())


@pytest.mark.parametrize("with_mask", [False, True])
def test_at_loss_independent(with_mask):
    rng = np.random.default_rng(2)
    fs, ft = rng.normal(size=(2, 6, 8, 8)), rng.normal(size=(2, 12, 16, 16))  # teacher larger: pooled
    err = ((np_attention(fs) - np_attention(ft, size=(8, 8))) ** 2).reshape(2, 8, 8)
    mask = (rng.random((2, 8, 8)) > 0.5).astype(float) if with_mask else np.ones((2, 8, 8))
    got = at_loss(torch.tensor(fs), torch.tensor(ft), torch.tensor(mask) if with_mask else None)
    assert got.item() == pytest.approx(_weighted(err, mask), rel=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_fa_loss_independent(with_mask):
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 7, 4, 4)), rng.normal(size=(2, 7, 4, 4))
    mask = rng.random((2, 4, 4)) if with_mask else np.ones((2, 4, 4))  # soft weights too
    err = np.einsum("bchw->bhw", (s - t) ** 2) / 7
    got = fa_loss(torch.tensor(s), torch.tensor(t), torch.tensor(mask) if with_mask else None)
    assert got.item() == pytest.approx(_weighted(err, mask), rel=1e-6)


def test_all_ones_mask_equals_no_mask_and_mask_matters():
    s, t = torch.randn(3, 8, 8, 8), torch.randn(3, 16, 8, 8)
    ones = torch.ones(3, 8, 8)
    proj = Connector(8, 16)(s)
    assert at_loss(s, t, ones).item() == pytest.approx(at_loss(s, t).item(), rel=1e-6)
    assert fa_loss(proj, t, ones).item() == pytest.approx(fa_loss(proj, t).item(), rel=1e-6)
    half = torch.zeros(3, 8, 8)
    half[:, :4] = 1
    assert at_loss(s, t, half).item() != pytest.approx(at_loss(s, t).item(), rel=1e-3)
    assert at_loss(s, t, torch.zeros(3, 8, 8)).item() == 0.0  # nothing to transfer, no NaN


@pytest.mark.parametrize("term", ["kd", "fa", "at"])
def test_auxiliary_terms_reach_every_student_stage_and_never_the_teacher(term):
    torch.manual_seed(0)
    student = build_model("resnet18", width=0.125)
    teacher = build_model("resnet50", cbam=True, width=0.125).eval()
    stages = ["layer2", "layer3"]
    obj = Objective({term: 1.0}, stages=stages, student_channels=student.stage_channels,
                    teacher_channels=teacher.stage_channels)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    s_logits, s_feats = student(x, return_features=True)
    t_logits, t_feats = teacher(x, return_features=True)  # teacher params require grad here on purpose
    mask = {s: (torch.rand(4, *s_feats[s].shape[-2:]) > 0.5).float() for s in stages}
    _, terms = obj(s_logits, s_feats, y, t_logits.detach(), {k: v.detach() for k, v in t_feats.items()}, mask)
    terms[term].backward()
    reached = ["stem", "layer1", "layer2", "layer3"] + (["layer4", "fc"] if term == "kd" else [])
    for name in reached:
        grads = [p.grad for p in getattr(student, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    if term == "fa":
        assert all(p.grad is not None for p in obj.connectors.parameters())


def test_objective_is_the_weighted_sum():
    torch.manual_seed(0)
    student, teacher = build_model("resnet18", width=0.125), build_model("resnet50", width=0.125).eval()
    w = {"ce": 0.1, "kd": 0.9, "fa": 100.0, "at": 1000.0}
    obj = Objective(w, student_channels=student.stage_channels, teacher_channels=teacher.stage_channels)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    s = student(x, return_features=True)
    with torch.no_grad():
        t = teacher(x, return_features=True)
    total, terms = obj(*s, y, *t)
    assert set(terms) == {"ce", "kd", "fa", "at"}
    assert total.item() == pytest.approx(sum(w[k] * terms[k].item() for k in w), rel=1e-5)
    assert list(Objective({"ce": 1.0}).connectors) == []  # no connector unless FA is on


def test_empty_mask_gives_zero_loss_and_finite_gradients_at_large_weight():
    """An all-zero mask (a cam that is zero everywhere) must not turn the step into NaN."""
    s_feat = torch.randn(2, 4, 8, 8, requires_grad=True)
    t_feat = torch.randn(2, 6, 8, 8)
    mask = torch.zeros(2, 8, 8)
    loss = 1000.0 * at_loss(s_feat, t_feat, mask)
    loss.backward()
    assert float(loss) == 0.0
    assert torch.isfinite(s_feat.grad).all() and float(s_feat.grad.abs().max()) == 0.0
