"""MLflow (embedded sqlite or a server) -> runs.parquet and curves.parquet.

Every run of every grid's experiment (wmhp.contract) is kept with its status, finished or not; the figures decide
what to use. Per-epoch numbers come from each run's curves file (one read per run, instead of one metric-history
query per metric) and from the metric history only where that artifact is missing (a killed run).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import math
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa

from analysis.schema import EPOCH_METRICS, curves_schema, runs_schema, write_atomic
from bnn.config import field_names
from wmhp import contract
from wmhp.contract import CURVES_FILE, default_tracking_uri

_DOWNLOAD_THREADS = 8


class CollectError(ValueError):
    """The tracking store cannot be read as wmhp results; the message says what to fix."""


def collect(results_dir: Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """Read every wmhp run and write ``<results_dir>/runs.parquet`` and ``curves.parquet``; returns both paths.

    Deterministic: the same runs give byte-identical files. Nothing is written when reading fails.
    """
    from mlflow.tracking import MlflowClient

    results_dir = Path(results_dir)
    uri = tracking_uri or default_tracking_uri(results_dir)
    check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    found = list(_wmhp_runs(client))
    if not found:
        raise CollectError(f"{uri}: no runs in experiments named '{contract.experiment_name('<grid>')}': "
                           "run `wmhp ablate` first")
    records = [_record(grid_name, run) for grid_name, run in found]
    _attach_curves(client, records)
    records.sort(key=lambda r: (r.row["experiment"], r.row["grid"], r.row["config_hash"], r.start_ms, r.row["run_id"]))
    runs_table = _runs_table(records)
    curves_table = _curves_table(records)
    runs_path, curves_path = results_dir / contract.RUNS_PARQUET, results_dir / contract.CURVES_PARQUET
    write_atomic(runs_table, runs_path)
    write_atomic(curves_table, curves_path)
    return runs_path, curves_path


def check_store(uri: str) -> None:
    """CollectError unless ``uri`` names an existing sqlite store or a reachable server."""
    # MLflow would silently create an empty database at a mistyped path.
    if uri.startswith("sqlite:///"):
        path = Path(unquote(uri[len("sqlite:///") :]))
        if not path.is_file():
            raise CollectError(f"--tracking-uri {uri}: no such database file {path} (run `wmhp ablate` first)")
        _check_sqlite_store(path)
    elif uri.startswith(("http://", "https://")):
        # MLflow's client retries an unreachable server for minutes; one quick probe says it at once.
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except OSError as exc:
            raise CollectError(f"--tracking-uri {uri}: cannot reach the MLflow server ({exc})") from None
    elif not re.match(r"^(sqlite|postgresql|mysql|mssql|databricks)", uri):
        raise CollectError(f"--tracking-uri {uri}: expected sqlite:///PATH or http(s)://HOST:PORT")


def _check_sqlite_store(path: Path) -> None:
    """Refuse a file that is not an MLflow store, opened read-only: MLflow would write a fresh schema into an
    empty file, and a garbage one ends in an SQLAlchemy traceback."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise CollectError(f"{path}: not a readable SQLite database ({exc}); point --tracking-uri at the "
                           "mlflow.db that `wmhp ablate` wrote") from None
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise CollectError(f"{path}: not an MLflow store (no MLflow tables); point --tracking-uri at the "
                           "mlflow.db that `wmhp ablate` wrote")


def _wmhp_runs(client: Any) -> Iterator[tuple[str, Any]]:
    experiments = contract.wmhp_experiments(client)
    for experiment_id, grid in sorted(experiments.items(), key=lambda item: item[1]):
        for run in contract.search_runs(client, [experiment_id]):
            yield grid, run


@dataclass
class _Record:
    row: dict[str, Any]
    start_ms: int
    artifact_uri: str
    metric_keys: list[str]
    curve: dict[str, np.ndarray] | None = None  # column -> values, sorted by epoch


