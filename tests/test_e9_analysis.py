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
    assert row["verdict"] == expected, row
    assert set(row) == {"experiment", "claim", "verdict", "statistic", "value", "noise", "n_seeds", "rule"}
    assert row["experiment"] == "e9" and row["rule"] == e9.RULE
    assert np.sign(row["value"]) == np.sign(shift) or shift == 0


def test_verdict_is_inconclusive_without_enough_trials() -> None:
    frame = doctored(0.1, size=1)
    assert e9.verdict(frame, bootstrap=50)["verdict"] == "inconclusive"
