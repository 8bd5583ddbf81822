"""The MobileNetV2 student (kdnb/method/networks/mobilenetv2.py): torchvision's blocks and size, stages
at the teacher's resolutions, distillation through FA and AT, reload, and its row of the efficiency table."""

from __future__ import annotations

import shutil

import pytest
import torch
import torchvision

from kdnb.engine.config import ConfigError, make_config
from kdnb.method.models import build_model, count_parameters


def test_same_parameters_as_torchvision_mobilenet_v2():
    # strides do not change parameter counts: the CIFAR variant has exactly torchvision's
    ours = build_model("mobilenetv2", 10)
    assert count_parameters(ours) == count_parameters(torchvision.models.mobilenet_v2(num_classes=10)) == 2_236_682
    assert count_parameters(build_model("mobilenetv2", 100)) == count_parameters(
        torchvision.models.mobilenet_v2(num_classes=100))


def test_stages_meet_the_teacher_at_the_same_resolution():
    x = torch.randn(2, 3, 32, 32)
    student = build_model("mobilenetv2", 10, width=0.125)
    teacher = build_model("resnet50", 10, cbam=True, width=0.125)
    _, fs = student(x, return_features=True)
    _, ft = teacher(x, return_features=True)
    for s in fs:
        assert fs[s].shape[-2:] == ft[s].shape[-2:]
        assert fs[s].shape[1] == student.stage_channels[s]
    assert student.stage_channels == {"layer1": 4, "layer2": 4, "layer3": 12, "layer4": 160}


def test_cbam_and_another_stem_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="mobilenetv2 has no CBAM variant"):
        make_config("kd", "smoke", 0, {"arch": "mobilenetv2", "cbam": "true"})
    with pytest.raises(ValueError, match="only the cifar stem"):
        build_model("mobilenetv2", stem="torchvision")


def test_distils_with_fa_and_at_reloads_and_shows_in_the_efficiency_table(smoke_runs, tmp_path):
    from kdnb.engine.train import load_trained, train
    from kdnb.method.networks.mobilenetv2 import MobileNetV2
    from kdnb.report.analyses import efficiency_table

    shutil.copytree(smoke_runs / "smoke" / "teacher", tmp_path / "smoke" / "teacher")
    cfg = make_config("kd_fa_at", "smoke", 0, {"epochs": 1, "arch": "mobilenetv2", "name": "kd_fa_at-mbv2"})
    result = train(cfg, tmp_path, progress=False)
    h = result.history[0]
    assert h["train_fa"] > 0 and h["train_at"] > 0 and h["train_kd"] > 0
    model = load_trained(result.run_dir)
    assert isinstance(model, MobileNetV2) and model.fc.out_features == 10
    table = efficiency_table(tmp_path, "smoke", [0], configs=["kd_fa_at-mbv2"], repeats=2, rounds=1,
                             batch_sizes=(1,), device="cpu")
    row = table.loc["kd_fa_at-mbv2"]
    assert row["parameters"] == count_parameters(build_model("mobilenetv2", 10, width=0.125))
    assert row["flops"] > 0 and row["parameters"] < table.loc["teacher", "parameters"]
