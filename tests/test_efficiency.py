"""Parameter/FLOP counts, latency measurement and training-cost ratios."""

import pytest
import torch
import torchvision
from torch import nn

from kdnb.evaluation.efficiency import count_parameters, flops_per_image, macs_per_image, measure_latency, training_cost_ratio


def cifar_resnet18() -> nn.Module:
    """Full-width ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def test_resnet18_cifar_params_and_macs():
    model = cifar_resnet18()
    assert count_parameters(model) == 11_173_962
    macs = macs_per_image(model)
    assert macs == pytest.approx(0.56e9, rel=0.02)
    assert flops_per_image(model) == 2 * macs
    assert model.training, "train/eval mode must be restored"


def test_flops_hand_computed():
    # conv 3→8, 3x3, 'same' on 8x8: 8·8·8·(3·9) = 13,824 MACs; linear 8·8·8=512 → 10: 5,120 MACs
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    assert macs_per_image(model, input_size=(3, 8, 8)) == 13_824 + 5_120
    assert flops_per_image(model, input_size=(3, 8, 8)) == 2 * (13_824 + 5_120)


def test_count_parameters_trainable_only():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # 15 + 8 parameters
    model[0].requires_grad_(False)
    assert count_parameters(model) == 23
    assert count_parameters(model, trainable_only=True) == 8


def test_measure_latency_fields_and_restored_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    model.train()
    out = measure_latency(model, batch_size=4, device="cpu", warmup=1, repeats=3)
    assert set(out) == {"median_ms_per_batch", "median_ms_per_sample", "device", "batch_size", "threads"}
    assert out["median_ms_per_batch"] > 0
    assert out["median_ms_per_sample"] == pytest.approx(out["median_ms_per_batch"] / 4)
    assert out["batch_size"] == 4 and out["threads"] == torch.get_num_threads()
    assert isinstance(out["device"], str) and out["device"]
    assert model.training
    with pytest.raises(ValueError):
        measure_latency(model, batch_size=0)


def test_training_cost_ratio_uses_median():
    histories = {
        "baseline": [{"seconds": 30.0}, {"seconds": 10.0}, {"seconds": 12.0}],  # median 12
        "kd": [{"seconds": 50.0}, {"seconds": 18.0}, {"seconds": 18.0}, {"seconds": 19.0}],  # median 18.5
        "kd+at": [[{"seconds": 20.0}, {"seconds": 24.0}], [{"seconds": 22.0}]],  # two seeds pooled: 22
    }
    table = training_cost_ratio(histories, reference="baseline")
    assert table.loc["baseline", "ratio"] == pytest.approx(1.0)
    assert table.loc["kd", "ratio"] == pytest.approx(18.5 / 12)
    assert table.loc["kd+at", "ratio"] == pytest.approx(22 / 12)
    assert table.loc["kd+at", "epochs"] == 3
    with pytest.raises(KeyError, match="reference"):
        training_cost_ratio(histories, reference="teacher")
    with pytest.raises(KeyError, match="seconds"):
        training_cost_ratio({"baseline": [{"loss": 1.0}]})
