"""BN folding and stage-wise compile change the teacher's speed, never its outputs or Grad-CAM."""

from __future__ import annotations

import copy

import pytest
import torch

from kdnb.engine.speedups import fold_batchnorm, prepare_teacher
from kdnb.method.masks import gradcam, teacher_forward
from kdnb.method.models import build_model


def _trained_like(arch: str, cbam: bool, width: float = 0.125) -> torch.nn.Module:
    """A model whose BatchNorms have non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    model = build_model(arch, cbam=cbam, width=width)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 32, 32))  # running statistics from data
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("arch,cbam", [("resnet50", True), ("resnet18", False), ("resnet50", False)])
def test_folded_model_has_no_batchnorm_and_same_outputs(arch, cbam):
    model = _trained_like(arch, cbam)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref_feats = model(x, return_features=True)
        logits, feats = folded(x, return_features=True)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for s in ref_feats:
        torch.testing.assert_close(feats[s], ref_feats[s], rtol=1e-4, atol=1e-4)
    y = torch.randint(0, 10, (16,))
    torch.testing.assert_close(gradcam(folded, x, "layer3", y), gradcam(model, x, "layer3", y), rtol=1e-3, atol=1e-4)


def test_fold_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(build_model("resnet18", width=0.125).train())


def test_the_fold_check_catches_a_fold_that_forgets_the_shift():
    """The tolerance of the comparison above is tight enough to see a wrong fold: kdnb's fold with
    the stem's folded bias (the BN's shift, beta - gamma * mean / std) removed again differs."""
    model = _trained_like("resnet18", False)
    folded = fold_batchnorm(copy.deepcopy(model))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        conv = folded.stem[0]
        assert conv.bias is not None and conv.bias.abs().max() > 0
        conv.bias.zero_()
        assert not torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_stages_keep_gradcam():
    """A teacher as the cpu profile runs it without AMX: BN folded, every stage compiled (fp32), and
    Grad-CAM differentiating through the compiled layer4. On ResNet-18+CBAM (the same stages and
    CBAM, fewer kernels to compile); the ResNet-50+CBAM teacher itself is checked in bf16 (AMX
    CPUs) by tests/test_default_engine.py, on the teacher its distilling steps compile anyway."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw = _trained_like("resnet18", True)
        model = fold_batchnorm(copy.deepcopy(raw))
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        compiled = prepare_teacher(raw, compile=True)
        want_logits, want_feats, want_cam = teacher_forward(model, x, "layer3", y)
        logits, feats, cam = teacher_forward(compiled, x, "layer3", y)
    finally:
        torch.set_num_threads(n)
    assert float(want_cam.amax()) == 1.0  # a real cam, so the comparison is not vacuous
    for got, want in ((logits, want_logits), (feats["layer3"], want_feats["layer3"]), (cam, want_cam)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("with_masks", [True, False], ids=["masked", "no-mask"])
def test_compiled_objective_matches_eager(with_masks):
    """The cpu profile compiles the objective (FA connector + loss maps): same loss terms and
    gradients as eager, for the student's features and the connector's parameters."""
    from kdnb.method.objective import Objective

    torch.set_num_threads(1)
    torch.manual_seed(0)
    weights = {"ce": 1.0, "kd": 1.0, "fa": 100.0, "at": 1000.0}
    eager = Objective(weights, stages=["layer3"], student_channels={"layer3": 16},
                      teacher_channels={"layer3": 64}).train()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module)
    logits, feat = torch.randn(8, 10), torch.randn(8, 16, 8, 8)
    t_logits, t_feat = torch.randn(8, 10), torch.randn(8, 64, 8, 8)
    y = torch.randint(0, 10, (8,))
    masks = {"layer3": (torch.rand(8, 8, 8) > 0.5).float()} if with_masks else None

    def run(objective, module):
        s_logits, s_feat = logits.clone().requires_grad_(True), feat.clone().requires_grad_(True)
        total, terms = objective(s_logits, {"layer3": s_feat}, y, t_logits, {"layer3": t_feat}, masks)
        params = list(module.parameters())
        grads = torch.autograd.grad(total, [s_logits, s_feat, *params])
        return total, terms, grads

    want_total, want_terms, want_grads = run(eager, eager)
    total, terms, grads = run(compiled, compiled_module)
    assert want_terms["fa"] > 0 and want_terms["at"] > 0  # the terms under test are really there
    torch.testing.assert_close(total, want_total, rtol=1e-4, atol=1e-6)
    for k in want_terms:
        torch.testing.assert_close(terms[k], want_terms[k], rtol=1e-4, atol=1e-6)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    for b, w in zip(compiled_module.buffers(), eager.buffers()):  # the connector's BN statistics
        torch.testing.assert_close(b, w)


@pytest.mark.slow
def test_every_compiled_teacher_stage_stays_compiled(monkeypatch):
    """The stem and four stages share one compiled function; run in both grad modes (as a cohort's
    teacher pass and Grad-CAM do) and at two batch sizes, they need more cache entries than
    dynamo's default limit of 8, past which dynamo falls back to eager with a warning (seen on an
    H200). ``backend="eager"`` keeps the test fast: the cache is dynamo's, whatever the backend."""
    import logging

    import torch._dynamo

    limit = torch._dynamo.config.patch(recompile_limit=8)  # the default (torch's own patch restores it: after
    limit.__enter__()  # monkeypatch's undo, later compiles found no recompile_limit at all)
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="eager"))
    messages: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Catch()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    torch._dynamo.reset()
    try:
        teacher = prepare_teacher(_trained_like("resnet50", True, width=0.0625), compile=True)
        for batch in (4, 6):
            x = torch.randn(batch, 3, 32, 32)
            for grad in (False, True):
                with torch.set_grad_enabled(grad):
                    h = teacher.stem(x)
                    for stage in ("layer1", "layer2", "layer3", "layer4"):
                        h = getattr(teacher, stage)(h)
    finally:
        logger.removeHandler(handler)
        limit.__exit__(None, None, None)
        torch._dynamo.reset()
    hit = [m for m in messages if "recompile_limit" in m or "cache_size_limit" in m]
    assert not hit, hit
