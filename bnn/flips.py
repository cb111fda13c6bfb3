"""Flip statistics of binary weights, for any optimizer (latent weights count by their sign, sign(0) = +1).

Per step: how many weights changed sign (per layer) and how many still agree with their sign at
construction. Counts accumulate on the weights' device; the host reads them once per epoch_summary().
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

AGREEMENT_FORGET_LEVEL = 0.75  # init_forget_step: first step with sign_agreement_init below this


def _negative(weights: list[Tensor]) -> list[Tensor]:
    # sign(w) = -1 exactly where w < 0 (bnn.binarize's convention), so the sign is this one bit.
    return [w.detach() < 0 for w in weights]


class FlipTracker:
    """Counts sign flips of ``named_weights`` between before_step() and after_step(), per layer.

    epoch_summary() gives: ``flip_ratio`` (fraction of all binary weights whose sign changed at a step,
    averaged over the epoch's steps), ``flips.<name>`` (mean number of weights of that layer flipped per step
    in the epoch), ``sign_agreement_init`` (fraction of weights whose sign equals their sign at construction),
    ``init_forget_step`` (the first global step after which sign_agreement_init was below 0.75, NaN until
    then) and ``steps`` (global steps so far). Epochs without steps report NaN flip figures.
    """

    def __init__(self, named_weights: list[tuple[str, Tensor]]) -> None:
        if not named_weights:
            raise ValueError("named_weights: expected at least one (name, tensor) pair, got none")
        names = [name for name, _ in named_weights]
        if len(set(names)) != len(names):
            raise ValueError(f"named_weights: expected unique names, got {names}")
        self.names = names
        self.weights = [w for _, w in named_weights]
        self.device = self.weights[0].device
        self.total = sum(w.numel() for w in self.weights)
        self._initial_negative = _negative(self.weights)
        self.global_step = 0
        self._epoch_steps = 0
        self._epoch_flips = torch.zeros(len(self.weights), dtype=torch.int64, device=self.device)
        self._forget_step = torch.full((), math.nan, dtype=torch.float64, device=self.device)
        self._before: list[Tensor] | None = None
        # The signs after the last step, reused as the next snapshot while the weights are untouched.
        self._latest: list[Tensor] | None = None
        self._latest_versions: list[tuple[int, int]] = []

    def _versions(self) -> list[tuple[int, int]]:
        return [(w._version, w.data_ptr()) for w in self.weights]

    def _count(self, a: list[Tensor], b: list[Tensor]) -> Tensor:
        """Per layer, the number of entries where the sign bits differ, as an int64 tensor on self.device."""
        return torch.stack([torch.count_nonzero(x ^ y).to(self.device) for x, y in zip(a, b)])

    def before_step(self) -> None:
        """Snapshot the signs the coming optimizer step starts from."""
        if self._latest is not None and self._versions() == self._latest_versions:
            self._before = self._latest
        else:
            self._before = _negative(self.weights)

    def after_step(self) -> None:
        """Count the flips of the step just taken and update the agreement with the initial signs."""
        if self._before is None:
            raise RuntimeError("FlipTracker.after_step: call before_step() before the optimizer step")
        now = _negative(self.weights)
        self._epoch_flips += self._count(now, self._before)
        self._epoch_steps += 1
        self.global_step += 1
        disagreeing = self._count(now, self._initial_negative).sum()
        forgotten = disagreeing > self.total * (1.0 - AGREEMENT_FORGET_LEVEL)  # agreement below the level
        first = torch.isnan(self._forget_step) & forgotten
        self._forget_step = torch.where(first, float(self.global_step), self._forget_step)
        self._before = None
        self._latest, self._latest_versions = now, self._versions()

    def epoch_summary(self, reset: bool = True) -> dict[str, float]:
        """This epoch's figures (one host sync); ``reset`` starts the next epoch's counts."""
        disagreeing = self._count(_negative(self.weights), self._initial_negative).sum()
        figures = torch.cat([self._epoch_flips.double(), disagreeing.double().view(1), self._forget_step.view(1)])
        *flips, disagreeing_count, forget_step = figures.tolist()
        steps = self._epoch_steps
        summary = {"flip_ratio": sum(flips) / (steps * self.total) if steps else math.nan}
        summary.update({f"flips.{name}": (f / steps if steps else math.nan) for name, f in zip(self.names, flips)})
        summary["sign_agreement_init"] = 1.0 - disagreeing_count / self.total
        summary["init_forget_step"] = forget_step
        summary["steps"] = float(self.global_step)
        if reset:
            self._epoch_flips.zero_()
            self._epoch_steps = 0
        return summary

    def state_dict(self) -> dict[str, Any]:
        """Initial signs and counters: a tracker loaded from it reports the same numbers as this one."""
        return {
            "names": list(self.names),
            "initial_negative": [t.clone() for t in self._initial_negative],
            "global_step": self.global_step,
            "epoch_steps": self._epoch_steps,
            "epoch_flips": self._epoch_flips.clone(),
            "init_forget_step": self._forget_step.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"state['names']: expected the tracked layers {self.names}, got {list(state['names'])}")
        initial = state["initial_negative"]
        for name, w, t in zip(self.names, self.weights, initial):
            if t.shape != w.shape:
                raise ValueError(f"state['initial_negative'] of {name}: expected shape {tuple(w.shape)}, "
                                 f"got {tuple(t.shape)}")
        self._initial_negative = [t.to(device=w.device, dtype=torch.bool) for t, w in zip(initial, self.weights)]
        self.global_step = int(state["global_step"])
        self._epoch_steps = int(state["epoch_steps"])
        self._epoch_flips = state["epoch_flips"].to(device=self.device, dtype=torch.int64).clone()
        self._forget_step = state["init_forget_step"].to(device=self.device, dtype=torch.float64).clone()
        self._before, self._latest, self._latest_versions = None, None, []
