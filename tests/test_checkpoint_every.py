"""Sparse checkpoints (``checkpoint_every``): a run killed between checkpoints redoes the epochs
since the last one and ends exactly as an uninterrupted run; the last epoch, an early stop and
the end of a ``max_epochs`` call are always checkpointed."""

from __future__ import annotations

import pytest
import torch

import kdnb.engine.train as train_mod
from kdnb.engine.config import make_config
from kdnb.engine.runs import BEST_FILE, CHECKPOINT_FILE, HISTORY_FILE, TIMING_FIELDS, load_torch, read_json
from kdnb.engine.train import train


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING_FIELDS} for h in history]


class Killed(BaseException):
    """Stands for the process being killed: no ``except Exception`` of the loop catches it."""


def _checkpointed_epoch(run_dir) -> int:
    return load_torch(run_dir / CHECKPOINT_FILE)["state"]["epoch"]


def _trained_epochs(monkeypatch, kill_after: int | None = None) -> list[int]:
    """Record the epochs _end_epoch completes; with ``kill_after``, die right after that epoch
    (as a killed process would: nothing after it runs)."""
    real, done = train_mod._end_epoch, []

    def end_epoch(m, epoch, *args, **kwargs):
        real(m, epoch, *args, **kwargs)
        done.append(epoch)
        if epoch == kill_after:
            raise Killed

    monkeypatch.setattr(train_mod, "_end_epoch", end_epoch)
    return done


def test_killed_between_checkpoints_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    over = {"epochs": 4, "patience": 4}
    full = train(make_config("baseline", "smoke", 0, over), tmp_path / "a", progress=False)  # every epoch
    cfg = make_config("baseline", "smoke", 0, {**over, "checkpoint_every": 2})
    done = _trained_epochs(monkeypatch, kill_after=3)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "b", progress=False)
    run_dir = full.run_dir.parents[2].parent / "b" / "smoke" / "baseline" / "seed0"
    assert done == [1, 2, 3] and _checkpointed_epoch(run_dir) == 2
    assert [h["epoch"] for h in read_json(run_dir / HISTORY_FILE)] == [1, 2]  # the history is the checkpoint's
    monkeypatch.undo()
    done = _trained_epochs(monkeypatch)  # no kill this time
    rest = train(cfg, tmp_path / "b", progress=False)
    assert done == [3, 4]  # epoch 3 redone
    assert _checkpointed_epoch(run_dir) == 4
    assert _strip(rest.history) == _strip(full.history)
    assert _strip(read_json(run_dir / HISTORY_FILE)) == _strip(full.history)
    assert {k: v for k, v in rest.metrics.items() if k not in TIMING_FIELDS} == \
        {k: v for k, v in full.metrics.items() if k not in TIMING_FIELDS}
    wa, wb = load_torch(full.run_dir / BEST_FILE)["model"], load_torch(run_dir / BEST_FILE)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_last_epoch_an_early_stop_and_a_max_epochs_stop_are_checkpointed(tmp_path, monkeypatch):
    # max_epochs: the call's last epoch is saved although it is not a multiple of checkpoint_every
    cfg = make_config("baseline", "smoke", 0, {"epochs": 3, "patience": 3, "checkpoint_every": 5})
    part = train(cfg, tmp_path, progress=False, max_epochs=1)
    assert _checkpointed_epoch(part.run_dir) == 1
    done = _trained_epochs(monkeypatch)
    res = train(cfg, tmp_path, progress=False)
    assert done == [2, 3] and _checkpointed_epoch(res.run_dir) == 3 and res.metrics["finished"]
    # an early stop: validation loss made to rise every epoch, patience 1 -> stops after epoch 2 of 4
    real_evaluate, calls = train_mod.evaluate, [0]

    def rising(*args, **kwargs):
        loss, acc = real_evaluate(*args, **kwargs)
        calls[0] += 1
        return loss + calls[0], acc

    monkeypatch.setattr(train_mod, "evaluate", rising)
    cfg = make_config("baseline", "smoke", 0, {"epochs": 4, "patience": 1, "checkpoint_every": 5, "name": "stop"})
    res = train(cfg, tmp_path, progress=False)
    assert res.metrics["stopped_early"] and res.metrics["best_epoch"] == 1
    ck = load_torch(res.run_dir / CHECKPOINT_FILE)["state"]
    assert ck["epoch"] == 2 and ck["stopped_early"] and ck["best_epoch"] == 1
    assert len(read_json(res.run_dir / HISTORY_FILE)) == 2
