"""The schema of runs.parquet and curves.parquet, written down once and checked on every read.

runs.parquet: one row per MLflow run (trial) of every wmhp grid, finished or not. Columns: identity and status
(RUN_COLUMNS), every TrainConfig field as a typed column (names from bnn.config, dotted), then per-run summaries
of the epoch metrics (SUMMARY_COLUMNS). curves.parquet: one row per run and finished epoch, every per-epoch metric
of bnn.train's contract, plus one ``flips.<layer>`` column per binary layer seen in any run.

Missing values are null in string/int columns and NaN in float columns.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pyarrow as pa
import pyarrow.parquet as pq

from bnn.config import field_names, field_type
from wmhp.contract import EPOCH_METRICS, FLIPS_PREFIX

SCHEMA_VERSION = "2"
FINISHED = "FINISHED"

RUN_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("experiment", pa.string()),  # the experiment tag: e1..e9
    ("grid", pa.string()),
    ("preset", pa.string()),
    ("config_hash", pa.string()),
    ("status", pa.string()),  # MLflow run status: FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    ("run_id", pa.string()),
    ("run_name", pa.string()),
    ("mlflow_experiment_id", pa.string()),
    ("code_version", pa.string()),
    ("start_time", pa.timestamp("ms", tz="UTC")),
    ("end_time", pa.timestamp("ms", tz="UTC")),
    ("wall_s", pa.float64()),  # end_time - start_time; NaN while a run has no end
    ("epochs_done", pa.int64()),  # rows of this run in curves.parquet
    ("filter_alpha", pa.float64()),  # the exact gradient-filter reading of the binary optimizer (bnn.mapping)
    ("filter_gamma", pa.float64()),  # NaN where there is none (Adam)
    # Search grids (E9; pipeline/search.py): the space a trial sampled, its searcher (random / tpe), the TPE
    # repeat and the trial's index in its pool or repeat; null for grid cells.
    ("search_space", pa.string()),
    ("searcher", pa.string()),
    ("search_repeat", pa.int64()),
    ("search_index", pa.int64()),
)

SUMMARY_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    *((f"final_{name}", pa.float64()) for name in EPOCH_METRICS),
    ("best_val_acc", pa.float64()),  # selection is on the validation split (data.val_fraction), never on test
    ("best_val_epoch", pa.int64()),
    ("test_acc_at_best_val", pa.float64()),  # the test accuracy reported for the epoch selected on validation
    ("best_test_acc", pa.float64()),  # max over epochs of test accuracy: reported only, optimistically biased
    ("train_s", pa.float64()),  # sum of epoch_s: time spent training, without start-up and evaluation gaps
)

CURVE_KEY_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("run_id", pa.string()),
    ("grid", pa.string()),
    ("config_hash", pa.string()),
    ("status", pa.string()),
    ("epoch", pa.int64()),
)


class SchemaError(ValueError):
    """A parquet file does not have the columns this version of wmhp writes; the message names the column."""


def arrow_type(tp: Any) -> pa.DataType:
    """The parquet column type of a TrainConfig field annotation."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        return arrow_type(inner)
    if origin is Literal or tp is str:
        return pa.string()
    if origin is tuple:
        return pa.list_(pa.int64())
    if tp is bool:
        return pa.bool_()
    if tp is int:
        return pa.int64()
    if tp is float:
        return pa.float64()
    raise TypeError(f"no parquet column type for config annotation {tp!r}")


def config_columns() -> tuple[tuple[str, pa.DataType], ...]:
    return tuple((name, arrow_type(field_type(name))) for name in field_names())


def runs_schema() -> pa.Schema:
    fields = [*RUN_COLUMNS, *config_columns(), *SUMMARY_COLUMNS]
    return pa.schema(fields, metadata={"wmhp.schema": f"runs/{SCHEMA_VERSION}"})


def curves_schema(flip_layers: typing.Iterable[str] = ()) -> pa.Schema:
    """Fixed columns, then one float column per ``flips.<layer>`` name, sorted."""
    metrics = [(name, pa.float64()) for name in EPOCH_METRICS]
    flips = [(name, pa.float64()) for name in sorted(set(flip_layers))]
    return pa.schema([*CURVE_KEY_COLUMNS, *metrics, *flips], metadata={"wmhp.schema": f"curves/{SCHEMA_VERSION}"})


def check(schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Every expected column is present with its type; extra ``flips.*`` columns must be floats."""
    for field in expected:
        index = schema.get_field_index(field.name)
        if index < 0:
            raise SchemaError(
                f"{where}: column '{field.name}' is missing (expected type {field.type}); "
                "it was written by another wmhp version or by hand: run `wmhp collect` again"
            )
        actual = schema.field(index).type
        if actual != field.type:
            raise SchemaError(f"{where}: column '{field.name}' has type {actual}, expected {field.type}")
    for field in schema:
        if field.name.startswith(FLIPS_PREFIX) and field.type != pa.float64():
            raise SchemaError(f"{where}: column '{field.name}' has type {field.type}, expected double")


def flip_columns(schema: pa.Schema) -> list[str]:
    return sorted(name for name in schema.names if name.startswith(FLIPS_PREFIX))


def read_runs(path: Path) -> pa.Table:
    return _read(path, lambda schema: runs_schema())


def read_curves(path: Path) -> pa.Table:
    return _read(path, lambda schema: curves_schema(flip_columns(schema)))


def _read(path: Path, expected: typing.Callable[[pa.Schema], pa.Schema]) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such file: run `wmhp collect` first")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{path}: not a parquet file ({exc})") from None
    check(schema, expected(schema), str(path))
    return pq.read_table(path)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write next to ``path`` and rename, so a reader never sees half a file. Same table, same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
