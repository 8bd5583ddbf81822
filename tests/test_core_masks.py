"""Grad-CAM against the maintained pytorch-grad-cam package, and the causal-mask rules."""

import cv2
import numpy as np
import pytest
import torch

from kdnb.method.mask_sources import make_masks
from kdnb.method.masks import causal_mask, gradcam, random_mask, teacher_forward
from kdnb.method.models import build_model


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = build_model("resnet50", cbam=True, width=0.125)
    # Non-trivial BN statistics so eval mode is not an identity.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def _minmax_resized(cam: np.ndarray, size=(32, 32)) -> np.ndarray:
    out = []
    for c in cam:
        c = c - c.min()
        c = c / (1e-7 + c.max())
        out.append(cv2.resize(np.float32(c), size))
    return np.stack(out)


@pytest.mark.parametrize("layer", ["layer2", "layer3", "layer4"])
def test_gradcam_matches_pytorch_grad_cam(teacher, layer):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3, 5, 7, 9, 2])
    with GradCAM(model=teacher, target_layers=[getattr(teacher, layer)]) as ref_cam:
        ref = ref_cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    teacher.zero_grad(set_to_none=True)
    ours = _minmax_resized(gradcam(teacher, x, layer, target).numpy())
    for a, b in zip(ours, ref):
        if a.std() == 0 and b.std() == 0:
            continue
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_gradcam_leaves_parameters_alone_and_works_frozen(teacher):
    x = torch.randn(4, 3, 32, 32)
    teacher.zero_grad(set_to_none=True)
    cam = gradcam(teacher, x, "layer3", torch.tensor([1, 2, 3, 4]))
    assert all(p.grad is None for p in teacher.parameters())
    frozen = build_model("resnet50", cbam=True, width=0.125)
    frozen.load_state_dict(teacher.state_dict())
    frozen.eval().requires_grad_(False)
    with torch.no_grad():  # even inside no_grad (pytorch-grad-cam fails here)
        cam2 = gradcam(frozen, x, "layer3", torch.tensor([1, 2, 3, 4]))
    torch.testing.assert_close(cam, cam2)
    assert cam.shape == (4, 8, 8) and cam.min() >= 0 and cam.max() <= 1
    peaks = cam.flatten(1).amax(1)
    assert torch.all((peaks == 0) | torch.isclose(peaks, torch.ones_like(peaks)))


def test_gradcam_default_target_is_prediction(teacher):
    x = torch.randn(4, 3, 32, 32)
    pred = teacher(x).argmax(1)
    torch.testing.assert_close(gradcam(teacher, x, "layer3"), gradcam(teacher, x, "layer3", pred))


def test_teacher_forward_reuses_one_pass(teacher):
    x = torch.randn(3, 3, 32, 32)
    logits, feats, cam = teacher_forward(teacher, x, "layer3", torch.tensor([0, 1, 2]))
    with torch.no_grad():
        ref_logits, ref_feats = teacher(x, return_features=True)
    torch.testing.assert_close(logits, ref_logits)
    for k in ref_feats:
        torch.testing.assert_close(feats[k], ref_feats[k])
        assert not feats[k].requires_grad
    assert teacher_forward(teacher, x)[2] is None


def test_binary_mask_keeps_exact_fraction_with_deterministic_ties():
    cam = torch.rand(5, 8, 8)
    for keep in (0.25, 0.5, 1.0):
        m = causal_mask(cam, keep)
        assert torch.all(m.flatten(1).sum(1) == round(keep * 64))
        # the kept positions are the highest-scoring ones
        kept_min = torch.where(m.bool(), cam, torch.inf).flatten(1).amin(1)
        dropped_max = torch.where(m.bool(), -torch.inf, cam).flatten(1).amax(1)
        assert torch.all(kept_min >= dropped_max)
    ties = torch.full((1, 4, 4), 0.5)
    m = causal_mask(ties, 0.25)
    assert m.flatten().tolist()[:4] == [1, 1, 1, 1] and m.sum() == 4  # lowest indices win ties
    assert causal_mask(torch.zeros(2, 4, 4), 0.5).sum() == 0  # no evidence, no mask
    torch.testing.assert_close(causal_mask(cam, 0.5, "soft"), cam)


def test_mask_resized_to_student_size():
    cam = torch.rand(2, 8, 8)
    m = causal_mask(cam, 0.5, size=(16, 16))
    assert m.shape == (2, 16, 16) and torch.all(m.flatten(1).sum(1) == 128)
    with pytest.raises(ValueError, match="keep"):
        causal_mask(cam, 0.0)


