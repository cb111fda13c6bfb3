"""``wmhp ablate [GRID ...]``: run ablation grids (see pipeline/grids.py for the grid file format)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bnn.config import ConfigError, parse_override
from wmhp.contract import DEFAULT_RESULTS_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmhp ablate",
        description="Run ablation grids on Ray Tune, tracked in MLflow. Only cells not finished yet are run; "
        "running the same command again resumes a killed launch.",
    )
    parser.add_argument("grids", nargs="*", metavar="GRID",
                        help="e1 ... e8, a full grid name, or a grid file path (default: all eight)")
    parser.add_argument("--preset", default="cpu", help="smoke, cpu, cifar10 or imagenet (default: cpu)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="default: %(default)s/")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<results-dir>/mlflow.db)")
    parser.add_argument("--address", help="Ray cluster address, e.g. 'auto' on a cluster head (default: local Ray)")
    parser.add_argument("--storage", help="Tune storage path or URI, shared by all nodes (default: <results-dir>/ray)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="F",
                        help="GPUs per trial; fractions pack small networks onto one GPU (default: 0)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="F",
                        help="CPUs per trial; also its torch threads (default: 1)")
    parser.add_argument("--max-concurrent", type=int, metavar="N", help="at most N trials at once")
    parser.add_argument("--max-failures", type=int, default=2, metavar="N",
                        help="retries of a failing trial, each from its last checkpoint (default: 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field in every cell, e.g. --set data.root=/data/cifar10")
    parser.add_argument("--dry-run", action="store_true",
                        help="print trials per grid, how many are done, and a cost estimate; run nothing")
    parser.add_argument("--timings", action="store_true",
                        help="end with one line 'timings {json}': where the launch's time went (benchmarks)")
    return parser


def ablate_main(argv: list[str]) -> int:
    """Exit codes: 0 all cells finished, 1 some failed or the launch failed, 2 bad input (nothing written)."""
    try:
        args = _parser().parse_intermixed_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    from pipeline.grids import GridError

    try:
        overrides = dict(parse_override(text) for text in args.overrides)
    except ConfigError as exc:
        print(f"wmhp ablate: error: --set: {exc}", file=sys.stderr)
        return 2
    from pipeline.runner import LaunchError, LaunchOptions, run_grids

    try:
        options = LaunchOptions(
            tracking_uri=args.tracking_uri,
            storage=args.storage,
            address=args.address,
            gpus_per_trial=args.gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial,
            max_concurrent=args.max_concurrent,
            max_failures=args.max_failures,
        )
        summary = run_grids(args.grids or None, args.preset, args.results_dir, options, overrides=overrides,
                            dry_run=args.dry_run)
    except GridError as exc:
        print(f"wmhp ablate: error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"wmhp ablate: error: {exc}", file=sys.stderr)
        return 1
    if args.timings:
        print("timings " + json.dumps({**summary.timings, "wall_s": summary.wall_s}))
    return 0 if summary.ok else 1
