"""Drawing means with their 95 % intervals over seeds (E5-E8): n beside every point, no bar where n = 1, and
the frozen control as a band. Accuracies arrive as fractions and are drawn in percent."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.stats import Interval, interval

FROZEN_COLOR = "0.45"


def points(
    ax: Axes,
    x: Sequence[float],
    means: Sequence[float],
    halves: Sequence[float],
    ns: Sequence[int],
    marker: str = "o",
    **kwargs: Any,
) -> None:
    """Means with 95 % interval bars (percent); a point with n = 1 is drawn hollow, without a bar, marked n=1."""
    x, means, halves = (np.asarray(v, dtype=float) for v in (x, means, halves))
    ns = np.asarray(ns, dtype=int)
    has_bar = np.isfinite(halves) & (ns >= 2)
    color = kwargs.pop("color", None)
    label = kwargs.pop("label", None)
    line = ax.errorbar(
        x[has_bar], 100 * means[has_bar], yerr=100 * halves[has_bar], fmt=marker, ms=4, capsize=2, color=color,
        label=label if has_bar.any() else None, **kwargs,
    )
    color = line[0].get_color()
    single = ~has_bar & np.isfinite(means)
    if single.any():
        ax.plot(x[single], 100 * means[single], marker, ms=5, mfc="white", color=color,
                label=None if has_bar.any() else label)
    for xi, mi, ni in zip(x, means, ns):
        if math.isfinite(mi):
            ax.annotate(f"n={ni}", (xi, 100 * mi), textcoords="offset points", xytext=(4, 3), fontsize=6, color=color)


def control_band(ax: Axes, control: pd.DataFrame, value: str = "final_test_acc") -> Interval | None:
    """The frozen control's mean (line) and 95 % interval (band) across the axes; None where there is none."""
    if control.empty:
        return None
    ci = interval(control[value])
    ax.axhline(100 * ci.mean, color=FROZEN_COLOR, linestyle=":", linewidth=1.2, label=f"frozen control (n={ci.n})")
    if math.isfinite(ci.half):
        ax.axhspan(100 * ci.low, 100 * ci.high, color=FROZEN_COLOR, alpha=0.15, linewidth=0)
    return ci


def epoch_intervals(curves: pd.DataFrame, run_ids: Sequence[str], metric: str) -> pd.DataFrame:
    """Per epoch: mean, 95 % half-width and n of ``metric`` over the given runs."""
    rows = curves[curves["run_id"].isin(list(run_ids))]
    out = []
    for epoch, group in rows.groupby("epoch"):
        ci = interval(group[metric])
        out.append({"epoch": epoch, "mean": ci.mean, "ci": ci.half, "n": ci.n})
    return pd.DataFrame(out, columns=["epoch", "mean", "ci", "n"])
