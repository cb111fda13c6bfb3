"""Pipeline overhead: one grid's ``cpu`` preset through ``wmhp ablate`` vs a plain process pool.

Both sides run the same cells with the same concurrency, each as a fresh ``python`` process (interpreter start
and imports count on both sides). The pool calls ``bnn.train`` with one torch thread per worker and nothing else:
no Ray, no MLflow, no checkpoints. Goal (issues 4 and 11): pipeline wall time at most 1.15x the pool's.

Usage: python -m benchmarks.bench_pipeline [GRID|all] [PRESET]      (one grid, or all; default e6 cpu)
``run`` (make bench) measures the grids in WMHP_BENCH_GRIDS (default "e6": 24 trials; "e1,e6" for a two-size
split) and splits the overhead into a fixed launch cost and a per-trial part; CPU seconds per kind of process say
where it goes. ``WMHP_BENCH_GRIDS=all`` (or ``... bench_pipeline all``)
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


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str, dict[str, float]]:
    """Wall seconds, stdout, and CPU seconds per kind of process (every process of the command's session, sampled
    from /proc: the driver, the trial workers, Ray's daemons), so that the overhead can be told where it goes."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=Path(__file__).parent.parent,
                                 start_new_session=True, text=True)
        cpu: dict[int, tuple[float, str]] = {}
        while child.poll() is None:
            _sample_session(child.pid, cpu)
            time.sleep(0.25)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{stdout}\n{stderr[-3000:]}")
    by_kind: dict[str, float] = {}
    for seconds, kind in cpu.values():
        by_kind[kind] = round(by_kind.get(kind, 0.0) + seconds, 1)
    return wall, stdout, by_kind


_KINDS = (("ray::ImplicitFunc", "trial workers"), ("ray::run_trial", "trial workers"), ("wmhp.cli", "driver"),
          ("default_worker.py", "idle Ray workers"),
          ("bench_pipeline", "driver"), ("multiprocessing.spawn", "trial workers"), ("gcs_server", "Ray daemons"), ("raylet", "Ray daemons"),
          ("log_monitor", "Ray daemons"), ("dashboard", "Ray daemons"), ("monitor.py", "Ray daemons"),
          ("ray::", "idle Ray workers"))


CPU_KINDS = ("trial workers", "driver", "Ray daemons", "idle Ray workers", "other")


def _sample_session(sid: int, cpu: dict[int, tuple[float, str]]) -> None:
    """Add the CPU seconds so far of every live process in session ``sid`` to ``cpu`` (pid -> seconds, kind)."""
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[3]) != sid:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick
            title = Path(f"/proc/{name}/cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
        kind = next((k for marker, k in _KINDS if marker in title), "other")
        previous = cpu.get(int(name), (0.0, kind))
        # A Ray worker renames itself as it goes (default_worker.py, ray::IDLE, ray::ImplicitFunc): once it ran a
        # trial, all of its CPU counts as a trial worker's.
        keep = previous[1] == "trial workers" or kind == "other"
        cpu[int(name)] = (max(previous[0], seconds), previous[1] if keep else kind)


def measure(grid: str = DEFAULT_GRID, preset: str = "cpu", workers: int | None = None) -> dict:
    workers = workers or os.cpu_count() or 1
    cells = _unique_cells(grid, preset)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="wmhp-bench-") as tmp:
        # Ray gives each 1-CPU worker OMP_NUM_THREADS=1; the pool's workers get the same.
        pool_env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pool_s, _, pool_cpu = _timed([sys.executable, "-m", "benchmarks.bench_pipeline", "--pool", grid, preset,
                            str(workers)], pool_env)
        grids = [] if grid == ALL else [grid]
        ablate = [sys.executable, "-m", "wmhp.cli", "ablate", *grids, "--preset", preset, "--results-dir", tmp,
                  "--max-concurrent", str(workers)]
        pipeline_s, out, pipeline_cpu = _timed(ablate + ["--timings"], env)
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
        "pool_cpu_s": pool_cpu,
        "pipeline_cpu_s": pipeline_cpu,
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def run(out_dir: Path) -> dict:
    """The grids in WMHP_BENCH_GRIDS (default e6, 24 trials, ~4 minutes on 2 cores); with two grids of different
    sizes the overhead splits into a fixed launch cost and a per-trial part, with one it splits at Tuner.fit."""
    grids = os.environ.get("WMHP_BENCH_GRIDS", DEFAULT_GRID).split(",")
    rows = [measure(grid) for grid in grids]
    result: dict = {"runs": rows, "goal_ratio": GOAL}
    a, b = rows[0], rows[-1]
    if a["trials"] != b["trials"]:
        per_trial = (b["overhead_s"] - a["overhead_s"]) * a["concurrency"] / (b["trials"] - a["trials"])
        result["fixed_overhead_s"] = round(a["overhead_s"] - per_trial * a["trials"] / a["concurrency"], 2)
    else:  # outside Tuner.fit: imports, Ray start, MLflow set-up, shutdown; inside: beyond the whole pool run
        fit = a["pipeline_parts_s"].get("fit_s", a["pipeline_s"])
        per_trial = (fit - a["pool_s"]) * a["concurrency"] / a["trials"]
        result["fixed_overhead_s"] = round(a["pipeline_s"] - fit, 2)
    result["per_trial_overhead_s"] = round(per_trial, 2)  # worker-seconds per trial
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"## Pipeline overhead: `wmhp ablate` vs a process pool (cpu preset, goal <= {GOAL}x)",
        "",
        "| grid | trials | at a time | pool (s) | wmhp ablate (s) | ratio | Ray start (s) | MLflow set-up (s) | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = r["pipeline_parts_s"]
        lines.append(f"| {r['grid']} | {r['trials']} | {r['concurrency']} | {r['pool_s']} | {r['pipeline_s']} | "
                     f"{r['ratio']} | {parts.get('ray_init_s', '-')} | {parts.get('setup_s', '-')} | "
                     f"{r['load_average_1min']} |")
    lines += ["", f"Overhead split: {result['fixed_overhead_s']} s per launch + {result['per_trial_overhead_s']} s "
                  "per trial (worker-seconds).", "", "CPU seconds by process (where the overhead goes):", "",
              "| grid | side | " + " | ".join(CPU_KINDS) + " |", "|---|---|" + "---:|" * len(CPU_KINDS)]
    for r in rows:
        for side in ("pool", "pipeline"):
            cpu = r[f"{side}_cpu_s"]
            lines.append(f"| {r['grid']} | {side} | " + " | ".join(str(cpu.get(k, 0.0)) for k in CPU_KINDS) + " |")
    (out_dir / "pipeline.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pool"]:
        _pool_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        args = sys.argv[1:]
        print(json.dumps(measure(*args[:2]), indent=2))
