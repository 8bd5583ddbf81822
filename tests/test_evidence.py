"""What the published numbers stand on: evaluation subsets that hold every class equally whatever
the order of the files, and a cohort member's training cost measured as its own."""

from __future__ import annotations

import shutil

import pytest
import torch

from kdnb.engine.config import make_config
from kdnb.engine.data import DataError, Dataset, balanced_subset, class_counts
from kdnb.engine.step import StepClock
from kdnb.engine.train import train_cohort
from kdnb.report import analyses

CLASSES = tuple(f"c{k}" for k in range(10))


def _class_sorted(per_class: int = 30) -> Dataset:
    """A test split sorted by class, as the image-folder loader returns it (train/<class>/*.jpg)."""
    y = torch.arange(10).repeat_interleave(per_class)
    x = torch.arange(len(y), dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8)
    return Dataset(x[:10], y[:10], x, y, CLASSES, "class-sorted test")


def test_a_subset_of_a_class_sorted_split_holds_every_class_equally():
    data = _class_sorted()
    x, y, counts = analyses._subset(data, 50, seed=0)
    assert counts == {c: 5 for c in CLASSES}  # "the first 50" would be 50 of class c0 and nothing else
    assert len(x) == len(y) == 50
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 5))
    assert analyses.per_class_text(counts) == "5 per class (10 classes)"


@pytest.mark.parametrize("order", ["sorted", "shuffled", "reversed"])
def test_balance_does_not_depend_on_the_order_on_disk(order):
    y = torch.arange(10).repeat_interleave(40)
    if order == "shuffled":
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    elif order == "reversed":
        y = y.flip(0)
    idx = balanced_subset(y, 100, seed=1)
    assert torch.equal(torch.bincount(y[idx], minlength=10), torch.full((10,), 10))
    assert len(set(idx.tolist())) == 100  # no image twice


def test_the_same_seed_gives_every_model_the_same_images_and_another_seed_others():
    y = torch.arange(10).repeat_interleave(40)
    assert torch.equal(balanced_subset(y, 100, 0), balanced_subset(y, 100, 0))
    assert not torch.equal(balanced_subset(y, 100, 0), balanced_subset(y, 100, 1))


def test_no_size_means_the_whole_split():
    y = torch.arange(10).repeat_interleave(3)
    assert torch.equal(balanced_subset(y, None), torch.arange(30))
    assert torch.equal(balanced_subset(y, 1000), torch.arange(30))


def test_a_size_that_cannot_be_balanced_is_refused_with_the_fix():
    y = torch.arange(10).repeat_interleave(40)
    with pytest.raises(DataError, match=r"multiple of 10 \(e.g. 100\)"):
        balanced_subset(y, 105)
    few = torch.cat([torch.arange(9).repeat_interleave(40), torch.full((3,), 9)])  # class 9: 3 images
    with pytest.raises(DataError, match="class 9 has 3 images, fewer than the 10 per class .* use at most 30"):
        balanced_subset(few, 100)


def test_class_counts_name_every_class_zeros_included():
    assert class_counts(torch.tensor([0, 0, 2]), ("a", "b", "c")) == {"a": 2, "b": 0, "c": 1}


# ---------------------------------------------------------------- per-member cost
def test_clock_charges_each_section_to_its_member():
    clock = StepClock(torch.device("cpu"), members=2)
    clock.add(StepClock.SHARED, 1.0, 1.5)
    clock.add(0, 2.0, 2.25)
    clock.add(1, 3.0, 4.0)
    clock.add(1, 5.0, 5.5)
    clock.step_done()  # the first step: a warm-up, not counted
    clock.step_done()
    assert clock.read() == (0.5, [0.25, 1.5], 1)
    assert clock.read() == (0.0, [0.0, 0.0], 0)  # read zeroes


def test_the_first_step_pays_one_off_costs_and_is_not_timed():
    clock = StepClock(torch.device("cpu"), members=1)
    assert clock.mark() is None  # first step: nothing timed
    clock.step_done()
    assert isinstance(clock.mark(), float)


def test_a_step_that_cannot_be_split_reads_as_unmeasured():
    clock = StepClock(torch.device("cpu"), members=1)
    clock.step_done()
    clock.add(0, 0.0, 1.0)
    clock.split = False  # a CUDA graph replay ran in this epoch
    assert clock.read() is None
    clock.active = False  # during a capture nothing is timed
    assert clock.mark() is None
    clock.add(0, clock.mark(), 2.0)
    assert clock.read() == (0.0, [0.0], 0)


@pytest.mark.slow
def test_in_a_real_cohort_kd_fa_at_costs_more_than_the_baseline(tmp_path, smoke_runs):
    """KD+FA+AT runs first in its cohort, so an order effect (the first member paying a warm-up)
    would work against the assertion, not for it."""
    shutil.copytree(smoke_runs / "smoke" / "teacher", tmp_path / "smoke" / "teacher")
    cfgs = [make_config(c, "smoke", 0, {"epochs": 2, "patience": 2}) for c in ("kd_fa_at", "baseline")]
    full, base = train_cohort(cfgs, tmp_path, progress=False)
    for hb, hf in zip(base.history, full.history):
        assert hb["cohort_size"] == hf["cohort_size"] == 2
        assert hb["seconds"] == hf["seconds"]  # the cohort's epoch: one wall time for both members
        assert hb["shared_seconds"] == hf["shared_seconds"] > 0  # the teacher pass, paid once
        assert hb["own_seconds"] + hf["own_seconds"] + hb["shared_seconds"] <= hb["seconds"]
    assert base.history[0]["timed_steps"] == base.history[0]["steps"] - 1  # the first step is a warm-up
    assert base.history[1]["timed_steps"] == base.history[1]["steps"]
    # FA, AT and the masks are KD+FA+AT's own work
    assert full.metrics["own_train_seconds"] > base.metrics["own_train_seconds"] > 0
    assert full.metrics["own_train_seconds"] == pytest.approx(sum(h["own_seconds"] for h in full.history))
    assert base.metrics["shared_train_seconds"] == pytest.approx(sum(h["shared_seconds"] for h in base.history))
