"""The stored-results contract: how the pipeline leaves runs in MLflow and how analysis reads them, written once.

pipeline/ writes and analysis/ reads; they never import each other (design.md) and both import this module.
It imports nothing of wmhp but bnn.outputs (pure names), and neither torch, MLflow nor Ray: MLflow clients are
handed in, so the one paginated search loop lives here too. Layout:

- one MLflow experiment ``wmhp/<grid>`` per grid, artifacts under ``<results-dir>/artifacts/<grid>`` for a local
  store (a server decides for itself);
- one run per cell, named by ``run_name`` (what a person tells cells apart by; identity is the config_hash tag),
  tagged with ``run_tags``, every flattened TrainConfig field as a param, every per-epoch metric (METRIC_NAMES
  and ``flips.<layer>``) with step = epoch, and artifacts CONFIG_FILE, CURVES_FILE (``write_curves``) and the
  trial's CHECKPOINT_FILE when small; status FINISHED only when the trial completed every epoch;
- search grids (E9) add the SEARCH_TAGS.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bnn.outputs import CHECKPOINT_FILE, FLIPS_PREFIX, METRIC_NAMES

# --- names -------------------------------------------------------------------------------------------------
EXPERIMENT_PREFIX = "wmhp/"
TAG_PREFIX = "wmhp."
TAG_EXPERIMENT = "wmhp.experiment"  # the paper experiment a grid regenerates: e1..e9
TAG_GRID = "wmhp.grid"
TAG_PRESET = "wmhp.preset"
TAG_CONFIG_HASH = "wmhp.config_hash"  # the identity of a cell (bnn.config.config_hash)
TAG_CODE_VERSION = "wmhp.code_version"
TAG_ERROR = "wmhp.error"  # why a run failed or was killed
TAG_ADOPTED_FROM = "wmhp.adopted_from"  # run id of the finished run of another grid this one copies
TAG_ADOPTED_FROM_GRID = "wmhp.adopted_from_grid"
# Search grids (pipeline/search.py): the space a trial sampled, its searcher (random / tpe), the TPE repeat,
# the trial's index in its pool or repeat, and the sampled point (JSON).
TAG_SPACE = "wmhp.space"
TAG_SEARCHER = "wmhp.searcher"
TAG_REPEAT = "wmhp.repeat"
TAG_SEARCH_INDEX = "wmhp.search_index"
TAG_SEARCH_POINT = "wmhp.search_point"
TAG_REPORT_FILES = "wmhp.report_files"  # on the report run: how many files `wmhp figures` logged
# MLflow 3.x reads this experiment tag to open an experiment in the model-training view (runs, params, metric
# charts) rather than the GenAI one. 3.17.2's UI decides by its workflow switch instead (the ?workflowType=
# address parameter or the browser's last choice, default GenAI; README), so the tag serves the other versions.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
REPORT_GRID = "report"  # experiment wmhp/report holds `wmhp figures`' report run, not a grid's runs

HISTORY_FILE = "history.json"  # a trial's reported epochs, beside CHECKPOINT_FILE (bnn.train's state)
CONFIG_FILE = "config.yaml"
CURVES_FILE = "curves.csv"
MAX_STATE_ARTIFACT_BYTES = 50 * 2**20  # larger states stay in the trial's checkpoint only
RUNS_PARQUET = "runs.parquet"
CURVES_PARQUET = "curves.parquet"
DEFAULT_RESULTS_DIR = Path("results")
TRACKING_DB = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
PAGE_SIZE = 1000  # MLflow's largest search page

EPOCH = "epoch"
EPOCH_METRICS = tuple(name for name in METRIC_NAMES if name != EPOCH)  # besides one "flips.<layer>" per layer


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / TRACKING_DB}"


def artifact_location(results_dir: Path, grid: str) -> str:
    """Where a local store keeps a grid's artifacts (without one, MLflow uses ./mlruns of the working dir)."""
    return str(Path(results_dir).resolve() / ARTIFACTS_DIR / grid)


def experiment_name(grid: str) -> str:
    return EXPERIMENT_PREFIX + grid


def grid_of(experiment: str) -> str:
    """The grid of an experiment named ``wmhp/<grid>``."""
    return experiment[len(EXPERIMENT_PREFIX) :]


def run_tags(experiment: str, grid: str, preset: str, config_hash: str, code_version: str) -> dict[str, str]:
    return {
        TAG_EXPERIMENT: experiment,
        TAG_GRID: grid,
        TAG_PRESET: preset,
        TAG_CONFIG_HASH: config_hash,
        TAG_CODE_VERSION: code_version,
    }


def search_tags(space: str, searcher: str, repeat: int, index: int, point: Mapping[str, Any]) -> dict[str, str]:
    return {
        TAG_SPACE: space,
        TAG_SEARCHER: searcher,
        TAG_REPEAT: str(repeat),
        TAG_SEARCH_INDEX: str(index),
        TAG_SEARCH_POINT: json.dumps(point, sort_keys=True),
    }


def is_epoch_metric(name: str) -> bool:
    return name == EPOCH or name in EPOCH_METRICS or name.startswith(FLIPS_PREFIX)


# --- run names ---------------------------------------------------------------------------------------------
def run_name(experiment: str, swept: Mapping[str, Any], seed: int) -> str:
    """``e5 alpha=1e-3 gamma=0.1 seed=0``: the experiment, each swept field by its short name, then the seed.

    A short name is the field's last dotted part (a section's ``name`` goes by the section: ``binary_opt=sgd``),
    or the whole name where two swept fields share it. Fields set to None (derived by resolve) are left out.
    """
    fields = [(name, value) for name, value in swept.items() if name != "seed" and value is not None]
    shorts = [_short_name(name) for name, _ in fields]
    parts = [
        f"{short if shorts.count(short) == 1 else name}={_short_value(value)}"
        for (name, value), short in zip(fields, shorts)
    ]
    return " ".join([experiment, *parts, f"seed={seed}"])


