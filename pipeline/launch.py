"""Carrying a plan out on Ray Tune: the trials of ``plan.targets`` (two-step cells in two phases), then the TPE
searches. Every MLflow write goes through the launch's TrackingWriter (pipeline.writer)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bnn.config import config_hash, step1_config, to_dict
from pipeline.cost import trial_seconds
from pipeline.grids import Cell
from pipeline.options import LaunchError, LaunchOptions
from pipeline.plan import GridSummary, Plan
from pipeline.trial import CELL_DIR_PREFIX, Resumable, StoredCheckpoint, cell_payload, find_resumable, stored_checkpoint
from pipeline.writer import TrackingWriter


@dataclass
class RunSummary:
    """What a launch (or dry run) found and did: per grid, the plan's counts and the trials' outcome."""

    preset: str
    results_dir: Path
    tracking_uri: str
    storage: str
    dry_run: bool
    grids: list[GridSummary] = field(default_factory=list)
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # validate_s, ray_init_s, setup_s, fit_s, logging_s

    @property
    def failed(self) -> int:
        return sum(g.failed for g in self.grids)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def total(self, attribute: str) -> int:
        return sum(getattr(g, attribute) for g in self.grids)


def execute(plan: Plan, experiment_ids: dict[str, str], writer: TrackingWriter, summary: RunSummary,
            options: LaunchOptions, out: TextIO) -> None:
    """Run the plan's trials on the connected Ray; per grid, count them in ``summary.grids`` (finished/failed).

    ``experiment_ids``: grid -> MLflow experiment id (on a first launch, filled by the writer before any run).
    """
    if plan.targets:
        status = _run_cells(plan, experiment_ids, writer, summary, options, out)
        for stats in summary.grids:
            for digest, cells in plan.targets.items():
                if any(cell.grid == stats.name for cell in cells):
                    if status.get(digest) == "FINISHED":
                        stats.finished += 1
                    else:
                        stats.failed += 1
    if any(job.remaining for job in plan.searches):
        from pipeline.search_run import run_tpe

        run_tpe(plan.searches, writer, summary, experiment_ids, options, _slots(options), out)
        for stats in summary.grids:
            for job in plan.searches:
                if job.grid == stats.name:
                    stats.finished += job.finished
                    stats.failed += job.failed


def connect_ray(options: LaunchOptions, summary: RunSummary) -> bool:
    """Connect to (or start) Ray; True when this call started it and so must shut it down."""
    import ray

    if ray.is_initialized():
        return False
    start = time.perf_counter()
    try:
        if options.address:
            ray.init(address=options.address, log_to_driver=True)
        else:  # "local" always starts a fresh instance, never joins a cluster found on this host
            ray.init(address="local", num_cpus=options.local_cpus, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LaunchError(f"--address {options.address or 'local'}: cannot start or reach Ray ({exc})") from None
    summary.timings["ray_init_s"] = time.perf_counter() - start
    return True


def two_step_phases(targets: dict[str, list[Cell]]) -> list[dict[str, list[Cell]]]:
    """Targets split into launch phases: everything but stage-step2 cells first, then the step2 cells, which
    start from their step-1 runs' finished checkpoints (one phase when nothing is two-step)."""
    first = {d: cells for d, cells in targets.items() if cells[0].config.stage != "step2"}
    second = {d: cells for d, cells in targets.items() if cells[0].config.stage == "step2"}
    return [phase for phase in (first, second) if phase]


def remaining_s(cell: Cell, resumable: dict[str, Resumable], gpu: bool) -> float:
    done = resumable[cell.hash].epochs if cell.hash in resumable else 0
    return trial_seconds(cell.config, gpu, done)


def check_fits(nodes: list[dict[str, Any]], cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial must fit on one node, or Tune waits for ever: refuse up front, naming what the nodes have."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    if any(r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial for r in alive):
        return
    have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in alive) or "no live nodes"
    raise LaunchError(f"--cpus-per-trial {cpus_per_trial:g} --gpus-per-trial {gpus_per_trial:g}: no Ray node can "
                      f"hold one trial (nodes: {have}); ask for less, or add bigger nodes")


