"""`wmhp collect` and `wmhp figures`. Bad input: one line naming what is wrong, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.schema import SchemaError
from wmhp.contract import DEFAULT_RESULTS_DIR as DEFAULT_RESULTS, TRACKING_DB


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
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store to log the report to, as run 'report' of experiment wmhp/report "
                             "(default: sqlite:///<results-dir>/mlflow.db when that file exists)")  # fmt: skip
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
    return _log_report(args.results_dir, written, args.tracking_uri)


def _log_report(results_dir: Path, written: list[Path], tracking_uri: str | None) -> int:
    from mlflow.exceptions import MlflowException

    from analysis.collect import CollectError
    from analysis.report_run import log_report, store_for, ui_address

    uri = store_for(results_dir, tracking_uri)
    if uri is None:
        print(f"not logged to MLflow: no store at {results_dir / TRACKING_DB} (pass --tracking-uri)")
        return 0
    try:
        experiment_id, run_id = log_report(results_dir, written, uri)
    except CollectError as exc:
        print(f"wmhp figures: error: {exc}", file=sys.stderr)
        return 2
    except (MlflowException, OSError) as exc:  # the files are written; only the copy in MLflow failed
        print(f"wmhp figures: error: logging the report to {uri} failed: {str(exc)[:300]}", file=sys.stderr)
        return 1
    print(f"logged to MLflow: experiment wmhp/report, run report ({run_id}) at {uri}")
    address = ui_address(uri, experiment_id, run_id)
    if address:
        print(f"open: {address}")
    return 0
