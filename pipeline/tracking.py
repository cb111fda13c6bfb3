"""Driver-side MLflow bookkeeping: experiments, runs, dedup by config hash, adoption of finished cells.

Only the driver writes (one writer, which keeps the default sqlite store safe). The layout is the contract
read by ``analysis`` (design.md): one experiment ``wmhp/<grid>`` per grid, one run per cell named
``<grid>-<config_hash>``, tags ``wmhp.experiment``, ``wmhp.grid``, ``wmhp.preset``, ``wmhp.config_hash``,
``wmhp.code_version``, every flattened config field as a param, every per-epoch metric with step = epoch, and
artifacts ``config.yaml``, ``curves.csv`` and ``state.pt`` (when under 50 MB).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bnn.config import flatten, to_dict
from pipeline.faults import driver_fault_point
from pipeline.grids import Cell

EXPERIMENT_PREFIX = "wmhp/"
MAX_STATE_ARTIFACT_BYTES = 50 * 2**20
STATE_FILE = "state.pt"
FIRST_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "flip_ratio")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """A tracking server decides where artifacts go; local stores get an explicit artifact_location."""
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def unusable_sqlite_store(db: Path) -> str | None:
    """Why an existing sqlite file cannot be a tracking store (read-only check), or None when it can.

    An empty file is fine (MLflow builds its schema there); garbage would end in an SQLAlchemy traceback.
    """
    import contextlib
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            connection.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        return f"not a readable SQLite database ({exc})"
    return None


def create_sqlite_store(db: Path) -> None:
    """Start a new sqlite store as a copy of an empty, fully migrated one.

    MLflow builds a store by running every schema migration, seconds of CPU that a first launch on a small
    machine would take from its trials. The empty store is built once per MLflow version, under
    ``$XDG_CACHE_HOME/wmhp`` (default ``~/.cache/wmhp``); without a writable cache MLflow builds it in place.
    """
    import mlflow

    if db.exists():
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wmhp"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        if not template.exists():
            cache.mkdir(parents=True, exist_ok=True)
            building = template.with_name(f".{template.name}.{os.getpid()}.tmp")
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments()  # creates and migrates
            os.replace(building, template)
        partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, partial)
        os.replace(partial, db)
    except OSError:
        pass  # no usable cache: the Tracker's client creates the store itself


def code_version() -> str:
    """``<package version>+g<commit>[.dirty]``; just the version outside a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("wmhp")
    except PackageNotFoundError:
        text = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            text += f"+g{commit.stdout.strip()[:12]}" + (".dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return text


def curve_columns(history: Iterable[dict[str, float]]) -> list[str]:
    keys = {key for row in history for key in row}
    return [c for c in FIRST_COLUMNS if c in keys] + sorted(keys - set(FIRST_COLUMNS))


def write_curves(history: list[dict[str, float]], path: Path) -> None:
    """One row per finished epoch, columns ``epoch`` + every metric; NaN written as ``nan``."""
    columns = curve_columns(history)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in sorted(history, key=lambda r: r["epoch"]):
            writer.writerow([_csv_value(row.get(c, math.nan)) for c in columns])


def _csv_value(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    experiment_id: str
    grid: str
    config_hash: str


class Tracker:
    """The MLflow client of one launch; every method is called from the driver only."""

    def __init__(self, uri: str, results_dir: Path) -> None:
        from mlflow import MlflowClient

        for chatty in ("alembic", "mlflow.store.db.utils"):  # schema creation chatter on a fresh sqlite db
            logging.getLogger(chatty).setLevel(logging.WARNING)
        self.uri = uri
        self.results_dir = Path(results_dir).resolve()
        self.client = MlflowClient(tracking_uri=uri)
        self.code_version = code_version()

    # --- experiments ---------------------------------------------------------------------------------------
    def ensure_experiment(self, grid: str) -> str:
        """The id of ``wmhp/<grid>``, created (or restored from deletion) with an explicit artifact location."""
        name = EXPERIMENT_PREFIX + grid
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None if is_server(self.uri) else str(self.results_dir / "artifacts" / grid)
            return self.client.create_experiment(name, artifact_location=location)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def wmhp_experiments(self) -> dict[str, str]:
        """experiment id -> grid name, for every live ``wmhp/*`` experiment."""
        out: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_experiments(
                filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=1000, page_token=token
            )
            out.update({e.experiment_id: e.name[len(EXPERIMENT_PREFIX) :] for e in page})
            token = page.token
            if not token:
                return out

    def _search(self, experiment_ids: list[str], filter_string: str) -> list[Any]:
        runs: list[Any] = []
        if not experiment_ids:
            return runs
        token = None
        while True:
            page = self.client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_by_hash(self) -> dict[str, list[FinishedRun]]:
        """Every FINISHED run of any wmhp experiment, grouped by config hash: the dedup index."""
        experiments = self.wmhp_experiments()
        out: dict[str, list[FinishedRun]] = {}
        for run in self._search(list(experiments), "attributes.status = 'FINISHED'"):
            digest = run.data.tags.get("wmhp.config_hash")
            if digest:
                grid = experiments.get(run.info.experiment_id, "")
                out.setdefault(digest, []).append(FinishedRun(run.info.run_id, run.info.experiment_id, grid, digest))
        return out

    def mark_stale_running(self, experiment_id: str) -> int:
        """Runs left RUNNING by a killed driver -> KILLED. Safe because the caller holds the launch lock."""
        stale = self._search([experiment_id], "attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_tag(run.info.run_id, "wmhp.error", "driver died while this run was in progress")
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stale)

    # --- runs ------------------------------------------------------------------------------------------------
    def start_run(self, experiment_id: str, cell: Cell, preset: str) -> str:
        """A RUNNING run with the contract's tags, every config field as a param, and config.yaml."""
        import yaml
        from mlflow.entities import Param

        tags = {
            "wmhp.experiment": cell.experiment,
            "wmhp.grid": cell.grid,
            "wmhp.preset": preset,
            "wmhp.config_hash": cell.hash,
            "wmhp.code_version": self.code_version,
            **cell.tags,
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=cell.run_name)
        run_id = run.info.run_id
        params = [Param(name, "None" if value is None else str(value)) for name, value in flatten(cell.config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(to_dict(cell.config), sort_keys=False))
            self.client.log_artifact(run_id, str(path))
        return run_id

    def log_epochs(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Every metric of the given epochs, step = epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(row["epoch"])) for row in history for key, value in row.items()
        ]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + _BATCH])

    def end_run(
        self,
        run_id: str,
        history: list[dict[str, float]],
        status: str,
        state_file: Path | None = None,
        error: str | None = None,
    ) -> None:
        """curves.csv (and state.pt when small), then the terminal status."""
        with tempfile.TemporaryDirectory() as tmp:
            if history:
                curves = Path(tmp) / "curves.csv"
                write_curves(history, curves)
                self.client.log_artifact(run_id, str(curves))
            if state_file is not None and state_file.stat().st_size < MAX_STATE_ARTIFACT_BYTES:
                self.client.log_artifact(run_id, str(state_file))
        if error:
            self.client.set_tag(run_id, "wmhp.error", error[-5000:])
        driver_fault_point("end_run")  # test hook: a driver killed between the results and the status
        self.client.set_terminated(run_id, status)

    def adopt(self, source: FinishedRun, experiment_id: str, cell: Cell, preset: str) -> str:
        """Copy a cell finished in another grid's experiment into this grid's, instead of running it again.

        Params, metric histories and artifacts are copied; tags name this grid and preset and point at the
        source run (``wmhp.adopted_from``), so each grid's experiment is complete on its own.
        """
        from mlflow.entities import Metric, Param

        original = self.client.get_run(source.run_id)
        tags = {k: v for k, v in original.data.tags.items() if k.startswith("wmhp.")}
        tags.update({
            "wmhp.experiment": cell.experiment,
            "wmhp.grid": cell.grid,
            "wmhp.preset": preset,
            "wmhp.adopted_from": source.run_id,
            "wmhp.adopted_from_grid": source.grid,
        })
        run = self.client.create_run(experiment_id, start_time=original.info.start_time, tags=tags,
                                     run_name=cell.run_name)
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in original.data.params.items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        metrics: list[Metric] = []
        for key in original.data.metrics:
            metrics.extend(self.client.get_metric_history(source.run_id, key))
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
        tmp = tempfile.mkdtemp(prefix="wmhp-adopt-")
        try:
            local = self.client.download_artifacts(source.run_id, "", tmp)
            if any(Path(local).iterdir()):
                self.client.log_artifacts(run_id, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.client.set_terminated(run_id, "FINISHED", end_time=original.info.end_time)
        return run_id
