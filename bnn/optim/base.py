"""What GradientFilter, Bop and Frozen share: +-1 parameters, named group hyperparameters, eager state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

Tensors = list[Tensor]


class SignFlipOptimizer(torch.optim.Optimizer):
    """Base of optimizers that flip the signs of +-1 weights instead of adding to their magnitude.

    Parameters must already hold exactly -1 or +1 (bnn.binarize.binarize_, or binary layers built with
    ``weight_mode="binary"``): others are refused, and construction changes none. A param group may set
    the constructor's hyperparameters by name, and no other key. State buffers (``state_keys``) start as
    zeros, so ``state_dict()`` is complete from the start. A subclass's ``update(group, binary, grads,
    *state)`` steps the group's weights that have a gradient. ``scheduled`` names the hyperparameter a
    schedule scales (bnn.schedules.RateSchedule; torch's lr schedulers drive ``lr``, which these lack).
    """

    state_keys: tuple[str, ...] = ()
    scheduled: str | None = None
    update: Callable[..., None]

    def check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters; subclasses raise ValueError naming the argument."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        unknown = sorted(set(param_group) - {"params", "param_names", *self.defaults})
        if unknown:
            raise ValueError(f"param group: unknown key {unknown[0]!r} for {type(self).__name__} "
                             f"(allowed: {', '.join(['params', *self.defaults])})")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self.check_group(group)
            for index, p in enumerate(group["params"]):
                if not (p.is_floating_point() and bool((p.detach().abs() == 1).all())):
                    raise ValueError(f"params: {type(self).__name__} trains floating-point weights "
                                     f"holding exactly -1 or +1; tensor {index} of group "
                                     f"{len(self.param_groups) - 1} does not (bnn.binarize.binarize_ "
                                     "sets weights to their sign)")
        except ValueError:
            self.param_groups.pop()
            raise
        for p in group["params"]:
            self.state[p] = {key: torch.zeros_like(p, memory_format=torch.contiguous_format)
                             for key in self.state_keys}

    def set_state(self, initial_state: Sequence[Sequence[Tensor]]) -> None:
        """Overwrite the buffers (``state_keys`` order) of every parameter, in parameter order."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(initial_state) != len(params):
            raise ValueError(f"initial_state: expected one tuple of {self.state_keys} per parameter "
                             f"({len(params)}), got {len(initial_state)}")
        for index, (p, buffers) in enumerate(zip(params, initial_state)):
            shapes = [tuple(t.shape) for t in buffers]
            if shapes != [tuple(p.shape)] * len(self.state_keys):
                raise ValueError(f"initial_state[{index}]: expected {self.state_keys} of shape "
                                 f"{tuple(p.shape)}, got shapes {shapes}")
            for key, value in zip(self.state_keys, buffers):
                self.state[p][key].copy_(value.detach())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if params:
                state = ([self.state[p][key] for p in params] for key in self.state_keys)
                self.update(group, params, [p.grad for p in params], *state)
        return loss


def ema_(averages: Tensors, inputs: Tensors, rate: float) -> None:
    """averages <- (1 - rate) averages + rate inputs, each product and the sum rounded on its own: CPU kernels
    fuse ``add_(t, alpha=rate)`` and ``lerp_`` into multiply-adds, these ops give the same bits anywhere."""
    torch._foreach_mul_(averages, 1.0 - rate)
    torch._foreach_add_(averages, torch._foreach_mul(inputs, rate))


def flip_(binary: Tensors, drive: Tensors, threshold: float = 0.0) -> None:
    """b <- -b where drive * b > threshold: for b = +-1, where |drive| > threshold with b's sign."""
    for b, d in zip(binary, drive):
        b.copy_(torch.where(d * b > threshold, -b, b))
