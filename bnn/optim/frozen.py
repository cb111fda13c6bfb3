"""The control of every experiment: binary weights that never change."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from bnn.optim.base import SignFlipOptimizer


class Frozen(SignFlipOptimizer):
    """Keeps each +-1 weight as it is handed in; ``step`` changes nothing and there is nothing to schedule.

    Trained beside real-valued parameters as usual, it measures how much accuracy the binary weights' training
    adds: an experiment whose trained cells do not clearly beat this control cannot say anything about the binary
    optimizer.
    """

    def __init__(self, params: Iterable[Any]) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()
