"""GradientFilter's step written for memory traffic on a multi-core CPU: what bench_filter measures against
bnn.optim.GradientFilter (the update as the equations read) and the official code's structure.

Three devices, none of which a wmhp trial engages: trials run one thread (cpus_per_trial 1) and the cpu
preset's MLP holds 116,736 binary weights, under half of one cache block, while GPU trials are one block.
- Cache blocks: the tensors are cut into blocks of BLOCK_BYTES per operand and the whole op sequence runs on
  one block while it is in cache, so main memory sees g, m, x, b read once and m, x, b written once per step.
- Worker threads: the blocks are spread over torch.get_num_threads() threads whose own ops run single-threaded
  (the OpenMP runtime's per-thread ``omp_set_num_threads``, found in /proc/self/maps through ctypes). With
  torch's intra-op threads instead, every op on every block opens an OpenMP region that ends in a barrier,
  and on cores shared with busy processes each barrier waits for a descheduled thread.
- A sign-arithmetic flip: b <- sign(b - 2 d) with d = sign(x), or sign(x - clamp(x, -t, t)) with a threshold,
  which is ``where(x * b > t, -b, b)`` for b = +-1 bit for bit (every intermediate is a small integer) and
  avoids torch's CPU comparison and where kernels.
Every op rounds once (no fused multiply-add), so each element gets the same bits however the work is cut.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor

from bnn.optim import GradientFilter
from bnn.optim.base import ema_

# Bytes of one operand per block. Six operands are in flight (g, m, x, b and two temporaries), so a block
# needs about 6 MiB of last-level cache per worker (bench_filter's block sweep gives the figures).
BLOCK_BYTES = 1024 * 1024
Item = TypeVar("Item")
Block = list[tuple[Tensor, ...]]


def flip_where_exceeds_(binary: list[Tensor], drive: list[Tensor], threshold: float = 0.0) -> None:
    """``b = where(drive * b > threshold, -b, b)`` for +-1 entries of ``binary``, by sign arithmetic."""
    if threshold == 0.0:
        torch._foreach_sub_(binary, torch._foreach_sign(drive), alpha=2.0)
    else:
        negated = torch._foreach_clamp_min(drive, -threshold)
        torch._foreach_clamp_max_(negated, threshold)
        torch._foreach_sub_(negated, drive)  # clamp(drive) - drive = -(excess over the threshold)
        torch._foreach_sign_(negated)
        torch._foreach_add_(binary, negated, alpha=2.0)
    torch._foreach_sign_(binary)


def cache_blocks(tensor_lists: Sequence[Sequence[Tensor]], block_elements: int) -> list[Block]:
    """Aligned tensor lists cut into blocks of aligned views of at most ``block_elements`` elements in all
    (a tensor that cannot be viewed flat travels whole)."""
    pieces: list[tuple[Tensor, ...]] = []
    for row in zip(*tensor_lists):
        if all(t.is_contiguous() for t in row):
            pieces.extend(zip(*(t.view(-1).split(block_elements) for t in row)))
        else:
            pieces.append(row)
    blocks: list[Block] = []
    current: Block = []
    filled = 0
    for piece in pieces:
        if current and filled + piece[0].numel() > block_elements:
            blocks.append(current)
            current, filled = [], 0
        current.append(piece)
        filled += piece[0].numel()
    return blocks + ([current] if current else [])


def _loaded_openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime already loaded into this process (the one torch uses), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/" in line})
    except OSError:
        return None
    for path in paths:
        if os.path.basename(path).startswith(("libgomp", "libiomp", "libomp")):
            try:
                runtime = ctypes.CDLL(path)  # already loaded: dlopen returns the same instance
                runtime.omp_set_num_threads.argtypes = [ctypes.c_int]
                return runtime
            except (OSError, AttributeError):
                continue
    return None


_OPENMP = _loaded_openmp_runtime()
_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def _make_worker_single_threaded() -> None:
    torch.get_num_threads()  # torch's per-thread lazy init first: it would reset the limit set below
    assert _OPENMP is not None
    _OPENMP.omp_set_num_threads(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[:2] != (os.getpid(), workers):
            _pool = (os.getpid(), workers,
                     ThreadPoolExecutor(workers, "blocked-filter", initializer=_make_worker_single_threaded))
        return _pool[2]


def run_blocks(items: Sequence[Item], update: Callable[[Item], None], workers: bool = True) -> None:
    """``update`` on every item, spread over torch.get_num_threads() single-threaded workers when ``workers``
    (else in the calling thread, with torch's intra-op threads inside each op)."""
    threads = torch.get_num_threads()
    tasks = min(threads, len(items))
    if not workers or tasks <= 1 or _OPENMP is None:
        for item in items:
            update(item)
        return

    def work(first: int) -> None:
        with torch.no_grad():
            for item in items[first::tasks]:
                update(item)

    for future in [_executor(threads).submit(work, first) for first in range(tasks)]:
        future.result()


class BlockedGradientFilter(GradientFilter):
    """GradientFilter whose CPU step runs cache blocks on worker threads with the arithmetic flip.

    ``block_elements``: elements per block and operand (None: BLOCK_BYTES' worth); ``workers``: False runs
    the blocks in the calling thread with torch's OpenMP threads in each op.
    """

    def __init__(self, *args: Any, block_elements: int | None = None, workers: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.block_elements = block_elements
        self.workers = workers

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        assert closure is None
        items = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            state = ([self.state[p][key] for p in params] for key in self.state_keys)
            lists = [params, [p.grad for p in params], *state]
            elements = self.block_elements or BLOCK_BYTES // params[0].element_size()
            for block in cache_blocks(lists, elements):
                items.append(([[piece[i] for piece in block] for i in range(len(lists))], group))
        run_blocks(items, self._update_block, self.workers)

    def _update_block(self, item: tuple[list[list[Tensor]], dict[str, Any]]) -> None:
        (binary, grads, m, x), group = item
        ema_(m, grads, group["gamma"])
        ema_(x, m, group["alpha"])
        flip_where_exceeds_(binary, x)
