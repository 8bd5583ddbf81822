"""Grad-CAM++ and LayerCAM (kdnb/method/cams/) against pytorch-grad-cam's implementations on a trained
smoke teacher, and as mask sources in training (--set cam=...)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from kdnb.engine.config import ConfigError, make_config
from kdnb.engine.data import load_dataset, normalize
from kdnb.engine.train import load_trained
from kdnb.method.cams import CAM_METHODS
from kdnb.method.masks import gradcam, teacher_forwards

REFERENCE = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "layercam": "LayerCAM"}


@pytest.fixture(scope="module")
def trained(smoke_runs):
    teacher = load_trained(smoke_runs / "smoke" / "teacher" / "seed0")
    data = load_dataset("synthetic", synthetic_train=1200, synthetic_test=300)
    return teacher, normalize(data.test_x[:32]), data.test_y[:32]


def _unit(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


@pytest.mark.parametrize("method", ["gradcampp", "layercam", "gradcam"])
@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_cam_methods_match_pytorch_grad_cam_on_a_trained_teacher(trained, method, layer):
    import cv2
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    teacher, x, y = trained
    with getattr(pytorch_grad_cam, REFERENCE[method])(model=teacher, target_layers=[getattr(teacher, layer)]) as ref_cam:
        ref = ref_cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y])  # (B,32,32), min-max scaled
    teacher.zero_grad(set_to_none=True)
    ours = gradcam(teacher, x, layer, y, method=method).numpy()
    checked = 0
    for a, b in zip(ours, ref):
        if a.std() == 0 and b.std() == 0:
            continue
        a = cv2.resize(np.float32(_unit(a)), (32, 32))  # the library's own scaling and resize
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
        checked += 1
    assert checked >= len(x) // 2  # most images have a cam to compare


def test_methods_at_one_stage_share_one_pass_and_differ(trained):
    teacher, x, y = trained
    outs = teacher_forwards(teacher, x, [("layer3", m) for m in CAM_METHODS], y)
    logits = [o[0] for o in outs.values()]
    assert all(torch.equal(logits[0], lg) for lg in logits)
    cams = {k[1]: o[2] for k, o in outs.items()}
    assert not torch.equal(cams["gradcam"], cams["layercam"])
    for m, cam in cams.items():
        torch.testing.assert_close(cam, gradcam(teacher, x, "layer3", y, method=m))


def test_an_unknown_cam_is_one_line_listing_the_registered_ones():
    with pytest.raises(ConfigError, match=re.escape("setting cam='gradcam+' is unknown; allowed: gradcam, gradcampp, layercam")):
        make_config("kd_fa_at", "smoke", 0, {"cam": "gradcam+"})


@pytest.mark.parametrize("cam", ["gradcampp", "layercam"])
def test_training_with_another_cam(smoke_runs, tmp_path, cam):
    from kdnb.engine.train import train

    shutil.copytree(smoke_runs / "smoke" / "teacher", tmp_path / "smoke" / "teacher")
    result = train(make_config("kd_fa_at", "smoke", 0, {"epochs": 1, "cam": cam}), tmp_path, progress=False)
    assert 0 < result.history[0]["mask_share"] <= 0.5 and result.history[0]["train_at"] > 0
