"""The exact gradient-filter reading (alpha, gamma) of a run's binary optimizer, stored in runs.parquet so that
figures need neither bnn.mapping nor torch."""

from __future__ import annotations

import math
from typing import Any


def filter_reading(flat: dict[str, Any]) -> tuple[float, float]:
    """(alpha, gamma) of the filter with the same sign trajectory; NaN where there is none.

    filter: its own. latent SGD: bnn.mapping.latent_to_filter; with weight decay 0 the mapping's roots are
    alpha = 0 and gamma = 1 - momentum (a pure accumulator). Bop with threshold 0: alpha = Bop's gamma, gamma = 1
    (as bnn.train reports it). Adam: NaN (beta2/eps make it non-linear).
    """
    name = flat["binary_opt.name"]
    if name == "filter":
        return _float(flat["binary_opt.alpha"]), _float(flat["binary_opt.gamma"])
    if name == "sgd":
        lr, wd, mu = flat["binary_opt.lr"], flat["binary_opt.weight_decay"], flat["binary_opt.momentum"]
        if None in (lr, wd, mu):
            return math.nan, math.nan
        if wd == 0:
            return 0.0, 1.0 - mu
        from bnn.mapping import latent_to_filter

        try:
            return latent_to_filter(lr, wd, mu)
        except ValueError:  # no real roots in (0, 1]: the latent run has no filter twin
            return math.nan, math.nan
    if name == "bop" and flat["binary_opt.threshold"] == 0:
        return _float(flat["binary_opt.gamma"]), 1.0
    return math.nan, math.nan


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
