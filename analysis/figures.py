"""runs.parquet + curves.parquet -> figures/, tables/ and REPORT.md. No Ray, no MLflow."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from analysis import report, verdicts
from analysis.experiments import MODULES, TABLE_MODULES
from analysis.frame import Experiment, load, select

REPORT_FILE = "REPORT.md"
MAX_WORKERS = 4
_ALL = (*MODULES, *TABLE_MODULES)
_jobs: dict[int, tuple[Experiment, Path, Path]] = {}  # set before forking: the workers inherit it


class FiguresError(ValueError):
    """A request the stored results cannot answer (e.g. a preset with no runs)."""


def make_figures(results_dir: Path, preset: str | None = None, echo: Callable[[str], None] = print) -> list[Path]:
    """Every figure (PNG + PDF), the tables (E8, verdicts.csv) and REPORT.md; returns the paths written.

    Reads and checks both parquet files before writing anything. An experiment without finished runs is
    skipped with a one-line notice. Figures are drawn in parallel processes where the machine has cores to spare.
    """
    results_dir = Path(results_dir)
    results = load(results_dir)
    presets = sorted(results.runs["preset"].dropna().unique())
    if preset is not None and preset not in presets:
        raise FiguresError(
            f"--preset {preset}: no runs of that preset in runs.parquet (present: {', '.join(presets) or 'none'})"
        )
    figures_dir, tables_dir = results_dir / "figures", results_dir / "tables"
    skipped = []
    _jobs.clear()
    for index, module in enumerate(_ALL):
        experiment = select(results, module.KEY, preset, one_context=module not in TABLE_MODULES)
        if experiment is None:
            notice = f"{module.KEY}: no finished runs in runs.parquet (its grid not run or not collected): skipped"
            echo(notice)
            skipped.append(notice)
        else:
            _jobs[index] = (experiment, figures_dir, tables_dir)
    try:
        sections = _run_all(list(_jobs))
    finally:
        _jobs.clear()
    written = [path for section in sections for path in section.figures]
    written.append(verdicts.write(tables_dir / verdicts.VERDICTS_FILE, [v for s in sections for v in s.verdicts]))
    written.append(report.write(results_dir / REPORT_FILE, sections, skipped, results.runs))
    return written


def _run_all(indices: list[int]) -> list[report.Section]:
    workers = min(len(indices), os.cpu_count() or 1, MAX_WORKERS)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [_analyse(index) for index in indices]
    # fork: the workers share the loaded frames without pickling them; each draws whole figures.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_analyse, indices))


def _analyse(index: int) -> report.Section:
    experiment, figures_dir, tables_dir = _jobs[index]
    module = _ALL[index]
    if module in TABLE_MODULES:
        return module.analyse(experiment, figures_dir, tables_dir)
    return module.analyse(experiment, figures_dir)
