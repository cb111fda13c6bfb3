"""The speed devices outside the filter step, each timed with and without, side by side in one run.

  idx cache       bnn.data.idx keeps decoded IDX arrays: load_data of the cpu preset in a process that already
                  loaded it once (a Ray worker's second trial), with the cache and with it cleared
  os._exit        wmhp.cli.entry ends with os._exit: a process that imported torch, MLflow and Tune and ran
                  ray.init / ray.shutdown, from its last line to its exit, with a normal interpreter exit and with it

Each pair runs alternately (one of each per round) and reports medians. The filter step's one intra-op thread is timed
in bench_filter. Run alone: python -m benchmarks.bench_devices
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROUNDS = 2

_EXIT_CHILD = r"""
import os, sys
import mlflow, ray, torch
from ray import tune
import pipeline.callbacks
ray.init(address="local", num_cpus=1, include_dashboard=False)
ray.shutdown()
print("done", flush=True)
if sys.argv[1] == "with":
    os._exit(0)
"""

def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _exit_seconds(mode: str) -> float:
    """Seconds from the child's last line to its exit."""
    child = subprocess.Popen([sys.executable, "-c", _EXIT_CHILD, mode], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=_env())
    assert child.stdout is not None
    done = None
    for line in child.stdout:
        if line.startswith("done"):
            done = time.perf_counter()
    child.wait()
    if child.returncode != 0 or done is None:
        raise RuntimeError(f"exit probe ({mode}) failed with code {child.returncode}")
    return time.perf_counter() - done


def _load_data_seconds(mode: str) -> float:
    import torch

    from bnn.data import idx, load_data
    from pipeline.grids import load_cells

    config = next(cell for _, cells in load_cells(["e6"], "cpu") for cell in cells).config
    if mode == "without":
        idx._read_idx.cache_clear()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a trial
    try:
        start = time.perf_counter()
        load_data(config.data, torch.device("cpu"), torch.float32, 0)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


def side_by_side(measure: Callable[[str], float], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        for mode in times:
            times[mode].append(measure(mode))
    return {mode: round(statistics.median(values), 3) for mode, values in times.items()}


def run(out_dir: Path, rounds: int = ROUNDS) -> dict:
    _load_data_seconds("with")  # first load: imports, page cache
    rows = {
        "idx cache: load_data (cpu preset), s per trial": side_by_side(_load_data_seconds, rounds + 2),
        "os._exit: exit after ray.shutdown, s per command": side_by_side(_exit_seconds, rounds),
    }
    result = {"rounds": rounds, "load_average_1min": round(os.getloadavg()[0], 1), "seconds": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "devices.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"## Speed devices, with and without (median of {rounds}+ alternating rounds, 1-min load average "
             f"{result['load_average_1min']})", "", "| device: what is timed | with | without | saves |",
             "|---|---:|---:|---:|"]
    for name, t in rows.items():
        lines.append(f"| {name} | {t['with']:.2f} | {t['without']:.2f} | {t['without'] - t['with']:.2f} |")
    (out_dir / "devices.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    run(Path("results/bench"))
    print((Path("results/bench") / "devices.md").read_text())
