"""MLflow as a person browses it: experiments open in the model-training view, each run names its dataset as a run
input, and `wmhp figures` keeps the report in one `wmhp/report` run, which collect does not read as a grid.
Real sqlite stores, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from analysis.cli import figures_main
from analysis.collect import collect
from analysis.report_run import REPORT_RUN_NAME, log_report
from bnn.config import DataConfig, config_hash, from_flat, resolve
from bnn.data.splits import split_sizes
from pipeline.grids import Cell
from pipeline.tracking import Tracker, create_sqlite_store
from wmhp.contract import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, default_tracking_uri


def _tracker(results: Path) -> Tracker:
    results.mkdir(parents=True, exist_ok=True)
    create_sqlite_store(results / "mlflow.db")
    return Tracker(default_tracking_uri(results), results)


def _finished_run(tracker: Tracker, grid: str = "g") -> str:
    config = resolve(from_flat({"data.train_subset": 500, "epochs": 1}))
    cell = Cell(grid, "e0", config, config_hash(config), {})
    run_id = tracker.start_run(tracker.ensure_experiment(grid), cell, "smoke")
    tracker.end_run(run_id, [{"epoch": 1, "test_acc": 0.5, "train_loss": 1.0}], "FINISHED")
    return run_id


def test_grid_experiments_open_in_the_model_training_view_and_runs_log_their_dataset(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path / "r")
    run_id = _finished_run(tracker)
    experiment = tracker.client.get_experiment_by_name("wmhp/g")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # An experiment made before the tag existed gets it on the next launch.
    tracker.client.delete_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG)
    tracker.ensure_experiment("g")
    assert tracker.client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "digits" and len(dataset.digest) == 16
    assert json.loads(dataset.profile)["train"] == 500 and json.loads(dataset.profile)["test"] == 360
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train"


@pytest.mark.parametrize("flat", [{}, {"data.train_subset": 200, "data.val_fraction": 0.25}])
def test_split_sizes_known_without_loading_match_the_loaded_data(flat) -> None:
    import torch

    from bnn.data import load_data

    cfg = from_flat(flat).data
    data = load_data(cfg, torch.device("cpu"), torch.float32, 0)
    assert split_sizes(cfg) == {"train": data.n_train, "validation": data.n_val, "test": data.n_test}
    assert split_sizes(DataConfig(name="imagenet")) is None


def test_figures_log_one_report_run_that_a_rerun_updates_and_collect_skips(tmp_path: Path) -> None:
    results = tmp_path / "r"
    tracker = _tracker(results)
    _finished_run(tracker)
    (results / "figures").mkdir()
    first = [results / "REPORT.md", results / "figures" / "e1_a.png", results / "figures" / "e1_old.png"]
    for path in first:
        path.write_text(path.name)
    _, run_id = log_report(results, first, default_tracking_uri(results))
    (results / "REPORT.md").write_text("second drawing")
    second = [results / "REPORT.md", results / "figures" / "e1_a.png"]
    assert log_report(results, second, default_tracking_uri(results))[1] == run_id  # the same run, updated
    client = MlflowClient(default_tracking_uri(results))
    experiment = client.get_experiment_by_name("wmhp/report")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == [REPORT_RUN_NAME] and runs[0].info.status == "FINISHED"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    listed = {a.path for folder in (None, "figures") for a in client.list_artifacts(run_id, folder)}
    assert listed == {"REPORT.md", "figures", "figures/e1_a.png"}  # e1_old.png, no longer drawn, is gone
    local = client.download_artifacts(run_id, "REPORT.md", str(tmp_path))
    assert Path(local).read_text() == "second drawing"
    runs_path, _ = collect(results)
    import pyarrow.parquet as pq

    assert pq.read_table(runs_path).column("grid").to_pylist() == ["g"]  # the report run is not a grid's run


def test_figures_without_a_store_say_so_and_with_a_missing_one_exit_2(tmp_path: Path, capsys) -> None:
    from analysis.cli import _log_report

    assert _log_report(tmp_path, [], None) == 0
    assert "not logged to MLflow" in capsys.readouterr().out
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    assert _log_report(tmp_path, [], missing) == 2
    assert "no such database file" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    assert figures_main(["--results-dir", str(tmp_path), "--tracking-uri", missing]) == 2  # no parquet: bad input


def test_a_run_hashed_before_neutral_fields_were_left_out_still_counts_as_done(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path / "r")
    config = resolve(from_flat({"data.root": "/data/digits", "epochs": 1}))
    old_hash = "0123456789abcdef"  # what the earlier scheme, hashing data.root as set, gave this config
    run_id = tracker.start_run(tracker.ensure_experiment("g"), Cell("g", "e0", config, old_hash, {}), "smoke")
    tracker.end_run(run_id, [{"epoch": 1, "test_acc": 0.5}], "FINISHED")
    finished = tracker.finished_by_hash()
    assert [r.run_id for r in finished[config_hash(config)]] == [run_id]  # the cell a launch now asks for: done
    assert [r.run_id for r in finished[old_hash]] == [run_id]
