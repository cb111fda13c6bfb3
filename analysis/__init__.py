"""MLflow runs -> parquet -> figures, tables and REPORT.md. Imports bnn.config, never pipeline.

``collect`` needs MLflow (imported inside the call); ``make_figures`` needs only the parquet files and matplotlib,
imported on use.
"""

from __future__ import annotations

from pathlib import Path

# Bound eagerly: a lazy wrapper named like its submodule is replaced by the module object as soon as anything
# imports ``analysis.collect``. The module itself is light (pyarrow, bnn.config); MLflow loads inside the call.
from analysis.collect import collect


def make_figures(results_dir: Path, preset: str | None = None) -> list[Path]:
    """Parquet -> figures/, tables/ and REPORT.md under results_dir; see analysis.figures."""
    from analysis.figures import make_figures as _make_figures

    return _make_figures(results_dir, preset)


__all__ = ["collect", "make_figures"]
