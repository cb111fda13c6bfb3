"""What a launch does, decided from what is stored: one pure function, shared by ``--dry-run`` and the launch.

``classify(loaded, finished, resumable, searches)`` sorts every cell of every grid into done / adopt / run /
resume and counts them per grid (``GridSummary``). It reads no store and starts nothing (no Ray, no MLflow, no
files), so the dry run and the launch print the same numbers by construction; pipeline.runner gathers the facts
it takes and carries the plan out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence, TextIO

from pipeline.cost import format_duration, trial_seconds
from pipeline.grids import Cell, Grid

if TYPE_CHECKING:
    from pipeline.search_run import TpeJob
    from pipeline.tracking import FinishedRun
    from pipeline.trial import Resumable

Loaded = Sequence[tuple[Grid, Sequence[Cell]]]


@dataclass
class GridSummary:
    """One grid of a launch, in counts of the grid's cells (a search grid's TPE trials count as cells).

    ``cells = already_done + adopted + to_run``. A cell that several grids of one launch share is one trial whose
    runs are logged to each of them: it counts in ``to_run`` (and ``finished`` / ``failed``) of every such grid,
    since each gets a run, but its trial counts once, at the first of them in launch order; at the others it is
    ``shared``. So ``trials = to_run - shared``, and summed over grids ``trials``, ``resumed`` and ``estimate_s``
    are the launch's own totals. The dry run and the launch print these same fields (``print_table``).
    """

    name: str
    experiment: str
    cells: int
    already_done: int = 0  # FINISHED in this grid's experiment before the launch
    adopted: int = 0  # FINISHED only in another grid's experiment: its run is copied over, nothing runs
    to_run: int = 0  # get a new run in this grid's experiment, from a trial of this launch
    shared: int = 0  # of to_run: the trial belongs to an earlier grid of this launch (one trial, two runs)
    resumed: int = 0  # of the trials (to_run - shared): restarting from an earlier launch's checkpoint
    estimate_s: float = 0.0  # cost model: remaining epochs of the trials, start-up included
    finished: int = 0  # after the launch, of to_run
    failed: int = 0

    @property
    def trials(self) -> int:
        return self.to_run - self.shared


@dataclass
class Plan:
    grids: list[GridSummary]
    targets: dict[str, list[Cell]]  # hash -> the cells (one per grid, launch order) that one trial logs to
    adopt: list[tuple[FinishedRun, Cell]]  # (a FINISHED run elsewhere, the cell of the grid that copies it)
    resumable: dict[str, Resumable]  # of targets: the checkpoint an earlier launch left
    searches: list[TpeJob] = field(default_factory=list)  # TPE searches of the search grids

    @property
    def trials(self) -> int:
        return len(self.targets) + sum(job.remaining for job in self.searches)


def pending(loaded: Loaded, finished: Mapping[str, object]) -> set[str]:
    """Hashes no wmhp experiment has FINISHED: the cells an earlier launch may have left checkpoints for."""
    return {cell.hash for _, cells in loaded for cell in cells if cell.hash not in finished}


def classify(
    loaded: Loaded,
    finished: Mapping[str, Sequence[FinishedRun]],
    resumable: Mapping[str, Resumable],
    searches: Sequence[TpeJob] = (),
    gpu: bool = False,
) -> Plan:
    """Per grid, in launch order: each cell done (FINISHED in its grid), adopted (FINISHED in another grid
    only), or to run (resumed when ``resumable`` has a checkpoint for it); ``searches``' trials are done or to run.

    ``finished``: hash -> FINISHED runs of any wmhp experiment; ``resumable``: hash -> newest complete checkpoint.
    """
    plan = Plan([], {}, [], {}, list(searches))
    for grid, cells in loaded:
        stats = GridSummary(grid.name, grid.experiment, len(cells))
        plan.grids.append(stats)
        for cell in cells:
            runs = finished.get(cell.hash, ())
            if any(run.grid == grid.name for run in runs):
                stats.already_done += 1
            elif runs:
                stats.adopted += 1
                plan.adopt.append((runs[0], cell))
            else:
                stats.to_run += 1
                if cell.hash in plan.targets:
                    stats.shared += 1
                else:
                    done = resumable[cell.hash].epochs if cell.hash in resumable else 0
                    stats.resumed += done > 0
                    stats.estimate_s += trial_seconds(cell.config, gpu, done)
                    if done:
                        plan.resumable[cell.hash] = resumable[cell.hash]
                plan.targets.setdefault(cell.hash, []).append(cell)
        for job in (job for job in searches if job.grid == grid.name):
            stats.cells += job.trials
            stats.already_done += len(job.points)
            stats.to_run += job.remaining
            stats.estimate_s += job.remaining * (trial_seconds(cells[0].config, gpu) if cells else 0.0)
    return plan


COLUMNS = ("cells", "done", "adopt", "to run", "shared", "resume")


def print_table(grids: Sequence[GridSummary], out: TextIO) -> None:
    """The plan's counts per grid and in total; the dry run and the launch both print it."""
    print(f"{'grid':<18} " + " ".join(f"{c:>6}" for c in COLUMNS) + f" {'trial time':>10}", file=out)
    rows = [(g.name, (g.cells, g.already_done, g.adopted, g.to_run, g.shared, g.resumed), g.estimate_s) for g in grids]
    totals = tuple(sum(row[1][i] for row in rows) for i in range(len(COLUMNS)))
    for name, counts, seconds in [*rows, ("total", totals, sum(g.estimate_s for g in grids))]:
        print(f"{name:<18} " + " ".join(f"{n:>6}" for n in counts) + f" {format_duration(seconds):>10}", file=out)
    out.flush()

