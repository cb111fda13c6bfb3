"""Cache blocks spread over worker threads whose own torch ops run single-threaded (CPU only).

make bench, 2 idle cores, 28.3M weights (2026-11-30): 66.7 ms per step with these workers, 66.6 ms with OpenMP
in each op, 90.8 ms on one thread (4.0x against 2.8x the official step); the pool pays under load (below).

Why not torch's own intra-op threads: every elementwise op on a cache block then opens an OpenMP parallel
region that ends in a barrier, about 500 per step for 28M weights, and on cores shared with other busy
processes each barrier waits for a descheduled thread. Measured on 2 cores with 28M weights (bench_filter):
about 50 ms per step either way on an idle machine, but 0.13-1.2 s with OpenMP inside each op and 76-97 ms
with these workers while one other process was busy. Workers take whole blocks and meet once per step.

A worker limits OpenMP to one thread for itself only, through the runtime's ``omp_set_num_threads``, which
sets a per-thread limit; torch.set_num_threads would change process-wide settings. Where the runtime cannot
be found (not Linux, or no OpenMP), blocks run in the calling thread with torch's usual threading.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")

_OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")
_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)
_workers_single_threaded = True


def _loaded_openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime already loaded into this process (the one torch uses), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/" in line})
    except OSError:
        return None
    for path in paths:
        if os.path.basename(path).startswith(_OPENMP_LIBRARIES):
            try:
                runtime = ctypes.CDLL(path)  # already loaded: dlopen returns the same instance
                runtime.omp_set_num_threads.argtypes = [ctypes.c_int]
                return runtime
            except (OSError, AttributeError):
                continue
    return None


_OPENMP = _loaded_openmp_runtime()


def _make_worker_single_threaded() -> None:
    global _workers_single_threaded
    torch.get_num_threads()  # torch's per-thread lazy init first: it would reset the limit set below
    assert _OPENMP is not None
    _OPENMP.omp_set_num_threads(1)
    if torch.get_num_threads() != 1:
        _workers_single_threaded = False


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        # A forked child inherits the pool object but not its threads: make a new one there.
        if _pool is None or _pool[:2] != (os.getpid(), workers):
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            executor = ThreadPoolExecutor(workers, "bnn-optim", initializer=_make_worker_single_threaded)
            _pool = (os.getpid(), workers, executor)
        return _pool[2]


def run_blocks(items: Sequence[Item], update: Callable[[Item], None]) -> None:
    """Call ``update`` on every item (independent cache blocks), on torch.get_num_threads() workers."""
    threads = torch.get_num_threads()
    tasks = min(threads, len(items))
    if tasks <= 1 or _OPENMP is None or not _workers_single_threaded:
        for item in items:
            update(item)
        return
    grad_enabled = torch.is_grad_enabled()  # grad mode is per thread

    def work(first: int) -> None:
        with torch.set_grad_enabled(grad_enabled):
            for item in items[first::tasks]:
                update(item)

    executor = _executor(threads)
    for future in [executor.submit(work, first) for first in range(tasks)]:
        future.result()
