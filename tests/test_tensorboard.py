"""TensorBoard event files per run: every epoch once (across a kill and resume), the hparams at the end."""

from __future__ import annotations

import pytest

from kdnb.engine.config import make_config
from kdnb.engine.tensorboard import TB_DIR, RunLog
from kdnb.engine.train import train
from kdnb.method.objective import TERMS

pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()  # applies the purges of resumed runs, as the TensorBoard UI does
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resumed_run_logs_each_epoch_once(tmp_path):
    cfg = make_config("baseline", "smoke", 0, {"epochs": 2, "patience": 2})
    train(cfg, tmp_path, progress=False, max_epochs=1)  # stops after epoch 1, as a kill would
    run_dir = tmp_path / "smoke" / "baseline" / "seed0"
    # a process killed after logging epoch 2 but before committing it: the resumed run logs epoch 2 again
    stray = RunLog(run_dir, first_epoch=2)
    stray.epoch({"epoch": 2, "train_loss": 99.0, "val_acc": 0.0})
    stray.close()
    res = train(cfg, tmp_path, progress=False)
    scalars = _scalars(run_dir / TB_DIR)
    expected = {"loss/train_loss", "loss/val_loss", "accuracy/train_acc", "accuracy/val_acc", "engine/lr",
                "engine/mask_share", "engine/images_per_s", *(f"loss/train_{t}" for t in TERMS)}
    assert expected <= set(scalars), sorted(expected - set(scalars))
    assert scalars["loss/train_loss"] == [1, 2]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TB_DIR))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("loss/train_loss")}
    assert logged[2] == pytest.approx(res.history[1]["train_loss"])  # the stray 99.0 is purged
    assert "hparam/test_acc" in scalars  # the settings as hparams, the final metrics beside them
