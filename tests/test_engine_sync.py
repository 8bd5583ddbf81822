"""The training loop makes no host read and no host-to-device move per step (issue: sync-free step).

On a GPU every ``.item()``, ``.tolist()``, ``bool(t)``, ``.cpu()`` waits for the device, and every
tensor built from host data or moved with ``.to(device)`` is a copy. A CPU cannot show either, so
these tests count the *calls* that would cost them while ``train()`` runs, at two epoch lengths
(20 and 40 steps): the difference is what 20 more steps cost, and it may only be the
rate-limited reads (the NaN check every ``CHECK_EVERY`` steps, set to 10 here so that 20 steps
hold two of them). The device check repeats the step
under ``torch.cuda.set_sync_debug_mode("error")`` on a real GPU (tests/test_cuda.py).
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch

import kdnb.engine.train as engine_train
from kdnb.engine.config import STUDENT_CONFIGS, make_config
from kdnb.engine.train import train

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


@contextlib.contextmanager
def count_host_traffic():
    """Count host reads (Tensor methods above) and would-be host-to-device copies
    (``torch.tensor``/``as_tensor``/``from_numpy`` and ``Tensor.to``/``.cuda`` with a device)."""
    counts: Counter[str] = Counter()
    patched: list[tuple[object, str, object]] = []

    def wrap(owner, name, is_move=None):
        original = getattr(owner, name)

        def counting(*args, **kwargs):
            if is_move is None or is_move(args, kwargs):
                counts[name] += 1
            return original(*args, **kwargs)

        patched.append((owner, name, original))
        setattr(owner, name, counting)

    def names_device(args, kwargs) -> bool:  # Tensor.to(self, device?, dtype?, ...) or .to(device=...)
        return "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:2])

    for name in HOST_READS:
        wrap(torch.Tensor, name)
    wrap(torch.Tensor, "to", names_device)
    wrap(torch.Tensor, "cuda")
    for name in ("tensor", "as_tensor", "from_numpy"):
        wrap(torch, name)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


BATCH = 16  # what is counted is per step, not per image: small batches keep the 60 steps cheap
SHORT, LONG, CHECK_EVERY = 20, 40, 10


def _one_epoch(config: str, steps: int, runs, data, overrides: dict | None = None) -> Counter:
    n_val = 200
    cfg = make_config(config, "smoke", 0, {"epochs": 1, "patience": 1, "batch_size": BATCH,
                                            "train_size": BATCH * steps, "val_size": n_val,
                                            "synthetic_train": BATCH * steps + n_val, **(overrides or {})})
    with count_host_traffic() as counts:
        train(cfg, runs / f"{config}-{steps}", progress=False, data=data, max_epochs=1)
    return counts


# Random masks are drawn from the run's host generator (the same masks on every device, resumable),
# so each step moves its draws to the device: one non-blocking copy from pinned memory per stage and
# step (tests/test_cuda.py runs such a step under sync-debug mode "error"), and nothing else.
CASES = [(c, {}, {}) for c in STUDENT_CONFIGS] + [("kd_fa_at", {"mask_mode": "random_matched"}, {"to": LONG - SHORT})]


@pytest.mark.slow
@pytest.mark.parametrize(("config", "overrides", "moves"), CASES,
                         ids=[c + "".join(f"-{v}" for v in o.values()) for c, o, _ in CASES])
def test_no_host_reads_or_moves_per_step(config, overrides, moves, tmp_path, smoke_runs, monkeypatch):
    from kdnb.engine.data import make_synthetic

    monkeypatch.setattr(engine_train, "CHECK_EVERY", CHECK_EVERY)
    data = make_synthetic(BATCH * LONG + 200, 100)
    import shutil

    for steps in (SHORT, LONG):  # the distilling configurations need the smoke teacher beside their runs
        shutil.copytree(smoke_runs / "smoke" / "teacher", tmp_path / f"{config}-{steps}" / "smoke" / "teacher")
    short = _one_epoch(config, SHORT, tmp_path, data, overrides)
    long = _one_epoch(config, LONG, tmp_path, data, overrides)
    extra = long - short  # Counter subtraction keeps positive differences only
    assert extra == Counter({"tolist": (LONG - SHORT) // CHECK_EVERY, **moves}), (
        f"{LONG - SHORT} more training steps of {config} {overrides} made these extra host reads / moves: {dict(extra)}")
