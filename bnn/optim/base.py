"""What GradientFilter and Bop share: true +-1 parameters, eagerly created state, cache-blocked steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from bnn.binarize import sign
from bnn.optim.cpu_workers import run_blocks
from bnn.optim.elementwise import block_elements_for, cache_blocks, columns


class SignFlipOptimizer(torch.optim.Optimizer):
    """Base of optimizers that flip the signs of +-1 parameters instead of adding to their magnitude.

    A step cuts the tensors into cache blocks (bnn.optim.elementwise) and, on CPU, spreads the blocks over
    worker threads (bnn.optim.cpu_workers); blocks are independent, so the bits never depend on either.
    On construction (and for every group added later) each parameter is replaced by its sign, sign(0) = +1,
    and its state buffers ``state_keys`` are created as zeros, so ``state_dict()`` is complete from the start
    and a resumed run continues bit for bit. The group's ``lr`` carries the rate a scheduler should drive.
    """

    state_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], block_elements: int | None) -> None:
        valid_int = isinstance(block_elements, int) and not isinstance(block_elements, bool) and block_elements >= 1
        if block_elements is not None and not valid_int:
            raise ValueError(f"block_elements: expected an int >= 1 or None, got {block_elements!r}")
        self.block_elements = block_elements
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        """Validate a parameter group's hyperparameters; subclasses raise ValueError naming the argument."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self.check_group(group)
        with torch.no_grad():
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(f"params: expected floating-point tensors, got one of dtype {p.dtype}")
                p.copy_(sign(p))
                self.state[p] = {key: torch.zeros_like(p, memory_format=torch.contiguous_format)
                                 for key in self.state_keys}

    def set_state(self, initial_state: list[tuple[Tensor, ...]]) -> None:
        """Overwrite the buffers (``state_keys`` order) of every parameter, in parameter order."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(initial_state) != len(params):
            raise ValueError(
                f"initial_state: expected one tuple of {self.state_keys} per parameter ({len(params)}), "
                f"got {len(initial_state)}"
            )
        with torch.no_grad():
            for index, (p, buffers) in enumerate(zip(params, initial_state)):
                if len(buffers) != len(self.state_keys):
                    raise ValueError(f"initial_state[{index}]: expected {len(self.state_keys)} tensors "
                                     f"{self.state_keys}, got {len(buffers)}")
                for key, value in zip(self.state_keys, buffers):
                    if value.shape != p.shape:
                        raise ValueError(f"initial_state[{index}] {key}: expected shape {tuple(p.shape)}, "
                                         f"got {tuple(value.shape)}")
                    self.state[p][key].copy_(value.detach())

    def update_block(self, operands: list[list[Tensor]], group: dict[str, Any]) -> None:
        """Apply one step to one cache block: operands are [params, grads, *state buffers] lists of views."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        cpu_blocks: list[tuple[list[list[Tensor]], dict[str, Any]]] = []
        for group in self.param_groups:
            # Blocks are cut per (device, dtype): the block size is in bytes and foreach wants uniform lists.
            lists: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                operands = lists.setdefault((p.device, p.dtype), [[] for _ in range(2 + len(self.state_keys))])
                state = self.state[p]
                for column, tensor in zip(operands, (p, p.grad, *(state[k] for k in self.state_keys))):
                    column.append(tensor)
            for (device, dtype), operands in lists.items():
                block_elements = block_elements_for(device, dtype, self.block_elements)
                for block in cache_blocks(operands, block_elements):
                    if device.type == "cpu":
                        cpu_blocks.append((columns(block, len(operands)), group))
                    else:
                        self.update_block(columns(block, len(operands)), group)
        run_blocks(cpu_blocks, lambda item: self.update_block(*item))
        return loss
