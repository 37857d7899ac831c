"""Learning-rate schedules for any torch.optim optimizer, ZO or FO.

The factor is a pure function of the step, so a resumed run recomputes the same lr from the
step in its checkpoint: nothing else needs saving, and a resumed schedule is bit-identical to
an uninterrupted one.

    constant   1
    linear     1 - (t - w) / (T - w)        falls to 0 at step T
    cosine     (1 + cos(pi (t - w) / (T - w))) / 2

each preceded by a linear warmup from 1/(w+1) to 1 over the first w steps. ``t`` counts steps
already taken, so the first step runs at factor 1/(w+1) with warmup and 1 without.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "linear", "cosine")
SCALED_KEYS = ("lr", "fallback_lr")
"""Group keys that the schedule scales (fallback_lr: the Muon variants' non-matrix rate)."""


def check_schedule(name: str, warmup_steps: int, total_steps: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"invalid warmup_steps {warmup_steps!r}; must be an integer >= 0")
    if name != "constant" and 0 < total_steps <= warmup_steps:  # steps 0 (zero-shot cells): no lr is used
        raise ValueError(f"warmup_steps {warmup_steps} must be below steps {total_steps} for the "
                         f"{name} schedule (it decays over the steps after warmup)")


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The multiplier of the base lr for the step that follows ``step`` completed steps."""
    check_schedule(name, warmup_steps, total_steps)
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if name == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr (and fallback_lr) to its base value times ``factor``; the base is
    kept in the group as ``initial_<key>`` (torch.optim.lr_scheduler's convention), so it is
    saved and restored with the optimizer's state dict."""
    for group in optimizer.param_groups:
        for key in SCALED_KEYS:
            if group.get(key) is None:
                continue
            base = group.setdefault(f"initial_{key}", group[key])
            group[key] = base * factor
