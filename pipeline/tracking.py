"""Driver-side MLflow bookkeeping: experiments, runs, dedup by config hash, adoption of finished cells.

Only the driver writes (one writer, which keeps the default sqlite store safe). The layout it writes is the
stored-results contract that ``analysis`` reads, written down in wmhp.contract.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn.config import DataConfig, TrainConfig, config_hash, flatten, from_params, neutral_fields, to_dict
from bnn.data.splits import DEFAULT_SOURCES, split_digest, split_sizes
from pipeline.grids import Cell
from wmhp import contract

_BATCH = 1000  # MLflow's limit of metrics per log_batch call


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


def dataset_input(data: DataConfig) -> Any:
    """The run's dataset as an MLflow run input (the UI's Datasets column): name, digest of the split, where
    it was read from, and the split sizes as its profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = data.root or DEFAULT_SOURCES.get(data.name, f"{data.name} default location")
    sizes = split_sizes(data)
    profile = {**(sizes or {}), "val_fraction": data.val_fraction, "train_subset": data.train_subset}
    dataset = Dataset(name=data.name, digest=split_digest(data), source_type="local",
                      source=json.dumps({"uri": source}), profile=json.dumps(profile))  # fmt: skip
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "train")])


def _neutral_set(params: dict[str, str]) -> bool:
    """Whether a stored run's params set a result-neutral field away from its default."""
    defaults = flatten(TrainConfig())
    return any(params.get(name, "None") != str(defaults[name]) for name in neutral_fields())


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
        self._names: dict[str, dict[str, str]] = {}  # experiment id -> run name -> config hash, as loaded/created

    # --- experiments ---------------------------------------------------------------------------------------
    def ensure_experiment(self, grid: str) -> str:
        """The id of the grid's experiment, created (or restored from deletion) with an explicit artifact location."""
        name = contract.experiment_name(grid)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None if is_server(self.uri) else contract.artifact_location(self.results_dir, grid)
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={contract.EXPERIMENT_KIND_TAG: contract.MODEL_TRAINING_KIND})
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        if experiment.tags.get(contract.EXPERIMENT_KIND_TAG) != contract.MODEL_TRAINING_KIND:  # made before the tag was set
            self.client.set_experiment_tag(experiment.experiment_id, contract.EXPERIMENT_KIND_TAG,
                                           contract.MODEL_TRAINING_KIND)
        return experiment.experiment_id

    def wmhp_experiments(self) -> dict[str, str]:
        """experiment id -> grid name, for every live wmhp experiment."""
        return contract.wmhp_experiments(self.client)

    def search(self, experiment_ids: list[str], filter_string: str) -> list[Any]:
        return list(contract.search_runs(self.client, experiment_ids, filter_string))

    def finished_by_hash(self) -> dict[str, list[FinishedRun]]:
        """Every FINISHED run of any wmhp experiment, grouped by config hash: the dedup index."""
        experiments = self.wmhp_experiments()
        out: dict[str, list[FinishedRun]] = {}
        for run in self.search(list(experiments), "attributes.status = 'FINISHED'"):
            digest = run.data.tags.get(contract.TAG_CONFIG_HASH)
            if digest:
                grid = experiments.get(run.info.experiment_id, "")
                # Also under the hash its params give now: a run stored before result-neutral fields were hashed
                # at their defaults (data.root set, say) still counts as done for its cell. Only such runs are
                # re-hashed (about 10 ms each); for the others both hashes agree.
                config = from_params(run.data.params) if _neutral_set(run.data.params) else None
                for key in dict.fromkeys([digest, config_hash(config) if config is not None else digest]):
                    out.setdefault(key, []).append(FinishedRun(run.info.run_id, run.info.experiment_id, grid, key))
        return out

    def mark_stale_running(self, experiment_id: str) -> int:
        """Runs left RUNNING by a killed driver -> KILLED. Safe because the caller holds the launch lock."""
        stale = self.search([experiment_id], "attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_tag(run.info.run_id, contract.TAG_ERROR, "driver died while this run was in progress")
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stale)

    # --- runs ------------------------------------------------------------------------------------------------
    def _name(self, experiment_id: str, cell: Cell) -> str:
        """The cell's run name, with a short hash where another cell of the experiment already has that name
        (same swept values, different elsewhere: another preset, a --set override)."""
        names = self._names.get(experiment_id)
        if names is None:
            names = self._names[experiment_id] = {}
            for run in self.search([experiment_id], ""):
                names.setdefault(run.info.run_name, run.data.tags.get(contract.TAG_CONFIG_HASH, ""))
        name = cell.run_name
        if names.setdefault(name, cell.hash) != cell.hash:
            name = contract.with_hash(name, cell.hash)
            names[name] = cell.hash
        return name

    def start_run(self, experiment_id: str, cell: Cell, preset: str) -> str:
        """A RUNNING run with the contract's tags, every config field as a param, and config.yaml."""
        import yaml
        from mlflow.entities import Param

        tags = {**contract.run_tags(cell.experiment, cell.grid, preset, cell.hash, self.code_version), **cell.tags}
        run = self.client.create_run(experiment_id, tags=tags, run_name=self._name(experiment_id, cell))
        run_id = run.info.run_id
        params = [Param(name, "None" if value is None else str(value)) for name, value in flatten(cell.config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        self.client.log_inputs(run_id, datasets=[dataset_input(cell.config.data)])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / contract.CONFIG_FILE
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
        """The curves file (and the training state when small), then the terminal status."""
        with tempfile.TemporaryDirectory() as tmp:
            if history:
                curves = Path(tmp) / contract.CURVES_FILE
                contract.write_curves(history, curves)
                self.client.log_artifact(run_id, str(curves))
            if state_file is not None and state_file.stat().st_size < contract.MAX_STATE_ARTIFACT_BYTES:
                self.client.log_artifact(run_id, str(state_file))
        if error:
            self.client.set_tag(run_id, contract.TAG_ERROR, error[-5000:])
        self.client.set_terminated(run_id, status)

    def adopt(self, source: FinishedRun, experiment_id: str, cell: Cell, preset: str) -> str:
        """Copy a cell finished in another grid's experiment into this grid's, instead of running it again.

        Params, metric histories and artifacts are copied; tags name this grid and preset and point at the
        source run (contract.TAG_ADOPTED_FROM), so each grid's experiment is complete on its own.
        """
        from mlflow.entities import Metric, Param

        original = self.client.get_run(source.run_id)
        tags = {k: v for k, v in original.data.tags.items() if k.startswith(contract.TAG_PREFIX)}
        tags.update({
            contract.TAG_EXPERIMENT: cell.experiment,
            contract.TAG_GRID: cell.grid,
            contract.TAG_PRESET: preset,
            contract.TAG_CONFIG_HASH: cell.hash,  # the source may carry the hash of an earlier scheme
            contract.TAG_ADOPTED_FROM: source.run_id,
            contract.TAG_ADOPTED_FROM_GRID: source.grid,
        })
        run = self.client.create_run(experiment_id, start_time=original.info.start_time, tags=tags,
                                     run_name=self._name(experiment_id, cell))
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in original.data.params.items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        self.client.log_inputs(run_id, datasets=[dataset_input(cell.config.data)])
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
