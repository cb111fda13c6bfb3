"""collect + figures on a generated result set of about 2,000 trials x 100 epochs (goal: under 30 s together).

Setup, not timed: benchmarks.synthetic logs the set into a fresh sqlite MLflow store in the exact form the
pipeline writes (cached under the system temp dir, keyed by size and generator version, since logging 2,000
runs through MLflow takes minutes). Finished runs carry their full per-epoch numbers in curves.csv and only the
last epoch in the metric history (what collect reads either way); killed and running runs carry full history.
Timed: `wmhp collect` and `wmhp figures` as the user runs them, each a fresh process (imports included).

Usage: python -m benchmarks.bench_analysis [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import synthetic
from wmhp.contract import CURVES_PARQUET, RUNS_PARQUET, default_tracking_uri

SIZE = synthetic.Size(points=12, seeds=5, epochs=100)  # 1,995 finished + 10 unfinished runs
GOAL_S = 30.0


def _cache_dir() -> Path:
    version = hashlib.sha256(inspect.getsource(synthetic).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"wmhp-bench-analysis-{SIZE.points}x{SIZE.seeds}x{SIZE.epochs}-{version}"


def generated_set() -> tuple[Path, int, float]:
    """The cached results dir (generated when missing), its run count, and the seconds generation took now."""
    root = _cache_dir()
    marker = root / "generated.json"
    if marker.is_file():
        return root, json.loads(marker.read_text())["runs"], 0.0
    if root.exists():  # an interrupted generation: start over
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    start = time.perf_counter()
    runs = synthetic.write(default_tracking_uri(root), root, SIZE, history="final")
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"runs": runs, "generation_s": seconds}))
    return root, runs, seconds


def _timed(*args: str) -> float:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "wmhp.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"wmhp {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds


def run(out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root, runs, generation_s = generated_set()
    collect_s = _timed("collect", "--results-dir", str(root))
    figures_s = _timed("figures", "--results-dir", str(root))
    rows = pq.read_metadata(root / RUNS_PARQUET).num_rows
    epochs = pq.read_metadata(root / CURVES_PARQUET).num_rows
    if rows != runs:
        raise RuntimeError(f"runs.parquet has {rows} rows for {runs} generated runs")
    total = collect_s + figures_s
    result = {
        "runs": runs,
        "epoch_rows": epochs,
        "epochs_per_run": SIZE.epochs,
        "collect_s": round(collect_s, 2),
        "figures_s": round(figures_s, 2),
        "total_s": round(total, 2),
        "goal_s": GOAL_S,
        "met": total < GOAL_S,
        "generation_s": round(generation_s, 1) if generation_s else "cached",
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }
    (out_dir / "bench_analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "bench_analysis.md").write_text(
        "# analysis: collect + figures\n\n"
        f"Generated result set: {runs} MLflow runs (sqlite), {epochs} epoch rows ({SIZE.epochs} epochs per run); "
        "each command timed as a fresh process, imports included.\n\n"
        "| step | seconds |\n|---|---|\n"
        f"| `wmhp collect` | {collect_s:.1f} |\n| `wmhp figures` | {figures_s:.1f} |\n"
        f"| **total** (goal < {GOAL_S:.0f} s) | **{total:.1f}** {'met' if total < GOAL_S else 'NOT met'} |\n\n"
        f"Machine: {os.cpu_count()} cores, 1-minute load average {os.getloadavg()[0]:.1f} at the end of the run.\n"
    )
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    print(json.dumps(run(args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