def _slots(options: LaunchOptions) -> int:
    import ray

    resources = ray.cluster_resources()
    return options.concurrency(resources.get("CPU", 1.0), resources.get("GPU", 0.0))


def _step1_checkpoints(storage: str, cells: dict[str, Cell]) -> dict[str, StoredCheckpoint]:
    """For each step2 cell, the finished checkpoint its step-1 run left in Tune storage (absent when none)."""
    step1 = {d: config_hash(step1_config(c.config)) for d, c in cells.items()}
    found = find_resumable(storage, set(step1.values()))
    return {
        d: stored_checkpoint(storage, found[h].path)
        for d, h in step1.items()
        if h in found and found[h].epochs == cells[d].config.epochs
    }


def _run_cells(plan: Plan, experiment_ids: dict[str, str], writer: TrackingWriter, summary: RunSummary,
               options: LaunchOptions, out: TextIO) -> dict[str, str]:
    """Every target in its phase; the final MLflow status per config hash."""
    status: dict[str, str] = {}
    for index, targets in enumerate(two_step_phases(plan.targets)):
        inits: dict[str, StoredCheckpoint] = {}
        if index:  # step2 cells: only those whose step 1 finished can run
            inits = _step1_checkpoints(summary.storage, {d: cells[0] for d, cells in targets.items()})
            for digest in sorted(set(targets) - set(inits)):
                print(f"  {targets[digest][0].run_name}: its step-1 run has no finished checkpoint in "
                      f"{summary.storage}; not run", file=out, flush=True)
                status[digest] = "FAILED"
            targets = {d: cells for d, cells in targets.items() if d in inits}
        if targets:
            status.update(_run_phase(plan, targets, inits, index, experiment_ids, writer, summary, options, out))
    return status


def _run_phase(plan: Plan, targets: dict[str, list[Cell]], inits: dict[str, StoredCheckpoint], phase: int,
               experiment_ids: dict[str, str], writer: TrackingWriter, summary: RunSummary, options: LaunchOptions,
               out: TextIO) -> dict[str, str]:
    """One Tuner.fit over ``targets``; the final MLflow status per config hash."""
    import ray
    from ray import tune

    from pipeline.callbacks import MlflowLogger, Progress
    from pipeline.trial import run_trial

    # Tune's ResultGrid looks for the per-trial result files that TUNE_DISABLE_AUTO_CALLBACK_LOGGERS turns off.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    resumable = plan.resumable
    cells = {digest: entries[0] for digest, entries in targets.items()}
    estimates = {d: remaining_s(c, resumable, options.gpu) for d, c in cells.items()}
    order = sorted(cells, key=lambda d: -estimates[d])  # longest first: fewer stragglers at the end
    payloads = [
        cell_payload(digest, [cell.grid for cell in targets[digest]], to_dict(cells[digest].config),
                   resume=resumable[digest].checkpoint if digest in resumable else None, init=inits.get(digest))
        for digest in order
    ]
    logger = MlflowLogger(writer, summary.preset, targets, experiment_ids, {d: r.history for d, r in resumable.items()})
    check_fits(ray.nodes(), options.cpus_per_trial, options.gpus_per_trial)
    progress = Progress(estimates, {d: c.config.epochs for d, c in cells.items()}, _slots(options), out)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, options.resources),
        param_space={"cell": tune.grid_search(payloads), "options": options.trial_options()},
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=options.max_concurrent,
            reuse_actors=True,
            trial_name_creator=lambda t: f"{t.config['cell']['grids'][0]}-{t.config['cell']['hash']}",
            trial_dirname_creator=lambda t: f"{CELL_DIR_PREFIX}{t.config['cell']['hash']}",
        ),
        run_config=tune.RunConfig(
            name=f"ablate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" + ("-step2" if phase else ""),
            storage_path=summary.storage,
            verbose=0,
            callbacks=[logger, progress],
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    fit = time.perf_counter()
    try:
        tuner.fit()
    finally:
        summary.timings["fit_s"] = summary.timings.get("fit_s", 0.0) + time.perf_counter() - fit
        logger.close_open_runs()
    return {digest: logger.status.get(digest, "FAILED") for digest in targets}
