"""Per-epoch rate schedules: a multiplier s(epoch) of each optimizer's scheduled rate (latent SGD's and
Adam's ``lr``, the filter's ``alpha``, Bop's ``gamma``), so one schedule drives all of them alike."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from bnn.config import ScheduleConfig

if TYPE_CHECKING:
    import torch


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


def scheduled_rate(optimizer: torch.optim.Optimizer) -> str | None:
    """The group key a schedule scales: the optimizer's ``scheduled`` (bnn.optim), else torch's ``lr``."""
    return getattr(optimizer, "scheduled", "lr")


class RateSchedule:
    """Sets each param group's ``key`` to its initial value times s(epoch), as torch's LambdaLR does for
    ``lr`` (same values, bit for bit), for any key. step() once per epoch; state_dict() for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float],
                 key: str | None = None) -> None:
        key = key or scheduled_rate(optimizer)
        if key is None:
            raise ValueError(f"key: {type(optimizer).__name__} has no rate to schedule")
        self.optimizer, self.factor, self.key = optimizer, factor, key
        self.initial = [group[key] for group in optimizer.param_groups]
        self.epoch = 0
        self._apply()

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def _apply(self) -> None:
        factor = self.factor(self.epoch)
        for group, initial in zip(self.optimizer.param_groups, self.initial):
            group[self.key] = initial * factor

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "epoch": self.epoch, "initial": list(self.initial)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["key"] != self.key:
            raise ValueError(f"state['key']: expected {self.key!r}, got {state['key']!r}")
        self.epoch, self.initial = int(state["epoch"]), [float(v) for v in state["initial"]]
        self._apply()
