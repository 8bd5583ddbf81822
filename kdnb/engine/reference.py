"""What a run computed, apart from how long it took: for checking that a change to the code leaves
the numbers of every configuration exactly where they were (``tools/record_reference.py``).

Floating-point training is bit-reproducible only on the same torch, the same CPU instruction set
and the same thread count; :func:`platform_fingerprint` names those, so a recorded reference says
where its numbers hold exactly.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from .runs import TIMING_FIELDS
from .speedups import cpu_bf16_pays

# Fields of metrics.json that name the machine, a path or a moment rather than what was computed.
_CIRCUMSTANCE = frozenset({"git_commit", "run_dir", "finished", "started", "device_name", "hostname"})


def platform_fingerprint() -> dict[str, Any]:
    """What fixes CPU rounding: torch, the vector ISA torch dispatches to, AMX (bf16 autocast), threads."""
    return {
        "torch": torch.__version__.split("+")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx": cpu_bf16_pays(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in TIMING_FIELDS and k not in _CIRCUMSTANCE}


def comparable(history: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's history and metrics without wall-clock times and circumstances: equal for equal work."""
    return {"history": [_strip(h) for h in history], "metrics": _strip(metrics)}


def differences(reference: dict[str, Any], runs: dict[str, dict[str, Any]]) -> list[str]:
    """Every number of a recorded reference that ``runs`` ({name: comparable(...)}) does not
    reproduce exactly. A key the reference lacks may only be ``train_<term>`` of a loss term
    registered since, and must be 0 (a term no configuration of the reference used)."""
    out = []
    for name, ref in reference["runs"].items():
        new = runs.get(name)
        if new is None:
            out.append(f"{name}: not trained")
            continue
        if len(new["history"]) != len(ref["history"]):
            out.append(f"{name}: {len(new['history'])} epochs, the reference has {len(ref['history'])}")
        for i, (h_ref, h_new) in enumerate(zip(ref["history"], new["history"]), 1):
            out += [f"{name} epoch {i} {k}: {h_new.get(k)!r} != {v!r}" for k, v in h_ref.items() if h_new.get(k) != v]
            out += [f"{name} epoch {i} {k}: new key {v!r}" for k, v in h_new.items()
                    if k not in h_ref and not (k.startswith("train_") and v == 0.0)]
        out += [f"{name} {k}: {new['metrics'].get(k)!r} != {v!r}" for k, v in ref["metrics"].items()
                if new["metrics"].get(k) != v]
    return out
