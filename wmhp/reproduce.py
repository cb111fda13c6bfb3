"""`wmhp reproduce`: every grid, then collect, figures and report; the README's main job."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from wmhp.contract import DEFAULT_RESULTS_DIR


def _fail(message: str, code: int = 2) -> int:
    print(f"wmhp reproduce: error: {message}", file=sys.stderr)
    return code


def reproduce_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wmhp reproduce", description="Run all grids, collect results, draw figures and write REPORT.md."
    )
    parser.add_argument("--preset", default="cpu", help="grid preset: smoke, cpu, cifar10 or imagenet (default cpu)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="default: %(default)s/")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<results-dir>/mlflow.db)")
    parser.add_argument("--grids", nargs="*", metavar="GRID", help="grid names or files (default: all)")
    parser.add_argument("--address", help="Ray cluster address (default: local Ray)")
    args = parser.parse_args(argv)

    import pipeline
    from analysis.collect import CollectError, collect
    from analysis.figures import FiguresError, make_figures
    from analysis.schema import SchemaError

    start = time.perf_counter()
    try:
        options = pipeline.LaunchOptions(tracking_uri=args.tracking_uri, address=args.address)
        summary = pipeline.run_grids(args.grids or None, args.preset, args.results_dir, options)
    except pipeline.GridError as exc:
        return _fail(str(exc))
    except pipeline.LaunchError as exc:
        return _fail(str(exc), 1)
    try:
        collect(args.results_dir, args.tracking_uri)
        written = make_figures(args.results_dir, args.preset)
    except (CollectError, SchemaError, FiguresError) as exc:
        return _fail(str(exc))
    minutes = (time.perf_counter() - start) / 60
    status = "finished" if summary.ok else "finished with failed cells (see above; run again to retry them)"
    print(f"\nwmhp reproduce --preset {args.preset} {status} in {minutes:.1f} min.")
    print(f"  figures: {args.results_dir / 'figures'} ({sum(1 for p in written if p.suffix == '.png')} PNG + PDF)")
    print(f"  tables:  {args.results_dir / 'tables'}")
    print(f"  report:  {args.results_dir / 'REPORT.md'}")
    return 0 if summary.ok else 1
