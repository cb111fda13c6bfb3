"""The statistics every experiment reports: means with 95 % t-intervals over seeds, paired differences by seed,
the seed-noise floor, and the three-way equivalence / difference reading behind each verdict.

Accuracies are fractions throughout; formatting as percent happens in analysis.report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

LEVEL = 0.95
# The smallest difference treated as real whatever the seeds say: below this no claim turns on it (pp / 100).
MIN_MARGIN = 0.005


@dataclass(frozen=True)
class Interval:
    """mean and its two-sided 95 % t-interval over n values; half = NaN where n < 2 (no interval exists)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def interval(values: pd.Series | np.ndarray | list[float]) -> Interval:
    """Mean and 95 % t-interval of the finite ``values``."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = len(array)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    if n == 1:
        return Interval(float(array[0]), math.nan, 1)
    sem = float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(float(array.mean()), float(scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sem, n)


def cell_intervals(runs: pd.DataFrame, by: list[str], value: str = "final_test_acc") -> pd.DataFrame:
    """Per combination of ``by``: mean, ci (half-width, NaN for n = 1), std and n of ``value`` over seeds."""
    rows = []
    for key, group in runs.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ci = interval(group[value])
        std = float(group[value].std(ddof=1)) if ci.n > 1 else math.nan
        rows.append({**dict(zip(by, key)), "mean": ci.mean, "ci": ci.half, "std": std, "n": ci.n})
    return pd.DataFrame(rows, columns=[*by, "mean", "ci", "std", "n"])


def paired(a: pd.DataFrame, b: pd.DataFrame, value: str = "final_test_acc", on: str = "seed") -> Interval:
    """Interval of the per-seed differences a - b (seeds present in both): the paired comparison."""
    left = a.set_index(on)[value]
    right = b.set_index(on)[value]
    common = left.index.intersection(right.index)
    return interval((left.loc[common] - right.loc[common]).to_numpy())


def noise_floor(runs: pd.DataFrame, by: list[str], value: str = "final_test_acc") -> float:
    """The typical seed noise of one cell: the median over cells (with >= 2 seeds) of the seed standard deviation
    of ``value``; NaN where no cell has two seeds.

    The median, not a pooled RMS: a few unstable cells (alpha 0.1 flipping every other step, say) would otherwise
    set the margin for every comparison and make "same" easy and "greater" impossible (seen on the first cpu run).
    """
    stds = []
    for _, group in runs.groupby(by, dropna=False):
        values = group[value].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values) >= 2:
            stds.append(float(values.std(ddof=1)))
    return float(np.median(stds)) if stds else math.nan


def margin(noise: float) -> float:
    """The equivalence margin of a claim "these are the same": twice the seed noise, at least MIN_MARGIN."""
    return max(MIN_MARGIN, 2 * noise) if math.isfinite(noise) else MIN_MARGIN


def equivalence(diff: Interval, delta: float) -> str:
    """Reading of a difference that the claim says is zero: 'same' when its 95 % interval lies inside +-delta,
    'different' when it lies wholly outside, else 'unclear' (also for n < 2, where there is no interval)."""
    if diff.n < 2 or not math.isfinite(diff.half):
        return "unclear"
    if -delta < diff.low and diff.high < delta:
        return "same"
    if diff.low >= delta or diff.high <= -delta:
        return "different"
    return "unclear"


def difference(diff: Interval, delta: float = 0.0) -> str:
    """Reading of a difference that the claim says is positive: 'greater' when the 95 % interval lies above
    delta, 'not greater' when it lies wholly below it, else 'unclear'."""
    if diff.n < 2 or not math.isfinite(diff.half):
        return "unclear"
    if diff.low > delta:
        return "greater"
    if diff.high < delta:
        return "not greater"
    return "unclear"


def half_widths(std: pd.Series | np.ndarray, n: pd.Series | np.ndarray) -> np.ndarray:
    """Element-wise 95 % t-interval half-widths from sample stds and counts; NaN where n < 2 (no interval)."""
    std_array, n_array = np.asarray(std, dtype=float), np.asarray(n, dtype=float)
    out = np.full(std_array.shape, math.nan)
    ok = (n_array >= 2) & np.isfinite(std_array)
    out[ok] = scipy_stats.t.ppf(0.5 + LEVEL / 2, n_array[ok] - 1) * std_array[ok] / np.sqrt(n_array[ok])
    return out
