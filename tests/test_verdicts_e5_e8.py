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


# ---- E5: alpha x gamma ----------------------------------------------------------------------------------------
from analysis.experiments import e5_alpha_gamma as e5, e6_schedules as e6, e7_adam as e7, e8_optimizers as e8  # noqa: E402

NOISE = (-0.002, 0.0, 0.002)  # per-seed offsets: a small, known seed noise (std 0.2 pp)


def e5_rows(law, seeds=3, noise=NOISE, frozen_acc=0.3) -> list[dict]:
    rows = [
        run_row("e5", law(a, g) + noise[s], seed=s, binary_opt__name="filter", binary_opt__alpha=a, binary_opt__gamma=g)
        for a in (1e-3, 1e-2, 1e-1)
        for g in (1e-2, 1e-1, 1.0)
        for s in range(seeds)
    ]
    return rows + [run_row("e5", frozen_acc + noise[s], seed=s, binary_opt__name="frozen") for s in range(seeds)]


def only(verdicts):
    assert len(verdicts) == 1
    return verdicts[0].verdict


def test_e5_both_rates_act_supported():
    law = lambda a, g: 0.8 - 0.05 * abs(np.log10(a) + 2) - 0.03 * abs(np.log10(g) + 1)  # noqa: E731
    assert only(e5.verdicts(experiment_of("e5", e5_rows(law)))) == "supported"


def test_e5_neither_rate_acts_not_supported():
    assert only(e5.verdicts(experiment_of("e5", e5_rows(lambda a, g: 0.8)))) == "not supported"


def test_e5_only_alpha_acts_inconclusive():
    law = lambda a, g: 0.8 - 0.05 * abs(np.log10(a) + 2)  # noqa: E731
    assert only(e5.verdicts(experiment_of("e5", e5_rows(law)))) == "inconclusive"


def test_e5_without_a_gap_to_the_frozen_control_inconclusive():
    law = lambda a, g: 0.8 - 0.05 * abs(np.log10(a) + 2) - 0.03 * abs(np.log10(g) + 1)  # noqa: E731
    verdict = e5.verdicts(experiment_of("e5", e5_rows(law, frozen_acc=0.78)))[0]
    assert verdict.verdict == "inconclusive" and "cannot tell" in verdict.statistic


def test_e5_one_seed_inconclusive_and_control_taken_from_other_experiments():
    law = lambda a, g: 0.8 - 0.05 * abs(np.log10(a) + 2) - 0.03 * abs(np.log10(g) + 1)  # noqa: E731
    assert only(e5.verdicts(experiment_of("e5", e5_rows(law, seeds=1)))) == "inconclusive"
    rows = [r for r in e5_rows(law) if r["binary_opt.name"] == "filter"]
    controls = [run_row("e8", 0.3 + NOISE[s], seed=s, binary_opt__name="frozen") for s in range(3)]
    assert only(e5.verdicts(experiment_of("e5", rows, controls=controls))) == "supported"
    assert only(e5.verdicts(experiment_of("e5", rows))) == "inconclusive"  # no control anywhere


# ---- E6: schedules --------------------------------------------------------------------------------------------
SGD = dict(binary_opt__name="sgd", binary_opt__lr=0.1, binary_opt__momentum=0.0, binary_opt__weight_decay=0.1)
FILTER = dict(binary_opt__name="filter", binary_opt__lr=0.1, binary_opt__alpha=1e-2, binary_opt__gamma=1.0,
              binary_opt__state_init="latent")


def e6_experiment(acc, flips, seeds=3) -> Experiment:
    """acc(optimizer, schedule) and flips(optimizer, schedule) -> last-epoch flip ratio; two epochs of curves."""
    rows, curves = [], []
    for schedule in ("constant", "linear", "step"):
        for name, opt in (("sgd", SGD), ("filter", FILTER)):
            for s in range(seeds):
                row = run_row("e6", acc(name, schedule) + NOISE[s], seed=s, schedule__name=schedule, **opt)
                rows.append(row)
                last = flips(name, schedule) * (1 + 0.05 * s)
                curves += [{"run_id": row["run_id"], "epoch": 1, "flip_ratio": 0.01},
                           {"run_id": row["run_id"], "epoch": 2, "flip_ratio": last}]
    return experiment_of("e6", rows, pd.DataFrame(curves))


def verdict_of(verdicts, claim):
    return next(v.verdict for v in verdicts if v.claim == claim)


def test_e6_exact_pair_same_and_flips_drop_supported():
    flips = lambda o, s: 0.01 if s == "constant" else 0.001  # noqa: E731
    verdicts = e6.verdicts(e6_experiment(lambda o, s: 0.8, flips))
    assert verdict_of(verdicts, e6.PAIR_CLAIM) == "supported"
    assert verdict_of(verdicts, e6.FLIP_CLAIM) == "supported"


def test_e6_pair_apart_and_flips_rise_not_supported():
    acc = lambda o, s: 0.8 if o == "sgd" or s != "step" else 0.7  # noqa: E731
    flips = lambda o, s: 0.01 if s == "constant" else 0.02  # noqa: E731
    verdicts = e6.verdicts(e6_experiment(acc, flips))
    assert verdict_of(verdicts, e6.PAIR_CLAIM) == "not supported"
    assert verdict_of(verdicts, e6.FLIP_CLAIM) == "not supported"


def test_e6_one_seed_inconclusive():
    verdicts = e6.verdicts(e6_experiment(lambda o, s: 0.8, lambda o, s: 0.01, seeds=1))
    assert [v.verdict for v in verdicts] == ["inconclusive", "inconclusive"]
