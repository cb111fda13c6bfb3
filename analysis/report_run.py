"""`wmhp figures` -> MLflow: the figures, tables and REPORT.md as artifacts of one run in experiment
``wmhp/report``, so a person browsing MLflow finds the report beside the runs it was drawn from.

One run, updated in place: a rerun replaces its files rather than adding a run per drawing. collect skips this
experiment (it is not a grid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.collect import check_store
from wmhp import contract
from wmhp.contract import default_tracking_uri

REPORT_RUN_NAME = "report"


def store_for(results_dir: Path, tracking_uri: str | None) -> str | None:
    """The tracking URI to log the report to: the given one, or the results dir's sqlite store when it exists
    (figures drawn from parquet files alone are not logged anywhere)."""
    if tracking_uri:
        return tracking_uri
    default = default_tracking_uri(results_dir)
    return default if (Path(results_dir) / contract.TRACKING_DB).is_file() else None


def log_report(results_dir: Path, written: list[Path], tracking_uri: str) -> tuple[str, str]:
    """Log ``written`` (paths under ``results_dir``) to the one ``wmhp/report`` run; returns (experiment id,
    run id).

    CollectError for a URI that is not a usable store; MlflowException / OSError for a store that fails.
    """
    from mlflow import MlflowClient

    check_store(tracking_uri)
    results_dir = Path(results_dir).resolve()
    client = MlflowClient(tracking_uri=tracking_uri)
    run = _report_run(client, results_dir, tracking_uri)
    _clear(run, tracking_uri)
    for path in sorted(written):
        relative = Path(path).resolve().relative_to(results_dir)
        folder = relative.parent.as_posix()
        client.log_artifact(run.info.run_id, str(path), None if folder == "." else folder)
    client.set_tag(run.info.run_id, contract.TAG_REPORT_FILES, str(len(written)))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.experiment_id, run.info.run_id


def ui_address(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page on a tracking server, in the model-training view (MLflow 3.17's UI defaults to GenAI)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _report_run(client: Any, results_dir: Path, uri: str) -> Any:
    name = contract.experiment_name(contract.REPORT_GRID)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        server = uri.split(":", 1)[0] in ("http", "https", "databricks")
        location = None if server else contract.artifact_location(results_dir, contract.REPORT_GRID)
        experiment_id = client.create_experiment(name, artifact_location=location,
                                                 tags={contract.EXPERIMENT_KIND_TAG: contract.MODEL_TRAINING_KIND})
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    runs = client.search_runs([experiment_id], f"attributes.run_name = '{REPORT_RUN_NAME}'",
                              order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if runs:
        return runs[0]
    return client.create_run(experiment_id, run_name=REPORT_RUN_NAME)


def _clear(run: Any, tracking_uri: str) -> None:
    """Remove the files an earlier drawing logged, so that a figure no longer drawn does not linger."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)
    for entry in repository.list_artifacts():
        try:
            repository.delete_artifacts(entry.path)
        except NotImplementedError:  # a store that cannot delete: files are overwritten in place instead
            return
