"""Learning-rate schedules as pure functions of the step: lr(step) = peak * multiplier(step).

    constant  peak after warmup
    cosine    warmup, then cosine from peak down to min_lr_ratio * peak at max_steps
    linear    warmup, then a straight line down to min_lr_ratio * peak at max_steps
    wsd       warmup-stable-decay: peak until the last `decay_fraction` of steps, then linear decay

While the total is not known yet (train.max_steps: auto, during its probe) the multiplier is the
warm-up ramp, then the peak: what every schedule gives before it starts to decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when a scheduler is built
    import torch

SCHEDULES = ("cosine", "constant", "linear", "wsd")


def lr_multiplier(step: int, max_steps: int | None, schedule: str, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Multiplier of the peak lr for the update that follows `step` completed steps (0-based).

    max_steps None: the total is not fixed yet (warm-up ramp, then peak)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or max_steps is None:
        return 1.0
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * max_steps))
        decay_start = max(warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, settings,
                    max_steps: int | Callable[[], int | None]) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_multiplier`; its state (last_epoch) is saved with the checkpoint.

    `max_steps` may be a function read at every step (a total fixed while training runs)."""
    import torch

    total = max_steps if callable(max_steps) else (lambda: max_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step, total(), settings.schedule, settings.warmup_steps, settings.min_lr_ratio, settings.decay_fraction
        ),
    )
