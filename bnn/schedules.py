"""Per-epoch learning-rate multipliers. Applied to every optimizer's group ``lr``, so they schedule the filter's
alpha (and Bop's gamma) exactly as they schedule a latent learning rate (paper.md section 3)."""

from __future__ import annotations

import math
from typing import Callable

from bnn.config import ScheduleConfig


def multiplier(schedule: ScheduleConfig, epochs: int) -> Callable[[int], float]:
    """s(i) for 0-based epoch i: constant 1, linear 1 - i/E (the official code's), cosine, or step decay."""
    if schedule.name == "constant":
        return lambda i: 1.0
    if schedule.name == "linear":
        return lambda i: 1.0 - i / epochs
    if schedule.name == "cosine":
        return lambda i: 0.5 * (1.0 + math.cos(math.pi * i / epochs))
    if schedule.name == "step":
        return lambda i: schedule.step_factor ** (i // schedule.step_epochs)
    raise ValueError(f"schedule.name: expected constant, linear, cosine or step, got {schedule.name!r}")
