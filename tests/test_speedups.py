"""BN folding and stage-wise compile change the teacher's speed, never its outputs or Grad-CAM."""

from __future__ import annotations

import copy

import pytest
import torch

from kdnb.masks import gradcam, teacher_forward
from kdnb.models import build_model
from kdnb.speedups import compile_stages, fold_batchnorm


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


def test_folding_changes_something_a_wrong_fold_would_break():
    # A fold that dropped the BN (Identity without adjusting the conv) must not pass the check above.
    model = _trained_like("resnet18", False)
    broken = copy.deepcopy(model)
    broken.stem[1] = torch.nn.Identity()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(broken(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_compiled_stages_keep_gradcam(amp):
    """The teacher as the cpu profile runs it: ResNet-50+CBAM, BN folded, compiled up to the cam stage."""
    from kdnb.train import _autocast

    torch.set_num_threads(1)
    model = fold_batchnorm(_trained_like("resnet50", True))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    compiled = compile_stages(copy.deepcopy(model), grad_from="layer3")
    with _autocast(torch.device("cpu"), amp):
        want_logits, want_feats, want_cam = teacher_forward(model, x, "layer3", y)
        logits, feats, cam = teacher_forward(compiled, x, "layer3", y)
    assert float(want_cam.amax()) == 1.0  # a real cam, so the comparison is not vacuous
    tol = {"rtol": 5e-2, "atol": 5e-2} if amp else {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(logits, want_logits, **tol)
    torch.testing.assert_close(feats["layer3"], want_feats["layer3"], **tol)
    if amp:  # bf16 rounding moves single positions; the maps must still agree image by image
        live = want_cam.flatten(1).amax(1) > 0
        cos = torch.nn.functional.cosine_similarity(cam.flatten(1)[live], want_cam.flatten(1)[live])
        assert live.any() and cos.min() > 0.98, cos
    else:
        torch.testing.assert_close(cam, want_cam, **tol)
