"""kdnb.evaluation.metrics: predictions, agreement and attention distance against direct computations."""

import pandas as pd
import torch

from kdnb.engine.data import make_synthetic, normalize
from kdnb.evaluation.metrics import accuracy, agreement, attention_distance, attention_distances, predict
from kdnb.method.models import build_model


def test_predict_accuracy_agreement():
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.125).eval()
    ds = make_synthetic(20, 40)
    logits = predict(model, ds.test_x, normalize, batch_size=16)
    with torch.no_grad():
        ref = model(normalize(ds.test_x))
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    assert accuracy(logits, ds.test_y) == (ref.argmax(1) == ds.test_y).float().mean().item()
    assert agreement(logits, logits) == 1.0
    other = torch.roll(logits, 1, dims=1)
    assert agreement(logits, other) == 0.0


def test_attention_distance_direct():
    torch.manual_seed(0)
    s = build_model("resnet18", width=0.125).eval()
    t = build_model("resnet50", cbam=True, width=0.125).eval()
    x = make_synthetic(10, 12).test_x
    assert attention_distance(t, t, x, normalize, batch_size=5) < 1e-6
    # against a direct computation: pooled teacher map, both L2-normalised, one norm per image
    with torch.no_grad():
        xs = normalize(x)
        fs, ft = s(xs, return_features=True)[1]["layer3"], t(xs, return_features=True)[1]["layer3"]
        a_s = fs.pow(2).mean(1).flatten(1)
        a_t = torch.nn.functional.adaptive_avg_pool2d(ft.pow(2).mean(1, keepdim=True), fs.shape[-2:]).flatten(1)
        want = (a_s / a_s.norm(dim=1, keepdim=True) - a_t / a_t.norm(dim=1, keepdim=True)).norm(dim=1).mean()
    got = attention_distances({"a": s, "b": t}, t, x, normalize, batch_size=4)
    assert abs(got["a"] - want.item()) < 1e-5 and got["a"] > 0.01
    assert got["b"] < 1e-6
    assert abs(attention_distance(s, t, x, normalize, batch_size=3) - got["a"]) < 1e-5
    with torch.no_grad():
        _, fs = s(normalize(x), return_features=True)
        _, ft = t(normalize(x), return_features=True)
    a_s = fs["layer3"].pow(2).mean(1).flatten(1)
    a_t = ft["layer3"].pow(2).mean(1).flatten(1)
    expected = (a_s / a_s.norm(dim=1, keepdim=True) - a_t / a_t.norm(dim=1, keepdim=True)).norm(dim=1).mean()
    assert abs(attention_distance(s, t, x, normalize, batch_size=5) - expected.item()) < 1e-5


def test_robustness_cache_makes_each_corrupted_set_once(monkeypatch):
    """Several models share one cache: the corruptions are generated once, the results are unchanged."""
    import kdnb.evaluation.metrics as ev
    from kdnb.engine.data import normalize as norm
    from kdnb.method.models import build_model

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    model = build_model("resnet18", width=0.125).eval()
    plain = ev.robustness(model, images, labels, norm, corruptions=["gaussian_noise", "contrast"], severities=[1, 3])
    calls = []
    real = ev.corrupt
    monkeypatch.setattr(ev, "corrupt", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    cache: dict = {}
    first = ev.robustness(model, images, labels, norm, corruptions=["gaussian_noise", "contrast"], severities=[1, 3],
                          cache=cache)
    second = ev.robustness(model, images, labels, norm, corruptions=["gaussian_noise", "contrast"], severities=[1, 3],
                           cache=cache)
    assert len(calls) == 4
    pd.testing.assert_frame_equal(first, plain)
    pd.testing.assert_frame_equal(second, plain)