def _record(grid_name: str, run: Any) -> _Record:
    tags, params, info = run.data.tags, run.data.params, run.info
    grid = tags.get(contract.TAG_GRID, grid_name)
    experiment = tags.get(contract.TAG_EXPERIMENT) or _experiment_of(grid)
    row: dict[str, Any] = {
        "experiment": experiment,
        "grid": grid,
        "preset": tags.get(contract.TAG_PRESET),
        "config_hash": tags.get(contract.TAG_CONFIG_HASH),
        "status": info.status,
        "run_id": info.run_id,
        "run_name": info.run_name,
        "mlflow_experiment_id": info.experiment_id,
        "code_version": tags.get(contract.TAG_CODE_VERSION),
        "start_time": info.start_time,
        "end_time": info.end_time,
        "wall_s": (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else math.nan,
        "search_space": tags.get(contract.TAG_SPACE),
        "searcher": tags.get(contract.TAG_SEARCHER),
        "search_repeat": _int_tag(tags.get(contract.TAG_REPEAT)),
        "search_index": _int_tag(tags.get(contract.TAG_SEARCH_INDEX)),
    }
    for name in field_names():
        row[name] = _parse_param(name, params.get(name), info.run_id)
    return _Record(row, info.start_time or 0, info.artifact_uri, sorted(run.data.metrics))


def _int_tag(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _experiment_of(grid: str) -> str | None:
    match = re.match(r"^(e\d+)", grid)
    return match.group(1) if match else None


def _parse_param(name: str, text: str | None, run_id: str) -> Any:
    """MLflow params are strings (None logged as "None"); convert back to the field's parquet type."""
    if text is None or text == "None":
        return None
    kind = _config_types()[name]
    try:
        if kind == pa.float64():
            return float(text)
        if kind == pa.int64():
            return int(text)
        if kind == pa.bool_():
            if text not in ("True", "False", "true", "false"):
                raise ValueError(text)
            return text in ("True", "true")
        if pa.types.is_list(kind):
            return [int(v) for v in ast.literal_eval(text)]
        return text
    except (ValueError, SyntaxError, TypeError):
        raise CollectError(f"run {run_id}: param '{name}' = {text!r} is not a valid {kind}") from None


@functools.cache
def _config_types() -> dict[str, pa.DataType]:
    return {field.name: field.type for field in runs_schema()}


# --- per-epoch curves ------------------------------------------------------------------------------------
def _attach_curves(client: Any, records: list[_Record]) -> None:
    remote = [r for r in records if _local_dir(r.artifact_uri) is None]
    found: dict[int, Path] = {}
    for index, record in enumerate(records):
        directory = _local_dir(record.artifact_uri)
        if directory is not None and (directory / CURVES_FILE).is_file():
            found[index] = directory / CURVES_FILE
    with tempfile.TemporaryDirectory() as tmp:
        if remote:
            positions = {id(r): i for i, r in enumerate(records)}
            with ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
                paths = pool.map(lambda r: _download_curves(client, r, Path(tmp)), remote)
                found.update((positions[id(r)], p) for r, p in zip(remote, paths) if p is not None)
        try:
            curves = contract.read_curves(list(found.values()))
        except contract.CurvesError as exc:
            raise CollectError(str(exc)) from None
        for index, curve in zip(found, curves):
            records[index].curve = curve
    for record in records:
        if record.curve is None:
            record.curve = _history_curves(client, record)


def _local_dir(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def _download_curves(client: Any, record: _Record, tmp: Path) -> Path | None:
    from mlflow.exceptions import MlflowException

    run_id = record.row["run_id"]
    try:
        names = {f.path for f in client.list_artifacts(run_id)}
        if CURVES_FILE not in names:
            return None
        return Path(client.download_artifacts(run_id, CURVES_FILE, str(tmp / run_id)))
    except (MlflowException, OSError):
        return None


def _history_curves(client: Any, record: _Record) -> dict[str, np.ndarray]:
    """Fallback for runs without a curves file: one metric-history query per metric."""
    values: dict[str, dict[int, float]] = {}
    for key in record.metric_keys:
        if not contract.is_epoch_metric(key):
            continue
        history = sorted(client.get_metric_history(record.row["run_id"], key), key=lambda m: (m.step, m.timestamp))
        values[key] = {int(m.step): float(m.value) for m in history}  # a retried epoch: the last value wins
    epochs = sorted(set().union(*values.values())) if values else []
    columns = {"epoch": np.array(epochs, dtype=np.float64)}
    for key, by_step in values.items():
        if key != "epoch":
            columns[key] = np.array([by_step.get(e, math.nan) for e in epochs], dtype=np.float64)
    return contract.by_epoch(columns)


# --- tables -----------------------------------------------------------------------------------------------
def _runs_table(records: list[_Record]) -> pa.Table:
    rows = []
    for record in records:
        curve = record.curve or {"epoch": np.empty(0)}
        row = dict(record.row)
        n = len(curve["epoch"])
        row["epochs_done"] = n
        for name in EPOCH_METRICS:
            values = curve.get(name)
            row[f"final_{name}"] = float(values[-1]) if values is not None and n else math.nan
        row.update(_best_epoch(curve, n))
        for column, name in (("filter_alpha", "alpha"), ("filter_gamma", "gamma")):  # the run's logged reading
            values = curve.get(name)
            row[column] = float(values[0]) if values is not None and n else math.nan
        epoch_s = curve.get("epoch_s")
        row["train_s"] = float(np.nansum(epoch_s)) if epoch_s is not None else math.nan
        rows.append(row)
    schema = runs_schema()
    return pa.Table.from_pylist(rows, schema=schema)


def _best_epoch(curve: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """The epoch selected on validation accuracy (the first of equal ones) and the test accuracy there.

    best_test_acc (the maximum over epochs of the test accuracy) is kept as design.md's contract has it, to be
    reported, never selected on: it is optimistically biased.
    """
    val, test = curve.get("val_acc"), curve.get("test_acc")
    has_val = val is not None and n and not np.all(np.isnan(val))
    has_test = test is not None and n and not np.all(np.isnan(test))
    best = int(np.nanargmax(val)) if has_val else None
    return {
        "best_val_acc": float(val[best]) if best is not None else math.nan,
        "best_val_epoch": int(curve["epoch"][best]) if best is not None else None,
        "test_acc_at_best_val": float(test[best]) if best is not None and has_test else math.nan,
        "best_test_acc": float(np.nanmax(test)) if has_test else math.nan,
    }


def _curves_table(records: list[_Record]) -> pa.Table:
    flips = sorted({name for r in records for name in (r.curve or {}) if name.startswith(contract.FLIPS_PREFIX)})
    schema = curves_schema(flips)
    lengths = [len((r.curve or {"epoch": ()})["epoch"]) for r in records]
    total = sum(lengths)
    columns: dict[str, Any] = {}
    for key in ("run_id", "grid", "config_hash", "status"):
        columns[key] = np.repeat(np.array([r.row[key] for r in records], dtype=object), lengths)
    for name in schema.names[len(columns) :]:
        parts = [
            (r.curve or {}).get(name, np.full(n, math.nan)) if n else np.empty(0) for r, n in zip(records, lengths)
        ]
        columns[name] = np.concatenate(parts) if parts else np.empty(total)
    columns["epoch"] = columns["epoch"].astype(np.int64)
    arrays = [pa.array(columns[field.name], type=field.type, from_pandas=False) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
