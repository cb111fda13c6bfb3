"""One verdict per claim, computed by a rule stated beside it, and results/tables/verdicts.csv.

A verdict is ``supported``, ``not supported`` or ``inconclusive``. Every experiment module returns its verdicts
with the statistic it used, its value, the noise floor it was judged against, the number of seeds and the rule
in words, so that the report can show why, and a doctored result set can show that the verdict follows the data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
COLUMNS = ("experiment", "claim", "verdict", "statistic", "value", "noise", "n_seeds", "rule")
VERDICTS_FILE = "verdicts.csv"


@dataclass(frozen=True)
class Verdict:
    experiment: str  # e1..e9
    claim: str  # the claim tested, stated neutrally
    verdict: str  # one of VERDICTS
    statistic: str  # what was computed, e.g. "paired difference filter - sgd, final test accuracy"
    value: float  # its value (accuracy fractions as fractions)
    noise: float  # the seed-noise floor it was judged against (NaN where none applies)
    n_seeds: int
    rule: str  # how value and noise turn into the verdict, in words

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: expected one of {VERDICTS}, got {self.verdict!r}")


def inconclusive_for_lack_of_data(experiment: str, claim: str, rule: str, why: str) -> Verdict:
    """The verdict where the stored results cannot test the claim (too few seeds, a missing cell)."""
    return Verdict(experiment, claim, INCONCLUSIVE, why, math.nan, math.nan, 0, rule)


def write(path: Path, verdicts: list[Verdict]) -> Path:
    """verdicts.csv with COLUMNS, one row per claim, in experiment order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(v) for v in verdicts], columns=list(COLUMNS))
    frame.to_csv(path, index=False)
    return path
