"""Pipeline overhead: one grid's ``cpu`` preset through ``wmhp ablate`` vs a plain process pool.

Both sides run the same cells with the same concurrency, each as a fresh ``python`` process (interpreter start
and imports count on both sides). The pool calls ``bnn.train`` with one torch thread per worker and nothing else:
no Ray, no MLflow, no checkpoints. Goal (issue 4): pipeline wall time at most 1.15x the pool's.

Usage: python -m benchmarks.bench_pipeline [GRID|all] [PRESET]      (one grid, or all; default e6 cpu)
``run`` (make bench) measures the grids in WMHP_BENCH_GRIDS (default "e6,e5": 8 and 20 trials) and splits the
overhead into a fixed launch cost and a per-trial part. ``WMHP_BENCH_GRIDS=all`` (or ``... bench_pipeline all``)
measures the whole main job of `make reproduce` in one launch: about 20 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.15
DEFAULT_GRID = "e6"
ALL = "all"  # every grid in one launch: the main job of `make reproduce`


def _pool_main(grid: str, preset: str, workers: int) -> None:
    """The baseline, run in its own process: every cell of the grid through a process pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cells = _unique_cells(grid, preset)
    # spawn, like Ray's worker processes: each worker imports torch itself instead of inheriting a forked one
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin_threads) as pool:
        finals = list(pool.map(_train, [cell.config for cell in cells]))
    print(json.dumps({"trials": len(finals)}))


def _unique_cells(grid: str, preset: str) -> list:
    """The cells of one grid, or of every grid for ``all`` (the main job), each config once: a cell that two grids
    share runs once in `wmhp ablate` too (the second grid adopts its run)."""
    from pipeline.grids import load_cells

    unique = {}
    for _, grid_cells in load_cells(None if grid == ALL else [grid], preset):
        for cell in grid_cells:
            unique.setdefault(cell.hash, cell)
    return list(unique.values())


def _pin_threads() -> None:
    import torch

    torch.set_num_threads(1)


def _train(config):  # noqa: ANN001, ANN202 - runs in a pool worker
    from bnn.train import train

    return train(config)


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def measure(grid: str = DEFAULT_GRID, preset: str = "cpu", workers: int | None = None) -> dict:
    workers = workers or os.cpu_count() or 1
    cells = _unique_cells(grid, preset)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="wmhp-bench-") as tmp:
        # Ray gives each 1-CPU worker OMP_NUM_THREADS=1; the pool's workers get the same.
        pool_env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pool_s, _ = _timed([sys.executable, "-m", "benchmarks.bench_pipeline", "--pool", grid, preset,
                            str(workers)], pool_env)
        grids = [] if grid == ALL else [grid]
        ablate = [sys.executable, "-m", "wmhp.cli", "ablate", *grids, "--preset", preset, "--results-dir", tmp,
                  "--max-concurrent", str(workers)]
        pipeline_s, out = _timed(ablate + ["--timings"], env)
    timings = json.loads(re.search(r"^timings (\{.*\})$", out, re.M).group(1))
    overhead = pipeline_s - pool_s
    return {
        "grid": grid,
        "preset": preset,
        "trials": len(cells),
        "concurrency": workers,
        "pool_s": round(pool_s, 2),
        "pipeline_s": round(pipeline_s, 2),
        "ratio": round(pipeline_s / pool_s, 3),
        "goal_ratio": GOAL,
        "meets_goal": pipeline_s / pool_s <= GOAL,
        "overhead_s": round(overhead, 2),
        "overhead_per_trial_s": round(overhead * workers / len(cells), 2),
        "pipeline_parts_s": {k: round(v, 2) for k, v in timings.items()},
    }


def run(out_dir: Path) -> dict:
    """Two grids of different sizes, so that the overhead splits into a fixed launch cost and a per-trial part."""
    grids = os.environ.get("WMHP_BENCH_GRIDS", "e6,e5").split(",")
    rows = [measure(grid) for grid in grids]
    result: dict = {"runs": rows, "goal_ratio": GOAL}
    if len(rows) >= 2 and rows[0]["trials"] != rows[-1]["trials"]:
        a, b = rows[0], rows[-1]
        per_trial = (b["overhead_s"] - a["overhead_s"]) * a["concurrency"] / (b["trials"] - a["trials"])
        result["per_trial_overhead_s"] = round(per_trial, 2)  # worker-seconds per trial
        result["fixed_overhead_s"] = round(a["overhead_s"] - per_trial * a["trials"] / a["concurrency"], 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"## Pipeline overhead: `wmhp ablate` vs a process pool (cpu preset, goal <= {GOAL}x)",
        "",
        "| grid | trials | at a time | pool (s) | wmhp ablate (s) | ratio | Ray start (s) | MLflow set-up (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = r["pipeline_parts_s"]
        lines.append(f"| {r['grid']} | {r['trials']} | {r['concurrency']} | {r['pool_s']} | {r['pipeline_s']} | "
                     f"{r['ratio']} | {parts.get('ray_init_s', '-')} | {parts.get('setup_s', '-')} |")
    if "fixed_overhead_s" in result:
        lines += ["", f"Overhead split: {result['fixed_overhead_s']} s per launch (Ray start, first actors' start, "
                      f"shutdown) + {result['per_trial_overhead_s']} s per trial."]
    (out_dir / "pipeline.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pool"]:
        _pool_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        args = sys.argv[1:]
        print(json.dumps(measure(*args[:2]), indent=2))
