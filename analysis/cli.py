"""`wmhp collect` and `wmhp figures`. Bad input: one line naming what is wrong, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.schema import SchemaError
from wmhp.contract import DEFAULT_RESULTS_DIR as DEFAULT_RESULTS


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error
        return int(exc.code or 0)


def _os_error(exc: OSError, results_dir: Path) -> str:
    where = exc.filename or results_dir
    return f"{where}: {exc.strerror or exc} (check that --results-dir {results_dir} is a writable directory)"


def collect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wmhp collect",
        description="Read every wmhp run from MLflow into <results-dir>/runs.parquet and curves.parquet.",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="default: %(default)s")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<results-dir>/mlflow.db)"
    )
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    from mlflow.exceptions import MlflowException

    from analysis.collect import CollectError, collect

    try:
        runs_path, curves_path = collect(args.results_dir, args.tracking_uri)
    except (CollectError, MlflowException) as exc:
        print(f"wmhp collect: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --results-dir, a full disk: the environment, not the input
        print(f"wmhp collect: error: {_os_error(exc, args.results_dir)}", file=sys.stderr)
        return 1
    import pyarrow.parquet as pq

    runs = pq.read_metadata(runs_path).num_rows
    epochs = pq.read_metadata(curves_path).num_rows
    print(f"{runs} runs -> {runs_path}\n{epochs} epoch rows -> {curves_path}")
    return 0


def figures_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wmhp figures",
        description="Draw every figure, the E8 table and REPORT.md from <results-dir>/runs.parquet and curves.parquet.",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="default: %(default)s")
    parser.add_argument("--preset", default=None, help="draw runs of this preset (default: the one with most runs)")
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    from analysis.figures import FiguresError, make_figures

    try:
        written = make_figures(args.results_dir, args.preset)
    except (SchemaError, FiguresError) as exc:
        print(f"wmhp figures: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wmhp figures: error: {_os_error(exc, args.results_dir)}", file=sys.stderr)
        return 1
    figures = sorted({p.parent for p in written if p.suffix in (".png", ".pdf")})
    print(f"{len(written)} files written; figures in {', '.join(map(str, figures)) or '(none)'}")
    print(f"report: {args.results_dir / 'REPORT.md'}")
    return 0