def test_mask_modes():
    sizes = {"layer3": (8, 8), "layer2": (16, 16)}
    assert make_masks("none", sizes) == {"layer3": None, "layer2": None}
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    r1 = make_masks("random", sizes, keep=0.25, batch=4, generator=g1)
    r2 = make_masks("random", sizes, keep=0.25, batch=4, generator=g2)
    for s in sizes:
        torch.testing.assert_close(r1[s], r2[s])
        assert torch.all(r1[s].flatten(1).sum(1) == 0.25 * sizes[s][0] * sizes[s][1])
    assert not torch.equal(random_mask(4, (8, 8), 0.5, g1), random_mask(4, (8, 8), 0.5, g1))
    cam = torch.rand(4, 8, 8)
    gm = make_masks("gradcam", sizes, cam=cam, keep=0.5)
    torch.testing.assert_close(gm["layer3"], causal_mask(cam, 0.5))
    with pytest.raises(ValueError, match="unknown mask source .saliency.; registered: gradcam"):
        make_masks("saliency", sizes)


def _sparse_cams() -> torch.Tensor:
    """Cams (6, 8, 8) from empty to full: image i is positive on 0, 1, 5, 16, 40 and 64 positions."""
    g = torch.Generator().manual_seed(7)
    cam = torch.zeros(6, 64)
    for i, p in enumerate((0, 1, 5, 16, 40, 64)):
        cam[i, torch.randperm(64, generator=g)[:p]] = torch.rand(p, generator=g) + 0.01
    return cam.view(6, 8, 8)


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (4, 4)])
@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_matched_random_mask_keeps_the_gradcam_count_per_image(size, keep):
    cam = _sparse_cams()
    sizes = {"layer3": size}
    matched = make_masks("random_matched", sizes, cam=cam, keep=keep, generator=torch.Generator().manual_seed(1))
    gradcam_mask = make_masks("gradcam", sizes, cam=cam, keep=keep)["layer3"]
    m = matched["layer3"]
    assert m.shape == (6, *size) and set(m.unique().tolist()) <= {0.0, 1.0}
    # independently: the cam at the student's size (bilinear, as F.interpolate) keeps
    # min(its positive positions, ceil(keep * n)) positions
    at_size = cam if size == (8, 8) else torch.nn.functional.interpolate(cam[:, None], size=size, mode="bilinear",
                                                                         align_corners=False)[:, 0]
    n = size[0] * size[1]
    want = [min(int((c > 0).sum()), max(1, int(np.ceil(keep * n - 1e-9)))) for c in at_size]
    assert m.flatten(1).sum(1).tolist() == want
    assert gradcam_mask.flatten(1).sum(1).tolist() == want
    partial = [i for i, k in enumerate(want) if 0 < k < n]
    assert partial and not torch.equal(m[partial], gradcam_mask[partial])  # other positions than Grad-CAM's
    if size == (8, 8) and keep == 0.25:  # sparse cams: the unmatched control keeps more than the Grad-CAM mask
        unmatched = make_masks("random", sizes, keep=keep, batch=6, generator=torch.Generator().manual_seed(1))
        assert unmatched["layer3"].flatten(1).sum(1).tolist() == [16] * 6 and want[:3] == [0, 1, 5]


def test_matched_random_mask_is_reproducible_and_seeded():
    cam, sizes = _sparse_cams(), {"layer3": (8, 8), "layer2": (16, 16)}

    def draw(seed):
        return make_masks("random_matched", sizes, cam=cam, keep=0.5, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(3), draw(3), draw(4)
    for s in sizes:
        torch.testing.assert_close(a[s], b[s])
        assert not torch.equal(a[s], c[s])
        assert torch.equal(a[s].flatten(1).sum(1), c[s].flatten(1).sum(1))
    g = torch.Generator().manual_seed(3)
    first = make_masks("random_matched", sizes, cam=cam, keep=0.5, generator=g)
    assert not torch.equal(first["layer3"], make_masks("random_matched", sizes, cam=cam, keep=0.5, generator=g)["layer3"])
    with pytest.raises(ValueError, match="random_matched masks need the teacher's cam"):
        make_masks("random_matched", sizes, keep=0.5)


def test_matched_random_soft_mask_moves_the_cam_weights():
    """With cam_type soft, the control is the cam itself with its positions shuffled per image."""
    cam = _sparse_cams()
    m = make_masks("random_matched", {"layer3": (8, 8)}, cam=cam, cam_type="soft",
                   generator=torch.Generator().manual_seed(0))["layer3"]
    torch.testing.assert_close(m.flatten(1).sort(1).values, cam.flatten(1).sort(1).values)
    assert not torch.equal(m, cam)


def test_cam_short_counts_cams_too_sparse_for_keep():
    from kdnb.method.masks import cam_short

    cam = _sparse_cams()  # positive on 0, 1, 5, 16, 40, 64 of 64 positions
    assert cam_short(cam, 0.25).tolist() == [True, True, True, False, False, False]  # keep 0.25 asks for 16
    assert cam_short(cam, 0.5).tolist() == [True, True, True, True, False, False]  # 32
    assert cam_short(cam, 1.0).tolist() == [True] * 5 + [False]
    up = torch.nn.functional.interpolate(cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert cam_short(cam, 0.5, (16, 16)).tolist() == [int((c > 0).sum()) < 128 for c in up]
