"""analysis.stats: t-intervals, paired differences, the noise floor and the three-way readings behind verdicts."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis.stats import difference, equivalence, interval, margin, noise_floor, paired


def test_interval_is_the_t_interval_and_has_no_width_for_one_value():
    values = [0.80, 0.82, 0.81, 0.85]
    ci = interval(values)
    expected = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert ci.mean == pytest.approx(np.mean(values), abs=1e-15) and ci.half == pytest.approx(expected, rel=1e-12)
    one = interval([0.8, math.nan])
    assert one.n == 1 and math.isnan(one.half)


def test_paired_uses_only_common_seeds():
    a = pd.DataFrame({"seed": [0, 1, 2], "final_test_acc": [0.80, 0.81, 0.90]})
    b = pd.DataFrame({"seed": [1, 2, 3], "final_test_acc": [0.80, 0.88, 0.1]})
    diff = paired(a, b)
    assert diff.n == 2 and diff.mean == pytest.approx(0.015)


def test_noise_floor_is_the_typical_cell_not_the_most_unstable_one():
    runs = pd.DataFrame({
        "cell": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "final_test_acc": [0.80, 0.81, 0.82, 0.70, 0.71, 0.72, 0.2, 0.8, 0.5],  # cell 2 scatters by 30 pp
    })
    assert noise_floor(runs, ["cell"]) == pytest.approx(0.01)
    assert math.isnan(noise_floor(runs.iloc[[0, 3, 6]], ["cell"]))
    assert margin(0.01) == pytest.approx(0.02) and margin(math.nan) == margin(0.0) == 0.005


@pytest.mark.parametrize(("values", "same", "greater"), [
    ([0.001, -0.001, 0.0005, 0.0], "same", "not greater"),
    ([0.05, 0.051, 0.049, 0.05], "different", "greater"),
    ([0.05, -0.05, 0.02, -0.03], "unclear", "unclear"),
    ([0.05], "unclear", "unclear"),
])
def test_readings_follow_the_interval(values, same, greater):
    diff = interval(values)
    assert equivalence(diff, 0.01) == same
    assert difference(diff, 0.01) == greater
