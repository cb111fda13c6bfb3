"""E5-E8 verdicts follow doctored results, and select() attaches the frozen controls of other experiments.

Every frame is built here (no MLflow, no Ray): one row per run with the full config, the accuracy columns the
modules read, and per-epoch curves where a module reads them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.frame import Experiment, Results, cell_ids, select
from bnn.config import config_hash, flatten, from_flat, resolve

_counter = itertools.count()


def run_row(experiment: str, acc: float, status: str = "FINISHED", preset: str = "cpu", **overrides) -> dict:
    """One runs.parquet row: the resolved config of ``overrides`` and the accuracy columns, all at ``acc``."""
    config = resolve(from_flat({"data.name": "digits", **{k.replace("__", "."): v for k, v in overrides.items()}}))
    row = flatten(config)
    row["model.hidden"] = tuple(row["model.hidden"])
    index = next(_counter)
    row.update(
        experiment=experiment,
        grid=f"{experiment}_grid",
        preset=preset,
        status=status,
        run_id=f"r{index:05d}",
        end_time=float(index),
        config_hash=config_hash(config),
        code_version="test",
        **{"model.label": "mlp " + "-".join(map(str, row["model.hidden"]))},
        final_test_acc=acc,
        final_val_acc=acc,
        best_val_acc=acc,
        test_acc_at_best_val=acc,
        best_val_epoch=config.epochs,
        best_test_acc=acc,
    )
    return row


def experiment_of(key: str, rows: list[dict], curves: pd.DataFrame | None = None, controls: list[dict] = ()) -> Experiment:
    runs = pd.DataFrame(rows)
    runs["cell"] = cell_ids(runs)
    frozen = pd.DataFrame(list(controls))
    if len(frozen):
        frozen["cell"] = cell_ids(frozen)
    curves = curves if curves is not None else pd.DataFrame(columns=["run_id", "epoch"])
    return Experiment(key, runs, curves, "cpu", {}, [], frozen)


# ---- frame: the frozen controls select() attaches ------------------------------------------------------------


def test_select_attaches_finished_frozen_runs_of_same_preset_and_context_from_any_experiment():
    rows = [run_row("e2", 0.9, seed=s, binary_opt__name="sgd") for s in range(2)]
    rows += [run_row("e5", 0.3, seed=s, binary_opt__name="frozen") for s in range(3)]  # counted
    rows += [run_row("e8", 0.2, seed=0, binary_opt__name="frozen", status="FAILED")]  # not finished
    rows += [run_row("e8", 0.2, seed=0, binary_opt__name="frozen", preset="smoke")]  # other preset
    rows += [run_row("e8", 0.2, seed=0, binary_opt__name="frozen", data__name="fashion-mnist")]  # other context
    results = Results(pd.DataFrame(rows), pd.DataFrame(columns=["run_id", "epoch"]))
    experiment = select(results, "e2")
    assert set(experiment.runs["binary_opt.name"]) == {"sgd"}
    assert list(experiment.controls["final_test_acc"]) == [0.3, 0.3, 0.3]
    assert sorted(experiment.control()["seed"]) == [0, 1, 2]
    assert select(results, "e5").controls["experiment"].tolist() == ["e5"] * 3


def test_select_without_any_frozen_run_attaches_an_empty_control():
    rows = [run_row("e2", 0.9, seed=s, binary_opt__name="sgd") for s in range(2)]
    experiment = select(Results(pd.DataFrame(rows), pd.DataFrame(columns=["run_id", "epoch"])), "e2")
    assert experiment.controls.empty and experiment.control().empty
