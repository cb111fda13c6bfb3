"""E5-E8 verdicts follow doctored results, and select() attaches the frozen controls of other experiments.

Every frame is built here (no MLflow, no Ray): one row per run with the full config, the accuracy columns the
modules read, and per-epoch curves where a module reads them."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import e5_alpha_gamma as e5
from analysis.experiments import e6_schedules as e6
from analysis.experiments import e7_adam as e7
from analysis.experiments import e8_optimizers as e8
from analysis.frame import Experiment, Results, cell_ids, select
from bnn.config import config_hash, flatten, from_flat, resolve

_counter = itertools.count()


@functools.lru_cache(maxsize=None)
def _resolved(items: tuple) -> tuple[dict, str, int]:
    config = resolve(from_flat(dict(items)))
    return flatten(config), config_hash(config), config.epochs


def run_row(experiment: str, acc: float, status: str = "FINISHED", preset: str = "cpu", **overrides) -> dict:
    """One runs.parquet row: the resolved config of ``overrides`` and the accuracy columns, all at ``acc``."""
    flat = {"data.name": "digits", **{k.replace("__", "."): v for k, v in overrides.items()}}
    resolved, digest, epochs = _resolved(tuple(sorted(flat.items())))
    row = dict(resolved)
    row["model.hidden"] = tuple(row["model.hidden"])
    index = next(_counter)
    row.update(
        experiment=experiment,
        grid=f"{experiment}_grid",
        preset=preset,
        status=status,
        run_id=f"r{index:05d}",
        end_time=float(index),
        config_hash=digest,
        code_version="test",
        **{"model.label": "mlp " + "-".join(map(str, row["model.hidden"]))},
        final_test_acc=acc,
        final_val_acc=acc,
        best_val_acc=acc,
        test_acc_at_best_val=acc,
        best_val_epoch=epochs,
        best_test_acc=acc,
    )
    return row


def experiment_of(
    key: str, rows: list[dict], curves: pd.DataFrame | None = None, controls: list[dict] = ()
) -> Experiment:
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


# ---- E7: AdamW and its filter twin ----------------------------------------------------------------------------
ADAMW = dict(binary_opt__name="adam", binary_opt__lr=1e-3, binary_opt__decay_mode="decoupled",
             binary_opt__weight_decay=10.0)
TWIN = dict(binary_opt__name="filter", binary_opt__alpha=1e-2, binary_opt__gamma=0.1)
ADAM_L2 = dict(ADAMW, binary_opt__decay_mode="l2")


def e7_experiment(adamw, twin, seeds=3, noise=NOISE) -> Experiment:
    rows = []
    for acc, opt in ((adamw, ADAMW), (twin, TWIN), (0.6, ADAM_L2)):
        rows += [run_row("e7", acc + noise[s], seed=s, **opt) for s in range(seeds)]
    return experiment_of("e7", rows)


def test_e7_adamw_equal_to_its_twin_supported():
    assert only(e7.verdicts(e7_experiment(0.8, 0.8))) == "supported"


def test_e7_adamw_far_from_its_twin_not_supported():
    assert only(e7.verdicts(e7_experiment(0.8, 0.7))) == "not supported"


def test_e7_one_seed_or_noisy_pairs_or_no_twin_inconclusive():
    assert only(e7.verdicts(e7_experiment(0.8, 0.8, seeds=1))) == "inconclusive"
    adam_only = e7_experiment(0.8, 0.8).runs.drop(columns="cell")
    adam_only = adam_only[adam_only["binary_opt.name"] == "adam"].to_dict("records")
    assert only(e7.verdicts(experiment_of("e7", adam_only))) == "inconclusive"  # no twin
    # the twin's seeds scatter: paired differences -4.2, 0, +4.2 pp, an interval that straddles the margin
    experiment = e7_experiment(0.8, 0.8)
    twin = experiment.runs["binary_opt.name"] == "filter"
    experiment.runs.loc[twin, "final_test_acc"] = [0.84, 0.8, 0.76]
    assert only(e7.verdicts(experiment)) == "inconclusive"


# ---- E8: the filter against the best baseline ----------------------------------------------------------------
OPTIMIZERS = {
    "adam": dict(binary_opt__name="adam", binary_opt__lr=1e-3),
    "sgd": dict(binary_opt__name="sgd", binary_opt__lr=0.1, binary_opt__momentum=0.9, binary_opt__weight_decay=5e-4),
    "bop": dict(binary_opt__name="bop", binary_opt__gamma=1e-4, binary_opt__threshold=1e-8),
    "filter": dict(binary_opt__name="filter", binary_opt__alpha=1e-3, binary_opt__gamma=0.1),
    "frozen": dict(binary_opt__name="frozen"),
}


def e8_experiment(accs: dict[str, float], seeds=3, data="digits") -> Experiment:
    rows = [
        run_row("e8", accs[name] + NOISE[s], seed=s, data__name=data, **OPTIMIZERS[name])
        for name in accs
        for s in range(seeds)
    ]
    return experiment_of("e8", rows)


def test_e8_filter_level_with_the_best_baseline_supported():
    accs = {"adam": 0.80, "sgd": 0.75, "bop": 0.7, "filter": 0.799, "frozen": 0.3}
    assert only(e8.verdicts(e8_experiment(accs))) == "supported"


def test_e8_filter_far_below_the_best_baseline_not_supported():
    accs = {"adam": 0.70, "sgd": 0.80, "bop": 0.7, "filter": 0.75, "frozen": 0.3}
    verdict = e8.verdicts(e8_experiment(accs))[0]
    assert verdict.verdict == "not supported" and "latent SGD" in verdict.statistic
    assert verdict.value == pytest.approx(-0.05)


def test_e8_baseline_chosen_on_validation_not_test():
    experiment = e8_experiment({"adam": 0.80, "sgd": 0.70, "filter": 0.75})
    sgd = experiment.runs["binary_opt.name"] == "sgd"
    experiment.runs.loc[sgd, "final_val_acc"] = 0.9  # sgd wins on validation though it loses on test
    verdict = e8.verdicts(experiment)[0]
    assert verdict.verdict == "supported" and "latent SGD" in verdict.statistic


def test_e8_one_seed_or_missing_filter_inconclusive():
    accs = {"adam": 0.80, "filter": 0.80}
    assert only(e8.verdicts(e8_experiment(accs, seeds=1))) == "inconclusive"
    assert only(e8.verdicts(e8_experiment({"adam": 0.8, "frozen": 0.3}))) == "inconclusive"


# ---- analyse() draws from doctored runs (points without bars for n = 1) and carries the verdicts ---------------
# (every module's figure is also drawn in tests/test_analysis.py from the generated set; two suffice here)
def test_analyse_draws_and_carries_the_verdicts(tmp_path):
    sections = [
        e7.analyse(e7_experiment(0.8, 0.8, seeds=1), tmp_path),  # n = 1: points without bars, verdict inconclusive
        e8.analyse(e8_experiment({"adam": 0.8, "filter": 0.8, "frozen": 0.3}), tmp_path, tmp_path),
    ]
    for section, expected in zip(sections, (["inconclusive"], ["supported"])):
        assert [v.verdict for v in section.verdicts] == expected, section.key
        png = section.figures[0]
        assert png.suffix == ".png" and png.stat().st_size > 10_000, section.key
    assert "frozen control" in (tmp_path / "e8_optimizers.md").read_text()
    assert any("(n=1)" in finding for finding in sections[0].findings)


def test_e8_step1_runs_are_not_baselines():
    experiment = e8_experiment({"adam": 0.8, "sgd": 0.95, "filter": 0.8})
    experiment.runs["stage"] = np.where(experiment.runs["binary_opt.name"] == "sgd", "step1", "")
    verdict = only(e8.verdicts(experiment))
    assert verdict == "supported"  # against latent Adam: the step-1 sgd (real weights) is no baseline
