"""Parameter/FLOP counts, latency measurement and training-cost ratios."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from kdnb.evaluation.efficiency import (
    NO_MEASURABLE_DIFFERENCE,
    count_parameters,
    flops_per_image,
    latency_difference,
    macs_per_image,
    measure_latencies,
    measure_latency,
    training_cost,
    training_cost_ratio,
)


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
    out = measure_latency(model, batch_size=4, device="cpu", warmup=1, repeats=3, rounds=5)
    assert out["median_ms_per_batch"] > 0
    assert out["median_ms_per_sample"] == pytest.approx(out["median_ms_per_batch"] / 4)
    assert out["batch_size"] == 4 and out["threads"] == torch.get_num_threads()
    assert out["rounds"] == 5 and len(out["rounds_ms_per_batch"]) == 5
    # the median and quartiles are those of the rounds (numpy's default method, independently)
    q1, med, q3 = np.quantile(np.asarray(out["rounds_ms_per_batch"]) / 4, [0.25, 0.5, 0.75])
    assert (out["q1_ms_per_sample"], out["median_ms_per_sample"], out["q3_ms_per_sample"]) == pytest.approx((q1, med, q3))
    assert out["iqr_ms_per_sample"] == pytest.approx(q3 - q1)
    assert isinstance(out["device"], str) and out["device"]
    assert model.training
    with pytest.raises(ValueError):
        measure_latency(model, batch_size=0)
    with pytest.raises(ValueError):
        measure_latency(model, batch_size=1, rounds=0)


def test_latencies_alternate_between_models_round_by_round():
    calls = []

    class Tagged(nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag, self.lin = tag, nn.Linear(1, 1)

        def forward(self, x):
            calls.append(self.tag)
            return x

    measure_latencies({"a": Tagged("a"), "b": Tagged("b")}, 1, warmup=0, repeats=2, rounds=3)
    assert "".join(calls) == "aabb" * 3


def test_a_latency_difference_inside_the_spread_is_not_measurable():
    def lat(q1, med, q3):
        return {"q1_ms_per_sample": q1, "median_ms_per_sample": med, "q3_ms_per_sample": q3}

    assert latency_difference(lat(1.0, 1.1, 1.3), lat(1.2, 1.25, 1.4)) == NO_MEASURABLE_DIFFERENCE
    assert latency_difference(lat(2.0, 2.2, 2.4), lat(1.0, 1.1, 1.2)) == "2.00× slower"
    assert latency_difference(lat(1.0, 1.1, 1.2), lat(2.0, 2.2, 2.4)) == "2.00× faster"


def test_training_cost_is_each_configs_own_work_per_step():
    def epoch(own, shared, steps=10):
        return {"own_seconds": own, "shared_seconds": shared, "steps": steps, "seconds": 99.0}

    histories = {
        "baseline": [epoch(1.0, 0.5), epoch(1.2, 0.5), epoch(1.1, 0.5)],  # 100, 120, 110 ms/step
        "kd_fa_at": [epoch(3.0, 2.0), epoch(3.4, 2.0), epoch(float("nan"), float("nan"))],  # NaN: not recorded
    }
    table = training_cost(histories)
    assert table.loc["baseline", "own_ms_per_step"] == pytest.approx(110.0)
    assert table.loc["baseline", "own_ms_per_step_iqr"] == pytest.approx(10.0)  # Q3 115 − Q1 105
    assert table.loc["kd_fa_at", "epochs"] == 2
    assert table.loc["kd_fa_at", "own_ms_per_step"] == pytest.approx(320.0)
    assert table.loc["kd_fa_at", "own_vs_reference"] == pytest.approx((300 / 100 + 340 / 120) / 2)  # epoch-paired
    assert table.loc["kd_fa_at", "paired_epochs"] == 2
    assert table.loc["kd_fa_at", "shared_ms_per_step"] == pytest.approx(200.0)
    assert np.isnan(training_cost({"baseline": [{"seconds": 1.0}]}).loc["baseline", "own_ms_per_step"])


def test_training_cost_ratio_pairs_epochs_so_that_the_machines_load_cancels():
    """Seeds trained under different load: pooled medians mix them; the ratio of the same epoch of the
    same cohort does not. KD+FA+AT's own step is 1.1× the baseline's in every epoch here."""
    def epoch(seed, n, own):
        return {"seed": seed, "epoch": n, "own_seconds": own, "shared_seconds": 1.0, "steps": 10}

    load = {0: 1.0, 1: 3.0, 2: 3.0}  # seeds 1 and 2 shared the machine
    histories = {"baseline": [epoch(s, n, f * (1 + n / 100)) for s, f in load.items() for n in (1, 2)],
                 "kd_fa_at": [epoch(s, n, 1.1 * f * (1 + n / 100)) for s, f in load.items() for n in (1, 2)]
                 + [epoch(3, 1, 9.0)]}  # a seed the baseline lacks: not paired
    table = training_cost(histories)
    assert table.loc["kd_fa_at", "own_vs_reference"] == pytest.approx(1.1)
    assert table.loc["kd_fa_at", "own_vs_reference_iqr"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc["kd_fa_at", "paired_epochs"] == 6
    assert table.loc["kd_fa_at", "own_ms_per_step_iqr"] > 100  # the pooled spread is the load's
    unseeded = {c: [{k: v for k, v in e.items() if k != "seed"} for e in h] for c, h in histories.items()}
    assert training_cost(unseeded).loc["kd_fa_at", "epochs"] == 7  # seeds pooled without a seed: no epoch lost


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


def test_training_cost_falls_back_to_all_steps_where_timed_steps_is_not_recorded():
    import pandas as pd

    rows = pd.DataFrame([{"own_seconds": 1.0, "shared_seconds": 0.5, "steps": 10, "timed_steps": 9},
                         {"own_seconds": 1.0, "shared_seconds": 0.5, "steps": 10}])  # NaN timed_steps in a frame
    table = training_cost({"baseline": rows.to_dict("records")})
    assert table.loc["baseline", "epochs"] == 2
    assert table.loc["baseline", "own_ms_per_step"] == pytest.approx((1000 / 9 + 100) / 2)
