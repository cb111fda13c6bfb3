"""The in-place update kernels shared by GradientFilter and Bop, written for memory traffic.

Every kernel is a short sequence of single-rounding torch ops (multiply by a scalar, add, subtract, sign,
clamp), never a multiply-add such as ``add_(t, alpha=a)``, ``lerp`` or ``addcmul``: torch's vectorised CPU
loops compute ``add_(t, alpha=a)`` as a fused multiply-add (about 10% of float32 results differ in the last
bit from the rounded form), and whether scalar tail loops or other devices fuse it is up to their compilers,
so results could depend on the thread split and on block edges. With single-rounding ops every element gets
the same bits however the work is cut, which lets the fast path equal a plain transcription of the
equations bit for bit. (The official code uses ``add_(alpha=)``, so it differs from both in the last bit.)

Speed on CPU comes from cache blocking: the tensors are cut into blocks of about ``DEFAULT_BLOCK_BYTES`` per
operand and the whole op sequence runs on one block while it is in cache, so main memory sees each of
g, m, x, b read once and m, x, b written once per step (bnn.optim.cpu_workers spreads the blocks over
threads). On accelerators one block holds every tensor and each op is a single multi-tensor (``_foreach``)
launch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Bytes of one operand per cache block on CPU. Six operands are in flight (g, m, x, b and two temporaries), so a
# block needs about 6 MiB of last-level cache per worker thread. Sweep on a 2-core EPYC (32 MiB L3), 28M float32
# weights, 2 workers, ms per step: 128K elements 43-51, 256K 38-46, 512K 41-49, 1M 49-61.
DEFAULT_BLOCK_BYTES = 1024 * 1024

Block = list[tuple[Tensor, ...]]


def block_elements_for(device: torch.device, dtype: torch.dtype, block_elements: int | None) -> int | None:
    """Elements per cache block: the explicit value, else CPU's default for this dtype; None = no blocking."""
    if block_elements is not None:
        return block_elements
    if device.type != "cpu":
        return None
    return max(1, DEFAULT_BLOCK_BYTES // torch.empty((), dtype=dtype).element_size())


def cache_blocks(tensor_lists: Sequence[Sequence[Tensor]], block_elements: int | None) -> list[Block]:
    """Cut aligned tensor lists (same shapes position by position) into blocks of aligned views.

    Each block is a list of tuples (one view per list) whose sizes add up to at most ``block_elements``,
    except that a tensor which cannot be viewed flat (non-contiguous) travels whole, whatever its size.
    ``block_elements=None`` puts everything, whole, in one block.
    """
    rows = list(zip(*tensor_lists))
    if block_elements is None:
        return [rows] if rows else []
    if block_elements < 1:
        raise ValueError(f"block_elements: expected an int >= 1 or None, got {block_elements!r}")
    pieces: list[tuple[Tensor, ...]] = []
    for row in rows:
        if all(t.is_contiguous() for t in row):
            pieces.extend(zip(*(t.view(-1).split(block_elements) for t in row)))
        else:
            pieces.append(row)
    blocks: list[Block] = []
    current: Block = []
    filled = 0
    for piece in pieces:
        size = piece[0].numel()
        if current and filled + size > block_elements:
            blocks.append(current)
            current, filled = [], 0
        current.append(piece)
        filled += size
    if current:
        blocks.append(current)
    return blocks


def ema_(state: list[Tensor], inputs: list[Tensor], rate: float) -> None:
    """state <- (1 - rate) * state + rate * inputs, as three rounded ops (see the module docstring)."""
    torch._foreach_mul_(state, 1.0 - rate)
    torch._foreach_add_(state, torch._foreach_mul(inputs, rate))


def flip_where_exceeds_(binary: list[Tensor], drive: list[Tensor], threshold: float = 0.0) -> None:
    """Negate each +-1 entry of ``binary`` where drive * binary > threshold (threshold >= 0), in place.

    Equal, bit for bit, to ``b = where(drive * b > threshold, -b, b)``, through three exact steps:
    where |drive| > threshold the flip leaves b = -sign(drive) (if b had the other sign it already is that),
    elsewhere b stays. With d = sign(drive - clamp(drive, -threshold, threshold)), which is sign(drive) where
    |drive| > threshold and 0 elsewhere (the subtraction is exact in sign: IEEE never rounds a non-zero
    difference to zero), b_new = sign(b - 2 d); every intermediate is a small integer, so rounding and fused
    multiply-adds cannot change it. NaN gives d = 0: no flip, like the comparison. Arithmetic instead of a
    comparison + where because torch's CPU comparisons and where run about ten times slower.
    """
    if threshold == 0.0:
        torch._foreach_sub_(binary, torch._foreach_sign(drive), alpha=2.0)
    else:
        negated = torch._foreach_clamp_min(drive, -threshold)
        torch._foreach_clamp_max_(negated, threshold)
        torch._foreach_sub_(negated, drive)  # clamp(drive) - drive = -(excess over the threshold)
        torch._foreach_sign_(negated)
        torch._foreach_add_(binary, negated, alpha=2.0)
    torch._foreach_sign_(binary)


def columns(block: Block, count: int) -> list[list[Tensor]]:
    """The block's views regrouped per operand: ``count`` lists."""
    return [[piece[i] for piece in block] for i in range(count)]
