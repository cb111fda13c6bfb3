"""TPE searches of search grids (pipeline.search) as Ray Tune experiments with Optuna's TPE (OptunaSearch).

Per (grid, space, repeat) a job of ``trials`` trials proposed by ``OptunaSearch`` with a seeded ``TPESampler``;
all jobs of a launch run in one Tune experiment. Trials log to MLflow through the launch's MlflowLogger like grid cells; a small callback names
each trial's cell (its config hash) when it starts, since the searcher decides the config only then.

Resuming: the runs an earlier launch FINISHED for a (space, repeat) are replayed into a fresh searcher
(``points_to_evaluate`` + ``evaluated_rewards``) and only the missing trials run, so a killed launch never
reruns a finished trial.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bnn.config import to_dict
from pipeline.grids import Cell, Grid, make_cell
from pipeline.options import LaunchOptions
from pipeline.search import (
    Space,
    parse_search,
    point_overrides,
    search_base,
    search_tags,
    tpe_seed,
)
from pipeline.trial import TrialCell, cell_payload
from wmhp.contract import TAG_REPEAT, TAG_SEARCH_POINT, TAG_SEARCHER, TAG_SPACE

POINT = "point"  # trial config key of the sampled values; Optuna names them "point/<field>"
JOB = "job"  # trial config key: which (space, repeat) proposed the trial


@dataclass
class TpeJob:
    grid: str
    experiment: str
    space: Space
    repeat: int
    seed: int
    metric: str
    trials: int
    startup: int
    base: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)  # finished before: raw samples by field
    rewards: list[float] = field(default_factory=list)
    finished: int = 0  # of this launch
    failed: int = 0

    @property
    def remaining(self) -> int:
        return max(0, self.trials - len(self.points))

    def payload(self) -> SearchJob:
        return SearchJob(self.grid, self.experiment, self.space, self.repeat, self.base)


@dataclass(frozen=True)
class SearchJob:
    """What a TPE trial needs to rebuild its cell from its sampled point (Tune pickles it to the worker)."""

    grid: str
    experiment: str
    space: Space
    repeat: int
    base: dict[str, Any]  # the grid's flat base config at the preset


def tpe_jobs(grid: Grid, preset: str, overrides: dict[str, Any] | None,
             done: dict[tuple[str, str, int], list[tuple[dict[str, Any], float]]]) -> list[TpeJob]:
    """Every (space, repeat) of a search grid, with what ``done`` says finished before (grid, space, repeat)."""
    search = parse_search(grid, preset)
    base = search_base(grid, preset, overrides)
    jobs = []
    for index, space in enumerate(search.spaces):
        for repeat in range(search.repeats):
            job = TpeJob(grid.name, grid.experiment, space, repeat, tpe_seed(search, index, repeat), search.metric,
                         search.trials, search.startup, base)
            for point, reward in done.get((grid.name, space.name, repeat), [])[: search.trials]:
                job.points.append(point)
                job.rewards.append(reward)
            jobs.append(job)
    return jobs


def finished_tpe(tracker: Any, experiment_ids: dict[str, str], metrics: dict[str, str]
                 ) -> dict[tuple[str, str, int], list[tuple[dict[str, Any], float]]]:
    """(grid, space, repeat) -> [(point, score)] of FINISHED TPE runs, oldest first. ``metrics``: grid -> metric."""
    out: dict[tuple[str, str, int], list[tuple[dict[str, Any], float]]] = {}
    for grid, eid in experiment_ids.items():
        if grid not in metrics:
            continue
        runs = tracker.search([eid], f"attributes.status = 'FINISHED' and tags.`{TAG_SEARCHER}` = 'tpe'")
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            tags = run.data.tags
            score = run.data.metrics.get(metrics[grid], math.nan)
            key = (grid, tags.get(TAG_SPACE, ""), int(tags.get(TAG_REPEAT, "0")))
            out.setdefault(key, []).append((json.loads(tags.get(TAG_SEARCH_POINT, "{}")), score))
    return out


def trial_cell(job: SearchJob, point: dict[str, Any], index: int = 0) -> Cell:
    """The cell of one TPE trial; the driver and the worker both call this, so both get the same hash."""
    grid = Grid(Path(job.grid), job.grid, job.experiment, "", {}, {})
    label = {"space": job.space.name, "searcher": "tpe", "repeat": job.repeat, "index": index}
    tags = search_tags(job.space.name, "tpe", job.repeat, index, point)
    return make_cell(grid, {**job.base, **point_overrides(job.space, point)}, label, job.grid,
                     check_paths=False, tags=tags)


def _trial_payload(cell: Cell) -> TrialCell:
    return cell_payload(cell.hash, [cell.grid], to_dict(cell.config))


def run_search_trial(config: dict[str, Any]) -> None:
    """Tune trainable of a TPE trial: rebuild the cell from the sampled point, then run it like a grid cell."""
    from pipeline.trial import run_trial

    cell = trial_cell(config["jobs"][config[JOB]], dict(config[POINT]))
    run_trial({"cell": _trial_payload(cell), "options": config["options"]})


def run_tpe(jobs: list[TpeJob], writer: Any, summary: Any, experiment_ids: dict[str, str], options: LaunchOptions,
            slots: int, out: TextIO) -> None:
    """Run the missing trials of every job in one Tune experiment (one start-up of the trial actors).

    Each job keeps its own seeded OptunaSearch; a thin Searcher hands each new trial to the job with the fewest
    trials issued, and routes results back to the searcher that proposed it.
    """
    import logging

    from ray import tune

    from pipeline.callbacks import MlflowLogger, Progress

    # wmhp resumes searches by replaying finished MLflow runs, not from Tune's searcher snapshots.
    logging.getLogger("ray.tune.search.searcher").setLevel(logging.ERROR)
    active = [job for job in jobs if job.remaining > 0]
    if not active:
        return
    total = sum(job.remaining for job in active)
    targets: dict[str, list[Cell]] = {}
    logger = MlflowLogger(writer, summary.preset, targets, experiment_ids, {})
    progress = Progress({}, {}, slots, out)
    progress.total = total
    payloads = [job.payload() for job in active]
    namer = _cell_namer(active, payloads, targets, progress)
    for job in active:
        print(f"wmhp ablate: {job.grid} TPE space {job.space.name} repeat {job.repeat}: "
              f"{len(job.points)} done before, {job.remaining} to run", file=out, flush=True)
    tuner = tune.Tuner(
        tune.with_resources(run_search_trial, options.resources),
        param_space={"jobs": payloads, "options": options.trial_options()},
        tune_config=tune.TuneConfig(search_alg=_multiplexer(active), num_samples=total,
                                    max_concurrent_trials=slots, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"tpe-{t.trial_id}"),
        run_config=tune.RunConfig(
            name=f"tpe-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=summary.storage,
            verbose=0,
            callbacks=[namer, logger, progress],
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        tuner.fit()
    finally:
        logger.close_open_runs()
    for index, job in enumerate(active):
        digests = {d for d, cells in targets.items() if cells[0].label["job"] == index}
        job.finished = sum(1 for d in digests if logger.status.get(d) == "FINISHED")
        job.failed = job.remaining - job.finished


def _optuna_search(job: TpeJob) -> Any:
    import optuna
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study and trial otherwise

    space = OptunaSearch.convert_search_space({POINT: {p.field: p.domain() for p in job.space.params}})
    points = [{f"{POINT}/{name}": value for name, value in point.items()} for point in job.points]
    return OptunaSearch(
        space=space,
        metric=f"wmhp/{job.metric}",
        mode="max",
        sampler=TPESampler(seed=job.seed, n_startup_trials=job.startup),
        points_to_evaluate=points or None,
        evaluated_rewards=list(job.rewards) or None,
    )


def _multiplexer(jobs: list[TpeJob]) -> Any:
    from ray.tune.search import Searcher

    class Multiplexer(Searcher):
        """Several independent searchers behind one Tune search algorithm; no search logic of its own."""

        def __init__(self) -> None:
            super().__init__(metric=f"wmhp/{jobs[0].metric}", mode="max")
            self.searchers = [_optuna_search(job) for job in jobs]
            self.issued = [0] * len(jobs)
            self.owner: dict[str, int] = {}

        def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
            return True  # every searcher has its own space, metric and mode

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            open_jobs = [i for i, job in enumerate(jobs) if self.issued[i] < job.remaining]
            if not open_jobs:
                return Searcher.FINISHED
            index = min(open_jobs, key=lambda i: self.issued[i])
            config = self.searchers[index].suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self.issued[index] += 1
            self.owner[trial_id] = index
            return {**config, JOB: index}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self.owner:
                self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self.owner:
                self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)

    return Multiplexer()


def _cell_namer(jobs: list[TpeJob], payloads: list[SearchJob], targets: dict[str, list[Cell]],
                progress: Any) -> Any:
    """A callback naming a TPE trial's cell (config hash, tags) when it starts, before the logger needs it."""
    from ray import tune

    counters = [len(job.points) for job in jobs]

    class CellNamer(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if "cell" in trial.config:  # a retry: already named
                return
            index = trial.config[JOB]
            cell = trial_cell(payloads[index], dict(trial.config[POINT]), counters[index])
            counters[index] += 1
            cell.label["job"] = index
            trial.config["cell"] = _trial_payload(cell)
            targets[cell.hash] = [cell]
            progress.estimates[cell.hash] = 0.0
            progress.epochs[cell.hash] = cell.config.epochs

    return CellNamer()
