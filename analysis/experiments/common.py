"""What several experiment modules need."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import Interval, half_widths, interval


def run_means(curves: pd.DataFrame, metric: str) -> pd.Series:
    """Per run, the mean of a per-epoch metric over its epochs (NaN epochs skipped)."""
    return curves.groupby("run_id")[metric].mean()


# --- E1-E4 figure helpers: 95 % intervals over seeds, n on the figure, the frozen control where there is one ---
def n_text(counts: pd.Series | list[int]) -> str:
    """'n=3', or 'n=2-3' where cells hold different numbers of seeds."""
    values = sorted({int(c) for c in counts})
    if not values:
        return "n=0"
    return f"n={values[0]}" if len(values) == 1 else f"n={values[0]}-{values[-1]}"


def ci_points(ax: Any, x: Any, mean: Any, half: Any, line: bool = True, **kwargs: Any) -> None:
    """Points with 95 % interval bars; a point without an interval (n = 1) gets no bar, a hollow marker and an
    'n=1' mark, so that it cannot be read as an exact value."""
    x, mean, half = (np.asarray(v, dtype=float) for v in (x, mean, half))
    marker = kwargs.pop("marker", "o")
    (drawn,) = ax.plot(x, mean, linestyle="-" if line else "none", marker=marker, ms=4, **kwargs)
    color = drawn.get_color()
    ok = np.isfinite(half)
    if ok.any():
        ax.errorbar(x[ok], mean[ok], yerr=half[ok], fmt="none", capsize=2, color=color)
    for xi, yi in zip(x[~ok], mean[~ok]):
        ax.plot([xi], [yi], marker=marker, ms=6, mfc="white", color=color, linestyle="none")
        ax.annotate("n=1", (xi, yi), textcoords="offset points", xytext=(3, -9), fontsize=6.5, color=color)


def curve_ci(experiment: Any, run_ids: pd.Series | list[str], metric: str) -> pd.DataFrame:
    """Per epoch: mean, 95 % half-width (NaN for one run) and count of ``metric`` over the given runs."""
    curve = experiment.curve(run_ids, metric)
    curve["half"] = half_widths(curve["std"], curve["count"])
    return curve


def frozen_control(experiment: Any) -> Interval | None:
    """Final test accuracy of the frozen control (binary weights never trained) of this experiment's preset and
    dataset/model, over seeds; None where analysis.frame provides none or no such run finished."""
    control = getattr(experiment, "control", None)
    if control is None:
        return None
    try:
        rows = control()
    except ValueError:  # several dataset/model contexts: no single baseline
        return None
    if rows.empty:
        return None
    return interval(rows["final_test_acc"])


def draw_frozen(ax: Any, control: Interval | None, scale: float = 100.0) -> None:
    """The frozen control as a horizontal line with its 95 % interval band (none for n = 1)."""
    if control is None:
        return
    ax.axhline(control.mean * scale, color="0.35", linestyle=":", label=f"frozen control (n={control.n})")
    if np.isfinite(control.half):
        ax.axhspan(control.low * scale, control.high * scale, color="0.35", alpha=0.12, linewidth=0)
