"""E9's estimators and verdict on hand-made pools (no Ray, no MLflow)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import e9_tuning_cost as e9


@pytest.mark.parametrize("pool", [[0.3, 0.1, 0.7, 0.5, 0.2, 0.9, 0.4], [0.5, 0.5, 0.2, 0.8, 0.8, 0.1]])
def test_expected_max_equals_brute_force_over_all_subsets(pool: list[float]) -> None:
    for n in range(1, len(pool) + 1):
        subsets = list(itertools.combinations(pool, n))
        brute = sum(max(s) for s in subsets) / len(subsets)
        assert e9.expected_max(pool, n) == pytest.approx(brute, abs=1e-12)


def test_expected_max_bounds_and_errors() -> None:
    pool = [0.2, 0.6, 0.4]
    assert e9.expected_max(pool, 1) == pytest.approx(np.mean(pool))
    assert e9.expected_max(pool, 3) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="n: expected"):
        e9.expected_max(pool, 4)


def test_expected_draws_to_reach_matches_brute_force() -> None:
    pool, target = [0.1, 0.9, 0.3, 0.95, 0.2], 0.9
    orders = list(itertools.permutations(pool))
    brute = np.mean([next(i + 1 for i, v in enumerate(o) if v >= target) for o in orders])
    assert e9.expected_draws_to_reach(pool, target) == pytest.approx(brute)
    assert math.isinf(e9.expected_draws_to_reach(pool, 0.99))


def doctored(filter_shift: float, size: int = 12, seed: int = 1) -> pd.DataFrame:
    """Random pools of three spaces: latent scores spread over 0.70-0.86, the filter's shifted by filter_shift."""
    rng = np.random.default_rng(seed)
    rows = []
    for space in e9.SPACES:
        scores = rng.uniform(0.70, 0.86, size)
        if space == "filter":
            scores = np.clip(scores + filter_shift, 0, 1)
        rows += [{"search_space": space, "searcher": "random", "search_repeat": 0, "search_index": i,
                  "start_time": i, e9.SCORE: s} for i, s in enumerate(scores)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("shift, expected", [(0.10, "supported"), (-0.10, "not supported"), (0.0, "inconclusive")])
def test_verdict_follows_the_pools(shift: float, expected: str) -> None:
    row = e9.verdict(doctored(shift), bootstrap=300)
    assert row.verdict == expected, row
    assert row.experiment == "e9" and row.rule == e9.RULE and row.noise > 0
    assert np.sign(row.value) == np.sign(shift) or shift == 0


def test_verdict_is_inconclusive_without_enough_trials() -> None:
    frame = doctored(0.1, size=1)
    assert e9.verdict(frame, bootstrap=50).verdict == "inconclusive"


def synthetic_trials(seed: int = 0, pool: int = 10, repeats: int = 3, trials: int = 6) -> pd.DataFrame:
    """E9-shaped runs whose score depends on alpha alone, some latent SGD samples without a real reading."""
    rng = np.random.default_rng(seed)
    rows = []
    for space, name in (("latent_adam", "adam"), ("latent_sgd", "sgd"), ("filter", "filter")):
        for searcher, repeat, index in [("random", 0, i) for i in range(pool)] + [
                ("tpe", r, i) for r in range(repeats) for i in range(trials)]:
            lr, wd, mu = 10 ** rng.uniform(-2, 0), 10 ** rng.uniform(-2.3, -0.3), 1 - 10 ** rng.uniform(-2, 0)
            alpha, gamma = (10 ** rng.uniform(-2.3, -0.3), 10 ** rng.uniform(-2, 0)) if name == "filter" else \
                (lr * wd / (1 - mu), 1 - mu)
            if name == "sgd" and index % 4 == 3:
                alpha = gamma = math.nan  # no real reading
            score = 0.9 - 0.05 * abs(math.log10(lr * wd / (1 - mu) if math.isnan(alpha) else alpha) + 1.3)
            rows.append({"search_space": space, "searcher": searcher, "search_repeat": repeat, "search_index": index,
                         "start_time": index, e9.SCORE: score + rng.normal(0, 0.002), "binary_opt.name": name,
                         "binary_opt.lr": lr, "binary_opt.weight_decay": wd, "binary_opt.momentum": mu,
                         "binary_opt.beta1": mu, "binary_opt.beta2": 0.999, "binary_opt.eps": 1e-8,
                         "binary_opt.alpha": alpha if name == "filter" else None,
                         "binary_opt.gamma": gamma if name == "filter" else None, "init.scale": 1e-3,
                         "schedule.name": ["constant", "linear"][index % 2],
                         "filter_alpha": alpha if name != "adam" else math.nan,
                         "filter_gamma": gamma if name != "adam" else math.nan})
    return pd.DataFrame(rows)


def test_figure_table_and_r2_from_synthetic_trials(tmp_path) -> None:
    frame = e9.trials(synthetic_trials())
    table = e9.reach_table(frame)
    assert set(zip(table["space"], table["searcher"])) == {(s, k) for s in e9.SPACES for k in ("random", "tpe")}
    best = frame[e9.SCORE].max()
    winner = table[table["best_val_acc"] == best].iloc[0]
    assert math.isfinite(winner["trials_to_reach"]) and winner["trials_to_reach"] >= 1
    r2 = e9.r2_scores(frame)
    sgd = r2[r2["space"] == "latent_sgd"]
    assert (sgd["n"] == 30 - 30 // 4 - (1 if 30 % 4 == 3 else 0)).all() or (sgd["n"] < 30).all()
    filter_r2 = sgd[sgd["features"].str.startswith("filter")]["r2"].iloc[0]
    assert filter_r2 > 0.5  # the score was made a function of alpha: the filter coordinates must explain it
    paths = e9.draw(frame, r2, tmp_path, "synthetic")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
