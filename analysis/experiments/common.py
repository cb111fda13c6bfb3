"""What several experiment modules need."""

from __future__ import annotations

import pandas as pd


def run_means(curves: pd.DataFrame, metric: str) -> pd.Series:
    """Per run, the mean of a per-epoch metric over its epochs (NaN epochs skipped)."""
    return curves.groupby("run_id")[metric].mean()