def _short_name(name: str) -> str:
    section, _, last = name.rpartition(".")
    return section.rpartition(".")[2] if last == "name" and section else last


def with_hash(name: str, config_hash: str) -> str:
    """The name of a run whose cell differs from an earlier same-named one only outside the swept fields."""
    return f"{name} #{config_hash[:8]}"


def _short_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        if value == 0 or 1e-2 <= abs(value) < 1e5 or not math.isfinite(value):
            text = repr(value)
            return text[:-2] if text.endswith(".0") else text
        digits = next(n for n in range(17) if float(f"{value:.{n}e}") == value)  # the shortest exact one
        mantissa, _, exponent = f"{value:.{digits}e}".partition("e")
        return f"{mantissa}e{int(exponent)}"  # 1e-03 -> 1e-3
    if isinstance(value, (list, tuple)):
        return "x".join(_short_value(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_short_value(v)}" for k, v in value.items())
    return str(value)


# --- curves.csv ---------------------------------------------------------------------------------------------
_FIRST_COLUMNS = (EPOCH, "train_loss", "train_acc", "test_loss", "test_acc", "flip_ratio")


class CurvesError(ValueError):
    """A curves.csv that cannot be read; the message names the file."""


def write_curves(history: list[dict[str, float]], path: Path) -> None:
    """One row per reported epoch, in epoch order, columns ``epoch`` + every metric; NaN written as ``nan``.

    A retried epoch appears twice; readers keep its last row.
    """
    keys = {key for row in history for key in row}
    columns = [c for c in _FIRST_COLUMNS if c in keys] + sorted(keys - set(_FIRST_COLUMNS))
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in sorted(history, key=lambda r: r[EPOCH]):
            writer.writerow([_csv_value(row.get(c, math.nan)) for c in columns])


def _csv_value(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def read_curves(paths: list[Path]) -> list[dict[str, Any]]:
    """Each file's epoch metrics: column -> float64 array by epoch (one row per epoch, the last of a repeat).

    Many small files are parsed in one pass per distinct header: a CSV parse has a fixed cost of a few ms,
    which 2,000 runs would pay 2,000 times. Needs numpy and pyarrow (imported here, on use).
    """
    groups: dict[bytes, list[tuple[int, bytes, int]]] = {}
    for index, path in enumerate(paths):
        header, _, body = Path(path).read_bytes().partition(b"\n")
        body = body.rstrip()
        body = body + b"\n" if body else b""
        groups.setdefault(header.rstrip(b"\r"), []).append((index, body, body.count(b"\n")))
    out: list[dict[str, Any]] = [{} for _ in paths]
    for header, items in groups.items():
        try:
            columns = _parse_csv(header + b"\n" + b"".join(body for _, body, _ in items), paths[items[0][0]])
        except CurvesError:
            columns = None  # a bad file in the batch: read file by file to name it
        if columns is None or len(columns[EPOCH]) != sum(n for _, _, n in items):  # or blank / quoted lines
            for index, _, _ in items:
                out[index] = by_epoch(_parse_csv(Path(paths[index]).read_bytes(), paths[index]))
            continue
        start = 0
        for index, _, n in items:
            out[index] = by_epoch({name: values[start : start + n] for name, values in columns.items()})
            start += n
    return out


def _parse_csv(data: bytes, path: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(pa.py_buffer(data))
    except pa.ArrowInvalid as exc:
        raise CurvesError(f"{path}: not a readable {CURVES_FILE} ({exc})") from None
    if EPOCH not in table.column_names:
        raise CurvesError(f"{path}: no '{EPOCH}' column ({CURVES_FILE} has one row per epoch, columns epoch + metrics)")
    return {
        name: pc.cast(table[name], pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # nulls become NaN
        for name in table.column_names
        if is_epoch_metric(name)
    }


def by_epoch(columns: dict[str, Any]) -> dict[str, Any]:
    """Sort by epoch; where an epoch repeats (a resumed trial), keep its last row."""
    import numpy as np

    epoch = columns[EPOCH]
    keep = ~np.isnan(epoch)
    order = np.argsort(epoch[keep], kind="stable")
    rows = np.flatnonzero(keep)[order]
    _, last = np.unique(epoch[rows][::-1], return_index=True)
    rows = rows[::-1][last]
    return {name: values[rows] for name, values in columns.items()}


# --- searching a store ---------------------------------------------------------------------------------------
def paged(search: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of an MLflow search, page by page: ``search(page_token)`` returns one page (a PagedList)."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def wmhp_experiments(client: Any) -> dict[str, str]:
    """experiment id -> grid, for every live ``wmhp/<grid>`` experiment of an MlflowClient."""
    experiments = paged(lambda token: client.search_experiments(
        filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=PAGE_SIZE, page_token=token))
    return {e.experiment_id: grid_of(e.name) for e in experiments if grid_of(e.name) != REPORT_GRID}


def search_runs(client: Any, experiment_ids: Iterable[str], filter_string: str = "") -> Iterator[Any]:
    """Every run of the experiments that matches ``filter_string``, through all pages."""
    ids = list(experiment_ids)
    if not ids:
        return iter(())
    return paged(lambda token: client.search_runs(ids, filter_string, max_results=PAGE_SIZE, page_token=token))
