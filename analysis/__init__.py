"""MLflow runs -> parquet -> figures, tables and REPORT.md. Imports bnn.config, never pipeline.

``collect`` needs MLflow; ``make_figures`` needs only the parquet files (and matplotlib): each is imported on use.
"""

from __future__ import annotations

from pathlib import Path


def collect(results_dir: Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """MLflow -> ``<results_dir>/runs.parquet`` and ``curves.parquet``; see analysis.collect."""
    from analysis.collect import collect as _collect

    return _collect(results_dir, tracking_uri)


def make_figures(results_dir: Path, preset: str | None = None) -> list[Path]:
    """Parquet -> figures/, tables/ and REPORT.md under results_dir; see analysis.figures."""
    from analysis.figures import make_figures as _make_figures

    return _make_figures(results_dir, preset)


__all__ = ["collect", "make_figures"]
