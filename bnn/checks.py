"""Argument checks shared by the optimizers and bnn.mapping: each error names the argument and its range.

Torch-free on purpose: bnn.config resolves through bnn.mapping, and the pipeline driver must not pay for
importing torch (seconds of CPU at every launch) just to validate grids.
"""

from __future__ import annotations

import math


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a float, got {value!r}")
    return float(value)


def check_rate(name: str, value: object) -> float:
    """An EMA rate such as alpha or gamma: a float in (0, 1]."""
    result = _finite_float(name, value)
    if not 0.0 < result <= 1.0:
        raise ValueError(f"{name}: expected a float in (0, 1], got {value!r}")
    return result


def check_momentum(name: str, value: object) -> float:
    """A momentum or beta1: a float in [0, 1)."""
    result = _finite_float(name, value)
    if not 0.0 <= result < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value!r}")
    return result


def check_positive(name: str, value: object) -> float:
    result = _finite_float(name, value)
    if not (0.0 < result and math.isfinite(result)):
        raise ValueError(f"{name}: expected a finite float > 0, got {value!r}")
    return result


def check_non_negative(name: str, value: object) -> float:
    result = _finite_float(name, value)
    if not (0.0 <= result and math.isfinite(result)):
        raise ValueError(f"{name}: expected a finite float >= 0, got {value!r}")
    return result
