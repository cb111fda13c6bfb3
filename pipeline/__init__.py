"""Ablation grids on Ray Tune with MLflow tracking (grid files in pipeline/grids/, ``wmhp ablate``).

``run_grids`` is imported lazily so that validating grids does not import Ray.
"""

from __future__ import annotations

from typing import Any

from pipeline.grids import Cell, Grid, GridError, builtin_grids, expand, find_grid, load_cells, load_grid
from pipeline.options import LaunchError, LaunchOptions

__all__ = [
    "Cell", "Grid", "GridError", "LaunchError", "LaunchOptions", "RunSummary", "builtin_grids", "expand",
    "find_grid", "load_cells", "load_grid", "run_grids",
]  # fmt: skip


def run_grids(*args: Any, **kwargs: Any) -> Any:
    """See pipeline.runner.run_grids."""
    from pipeline.runner import run_grids as _run_grids

    return _run_grids(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("RunSummary", "GridSummary"):
        import pipeline.runner

        return getattr(pipeline.runner, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
