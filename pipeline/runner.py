"""``run_grids``: validate grids, dedup against MLflow, run the missing cells as Ray Tune trials.

Order of work, so that bad input writes nothing: options and every grid are validated and expanded first;
only then the results dir, the launch lock, MLflow experiments (created up front) and Ray. All MLflow writes
go through one writer thread (pipeline.writer); on a first launch it creates the store while Ray starts.
Dedup: a cell whose config_hash has a FINISHED run in its grid's experiment is done; one FINISHED in another
``wmhp/*`` experiment is *adopted* (copied, not run); cells shared by grids of one launch run once and log to
every grid. Cells that an earlier launch left unfinished resume from their newest Tune checkpoint.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bnn.config import config_hash, step1_config, to_dict
from pipeline.cost import format_duration, trial_seconds
from pipeline.grids import Cell, Grid, GridError, load_cells
from pipeline.lease import LaunchLease, LeaseHeld
from pipeline.tracking import Tracker, create_sqlite_store, default_tracking_uri, sqlite_path, unusable_sqlite_store
from pipeline.writer import TrackingWriter
from pipeline.trial import FAULT_ENV, FAULT_KILL_ENV, CELL_DIR_PREFIX, Resumable, find_resumable, parse_fault_spec
from pipeline.search import parse_search
from pipeline.search_run import TpeJob, finished_tpe, run_tpe, tpe_jobs

# Ray/Tune behaviour the pipeline relies on; set before Ray is imported (stack.md).
_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the old reporter honours verbose=0; the new one prints tables regardless
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial json/csv/tensorboard files: MLflow has it all
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # checkpointing every epoch is intended
    # Tune's experiment snapshot (every 10 s) serves Tuner.restore, which wmhp never uses (it resumes from MLflow and
    # the cells' checkpoints): ~3 s of driver CPU per 24-trial launch, make bench 2026-11-30.
    "TUNE_GLOBAL_CHECKPOINT_S": "86400",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "1",
    # Read at a process's first cuBLAS call, so it must be in the workers' environment from the start for
    # TrainConfig.deterministic; harmless otherwise (a fixed 8 x 4 MiB cuBLAS workspace).
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
LOCK_FILE = ".ablate.lock"


class LaunchError(RuntimeError):
    """The launch cannot proceed (another driver holds the results dir, Ray cannot be reached, ...)."""


@dataclass
class GridSummary:
    name: str
    experiment: str
    cells: int
    already_done: int = 0  # FINISHED in this grid's experiment before the launch
    adopted: int = 0  # FINISHED in another grid's experiment: copied over
    to_run: int = 0
    resumed: int = 0  # of to_run: restarting from an earlier launch's checkpoint
    finished: int = 0
    failed: int = 0
    estimate_s: float = 0.0  # summed trial time of to_run (cost model)


@dataclass
class RunSummary:
    preset: str
    results_dir: Path
    tracking_uri: str
    storage: str
    dry_run: bool
    grids: list[GridSummary] = field(default_factory=list)
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # ray_init_s, setup_s, fit_s, logging_s

    @property
    def failed(self) -> int:
        return sum(g.failed for g in self.grids)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def total(self, attribute: str) -> int:
        return sum(getattr(g, attribute) for g in self.grids)


def run_grids(
    grids: list[str] | None,
    preset: str,
    results_dir: Path,
    tracking_uri: str | None = None,
    *,
    address: str | None = None,
    storage: str | None = None,
    gpus_per_trial: float = 0.0,
    cpus_per_trial: float = 1.0,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    num_cpus: int | None = None,
    out: TextIO | None = None,
) -> RunSummary:
    """Run every unfinished cell of ``grids`` (names, paths, or None for all) at ``preset``.

    Raises GridError (bad grid file or option: nothing written) or LaunchError; trial failures are counted
    in the returned summary (``summary.ok``), not raised.
    """
    started = time.perf_counter()
    out = out or sys.stdout
    _check_options(gpus_per_trial, cpus_per_trial, max_concurrent, max_failures, num_cpus)
    fault = os.environ.get(FAULT_ENV)
    try:
        parse_fault_spec(fault)
    except ValueError as exc:
        raise GridError(str(exc)) from None
    loaded = load_cells(grids, preset, overrides)
    local_cpus = num_cpus or os.cpu_count() or 1
    if address is None and cpus_per_trial > local_cpus:  # Tune would wait for ever for a node that big
        raise GridError(f"--cpus-per-trial {cpus_per_trial:g}: local Ray has {local_cpus} CPUs; ask for at most "
                        f"{local_cpus}, or run on a cluster (--address)")
    if not dry_run:
        _check_address(address)
    results_dir = Path(results_dir).resolve()
    if results_dir.exists() and not results_dir.is_dir():
        raise GridError(f"--results-dir {results_dir}: is a file, not a directory; give a directory")
    uri = tracking_uri or default_tracking_uri(results_dir)
    storage = storage or str(results_dir / "ray")
    summary = RunSummary(preset, results_dir, uri, storage, dry_run)
    _probe_server(uri)
    db = sqlite_path(uri)
    problem = unusable_sqlite_store(db) if db is not None else None
    if problem:
        raise LaunchError(f"--tracking-uri {uri}: {problem}; move the file aside or give another --results-dir")
    gpu = gpus_per_trial > 0
    if dry_run:
        _dry_run(loaded, summary, gpu, max_concurrent, cpus_per_trial, num_cpus, address, out, overrides)
        summary.wall_s = time.perf_counter() - started
        return summary

    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    summary.timings["validate_s"] = time.perf_counter() - started
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        lock = _launch_lock(results_dir)
        lock.__enter__()
    except OSError as exc:
        raise LaunchError(f"--results-dir {results_dir}: cannot write there ({exc.strerror or exc}); "
                          "give a writable directory") from None
    try:
        lease = _take_lease(uri, summary)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    with lock, lease:
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            # A first launch: nothing can be finished in a store that does not exist yet. The writer thread
            # creates it while Ray starts and the first trials import torch.
            plan = _plan_fresh(loaded, summary, gpu)
            _add_tpe(plan, summary, loaded, overrides, {}, gpu)
            writer = TrackingWriter(lambda: _new_store_tracker(db, uri, results_dir), first=plan.create_experiments)
        else:
            tracker = _connected(lambda: Tracker(uri, results_dir), summary)
            plan = _connected(lambda: _plan(tracker, loaded, summary, gpu), summary)
            done = _connected(lambda: finished_tpe(tracker, plan.experiment_ids, _search_metrics(loaded, preset)),
                              summary)
            _add_tpe(plan, summary, loaded, overrides, done, gpu)
            writer = TrackingWriter(lambda: tracker)
        _print_header(summary, plan.killed, len(plan.targets) + sum(j.remaining for j in plan.tpe), out)
        started_ray = False
        failure: Exception | None = None
        try:
            if plan.targets or any(job.remaining for job in plan.tpe):
                started_ray = _connect_ray(address, num_cpus, summary)
                if plan.targets:
                    _run_tune(plan, writer, summary, gpus_per_trial, cpus_per_trial, max_concurrent, max_failures,
                              fault, gpu, out)
                _run_searches(plan, writer, summary, gpus_per_trial, cpus_per_trial, max_concurrent, max_failures,
                              fault, out)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the writer has drained
            failure = exc
        finally:
            error = writer.close()
            summary.timings["logging_s"] = writer.seconds
            summary.timings.setdefault("setup_s", writer.setup_s)
            if started_ray:
                import ray

                ray.shutdown()
        if error is not None:
            raise LaunchError(f"--tracking-uri {uri}: writing to MLflow failed ({error!r}); cells whose runs "
                              "were not completed run again (from their checkpoints) at the next launch") from error
        if failure is not None:
            raise failure
    summary.wall_s = time.perf_counter() - started
    _print_footer(summary, out)
    return summary


@dataclass
class _Plan:
    targets: dict[str, list[Cell]]  # hash -> the cells (one per grid) that need it run
    experiment_ids: dict[str, str]  # grid -> MLflow experiment id (filled by the writer on a first launch)
    resumable: dict[str, Resumable]
    killed: int = 0
    tpe: list[TpeJob] = field(default_factory=list)  # TPE searches of search grids (pipeline.search_run)

    def create_experiments(self, tracker: Tracker) -> None:
        grids = {cell.grid for cells in self.targets.values() for cell in cells} | {job.grid for job in self.tpe}
        for grid in grids:
            self.experiment_ids[grid] = tracker.ensure_experiment(grid)


def _search_metrics(loaded: list[tuple[Grid, list[Cell]]], preset: str) -> dict[str, str]:
    return {grid.name: parse_search(grid, preset).metric for grid, _ in loaded if grid.search is not None}


def _add_tpe(plan: _Plan, summary: RunSummary, loaded: list[tuple[Grid, list[Cell]]],
             overrides: dict[str, Any] | None, done: dict[Any, Any], gpu: bool) -> None:
    """The TPE searches of the launch's search grids: counted per grid like cells (done before / to run)."""
    for grid, cells in loaded:
        if grid.search is None:
            continue
        jobs = tpe_jobs(grid, summary.preset, overrides, done)
        stats = next(g for g in summary.grids if g.name == grid.name)
        total, before = sum(j.trials for j in jobs), sum(len(j.points) for j in jobs)
        stats.cells += total
        stats.already_done += before
        stats.to_run += total - before
        stats.estimate_s += (total - before) * (trial_seconds(cells[0].config, gpu) if cells else 0.0)
        plan.tpe.extend(jobs)


def _run_searches(plan: _Plan, writer: TrackingWriter, summary: RunSummary, gpus_per_trial: float,
                  cpus_per_trial: float, max_concurrent: int | None, max_failures: int, fault: str | None,
                  out: TextIO) -> None:
    import ray

    if not any(job.remaining for job in plan.tpe):
        return
    resources = ray.cluster_resources()
    slots = _concurrency(max_concurrent, cpus_per_trial, gpus_per_trial, resources.get("CPU", 1.0),
                         resources.get("GPU", 0.0))
    options = {"threads": max(1, int(cpus_per_trial)), "fault_once": fault,
               "fault_kill": os.environ.get(FAULT_KILL_ENV) == "1"}
    run_tpe(plan.tpe, writer, summary, plan.experiment_ids, options, {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
            slots, max_failures, out)
    for stats in summary.grids:
        for job in plan.tpe:
            if job.grid == stats.name:
                stats.finished += job.finished
                stats.failed += job.failed


def _new_store_tracker(db: Path, uri: str, results_dir: Path) -> Tracker:
    create_sqlite_store(db)
    return Tracker(uri, results_dir)


def _connected(step: Any, summary: RunSummary) -> Any:
    """Run a step that talks to the tracking store; unreachable stores become a LaunchError."""
    try:
        return step()
    except OSError as exc:  # a tracking server or the storage cannot be reached
        raise LaunchError(f"tracking {summary.tracking_uri} / storage {summary.storage}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("mlflow", "sqlalchemy")):  # sqlalchemy: a garbage sqlite file
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise LaunchError(f"--tracking-uri {summary.tracking_uri}: not a usable MLflow store ({text}); "
                              "move the file aside or give another --results-dir / --tracking-uri") from None
        raise


def _plan_fresh(loaded: list[tuple[Grid, list[Cell]]], summary: RunSummary, gpu: bool) -> _Plan:
    targets: dict[str, list[Cell]] = {}
    for grid, cells in loaded:
        summary.grids.append(GridSummary(grid.name, grid.experiment, len(cells), to_run=len(cells)))
        for cell in cells:
            targets.setdefault(cell.hash, []).append(cell)
    return _finish_plan(_Plan(targets, {}, {}), summary, gpu)


def _plan(tracker: Tracker, loaded: list[tuple[Grid, list[Cell]]], summary: RunSummary, gpu: bool) -> _Plan:
    """Experiments up front, stale runs KILLED, dedup and adoption, checkpoints to resume from."""
    start = time.perf_counter()
    experiment_ids = {grid.name: tracker.ensure_experiment(grid.name) for grid, _ in loaded}
    killed = sum(tracker.mark_stale_running(eid) for eid in experiment_ids.values())
    finished = tracker.finished_by_hash()
    targets: dict[str, list[Cell]] = {}
    for grid, cells in loaded:
        stats = GridSummary(grid.name, grid.experiment, len(cells))
        summary.grids.append(stats)
        eid = experiment_ids[grid.name]
        for cell in cells:
            runs = finished.get(cell.hash, [])
            if any(run.experiment_id == eid for run in runs):
                stats.already_done += 1
            elif runs:
                tracker.adopt(runs[0], eid, cell, summary.preset)
                stats.adopted += 1
            else:
                stats.to_run += 1
                targets.setdefault(cell.hash, []).append(cell)
    plan = _finish_plan(_Plan(targets, experiment_ids, {}, killed), summary, gpu)
    summary.timings["setup_s"] = time.perf_counter() - start
    return plan


def _finish_plan(plan: _Plan, summary: RunSummary, gpu: bool) -> _Plan:
    """Checkpoints an earlier launch left for the cells to run, and the per-grid estimates."""
    plan.resumable.update(find_resumable(summary.storage, set(plan.targets)))
    for stats in summary.grids:
        cells = [cell for cells in plan.targets.values() for cell in cells if cell.grid == stats.name]
        stats.resumed = sum(1 for c in cells if c.hash in plan.resumable)
        stats.estimate_s = sum(_remaining_s(c, plan.resumable, gpu) for c in cells)
    return plan


def _check_options(
    gpus_per_trial: float, cpus_per_trial: float, max_concurrent: int | None, max_failures: int,
    num_cpus: int | None,
) -> None:
    if not (gpus_per_trial >= 0 and math.isfinite(gpus_per_trial)):
        raise GridError(f"--gpus-per-trial: expected a finite number >= 0 (fractions share a GPU), got {gpus_per_trial}")
    if not (cpus_per_trial > 0 and math.isfinite(cpus_per_trial)):
        raise GridError(f"--cpus-per-trial: expected a finite number > 0, got {cpus_per_trial}")
    if max_concurrent is not None and max_concurrent < 1:
        raise GridError(f"--max-concurrent: expected an int >= 1, got {max_concurrent}")
    if max_failures < 0:
        raise GridError(f"--max-failures: expected an int >= 0, got {max_failures}")
    if num_cpus is not None and num_cpus < 1:
        raise GridError(f"num_cpus: expected an int >= 1, got {num_cpus}")


def _check_address(address: str | None) -> None:
    """A head that does not answer makes ray.init retry for many minutes: fail fast instead."""
    if address in (None, "auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise GridError(f"--address {address}: expected host:port of a Ray head, 'auto', or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise LaunchError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); start one "
                          "with `ray start --head`, or use --address auto on the head node") from None


def _take_lease(uri: str, summary: RunSummary) -> LaunchLease:
    """The store's launch lease, held: a second live launch on the store would mark this one's runs KILLED."""
    lease = LaunchLease(uri)
    try:
        _connected(lease.__enter__, summary)
    except LeaseHeld as exc:
        raise LaunchError(str(exc)) from None
    return lease


def _probe_server(uri: str, timeout_s: float = 5.0) -> None:
    """An unreachable tracking server makes MLflow's client retry for minutes: one health probe says it at once."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError:
        return  # something answers: MLflow's own calls report what is wrong with it
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise LaunchError(f"--tracking-uri {uri}: no MLflow server answers there ({reason}); start one "
                          "(`mlflow server ...`) or fix the URI") from None


class _launch_lock:
    """One driver per results dir: a second launch would mark the first one's live runs KILLED."""

    def __init__(self, results_dir: Path) -> None:
        self.path = results_dir / LOCK_FILE
        self.handle: Any = None

    def __enter__(self) -> None:
        if self.handle is not None:  # entered already (run_grids enters it early to report write errors)
            return
        self.handle = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "?"
            self.handle.close()
            raise LaunchError(f"another `wmhp ablate` (pid {holder}) is running on {self.path.parent}; "
                              "wait for it, or use another --results-dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _remaining_s(cell: Cell, resumable: dict[str, Resumable], gpu: bool) -> float:
    done = resumable[cell.hash].epochs if cell.hash in resumable else 0
    return trial_seconds(cell.config, gpu, done)


def _concurrency(max_concurrent: int | None, cpus_per_trial: float, gpus_per_trial: float,
                 cpus: float, gpus: float = 0.0) -> int:
    """Trials that fit at once: the resources' limit, capped by --max-concurrent (at least 1)."""
    slots = int(cpus // cpus_per_trial)
    if gpus_per_trial > 0:
        slots = min(slots, int(gpus // gpus_per_trial))
    slots = max(1, slots)
    return min(slots, max_concurrent) if max_concurrent else slots


# --- dry run -------------------------------------------------------------------------------------------------
def _dry_run(
    loaded: list[tuple[Grid, list[Cell]]], summary: RunSummary, gpu: bool, max_concurrent: int | None,
    cpus_per_trial: float, num_cpus: int | None, address: str | None, out: TextIO,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Count cells done per grid from the tracking store, without writing anything (no db is created)."""
    db = sqlite_path(summary.tracking_uri)
    finished: dict[str, list[Any]] = {}
    done_tpe: dict[Any, Any] = {}
    if db is None or (db.exists() and db.stat().st_size > 0):  # MLflow would write a schema into an empty file
        tracker = _connected(lambda: Tracker(summary.tracking_uri, summary.results_dir), summary)
        finished = _connected(tracker.finished_by_hash, summary)
        ids = {grid: eid for eid, grid in tracker.wmhp_experiments().items()}
        done_tpe = finished_tpe(tracker, ids, _search_metrics(loaded, summary.preset))
    pending = {c.hash for _, cells in loaded for c in cells if c.hash not in finished}
    resumable = find_resumable(summary.storage, pending)
    counted: set[str] = set()
    for grid, cells in loaded:
        stats = GridSummary(grid.name, grid.experiment, len(cells))
        for cell in cells:
            runs = finished.get(cell.hash, [])
            if any(run.grid == grid.name for run in runs):
                stats.already_done += 1
            elif runs:
                stats.adopted += 1
            else:
                stats.to_run += 1
                stats.resumed += cell.hash in resumable
                if cell.hash not in counted:  # shared by two grids: runs once
                    stats.estimate_s += _remaining_s(cell, resumable, gpu)
                    counted.add(cell.hash)
        summary.grids.append(stats)
    _add_tpe(_Plan({}, {}, {}), summary, loaded, overrides, done_tpe, gpu)
    slots = max_concurrent
    if address is None and not gpu:
        slots = _concurrency(max_concurrent, cpus_per_trial, 0.0, num_cpus or os.cpu_count() or 1)
    device = "GPU" if gpu else "CPU thread"
    print(f"wmhp ablate --dry-run: preset {summary.preset}, tracking {summary.tracking_uri}", file=out)
    print(f"{'grid':<18} {'cells':>5} {'done':>5} {'adopt':>5} {'to run':>6} {'resume':>6} "
          f"{'trial time':>10}", file=out)
    for g in summary.grids:
        print(f"{g.name:<18} {g.cells:>5} {g.already_done:>5} {g.adopted:>5} {g.to_run:>6} {g.resumed:>6} "
              f"{format_duration(g.estimate_s):>10}", file=out)
    total_s = sum(g.estimate_s for g in summary.grids)
    line = (f"{'total':<18} {summary.total('cells'):>5} {summary.total('already_done'):>5} "
            f"{summary.total('adopted'):>5} {summary.total('to_run'):>6} {summary.total('resumed'):>6} "
            f"{format_duration(total_s):>10}")
    print(line, file=out)
    wall = f"about {format_duration(total_s / slots)} wall at {slots} concurrent trials" if slots else \
        "wall time depends on the cluster's size (give --max-concurrent for an estimate)"
    print(f"estimate (rough cost model, one {device} per trial): {wall}", file=out)
    _print_two_step(loaded, finished, out)


def _print_two_step(loaded: list[tuple[Grid, list[Cell]]], finished: dict[str, Any], out: TextIO) -> None:
    """The two-step cells in launch order: every step 1 (phase 1) before the step 2 that starts from it."""
    cells = list({c.hash: c for _, grid_cells in loaded for c in grid_cells if c.config.stage != "single"}.values())
    if not cells:
        return
    print("two-step cells, in launch order (phase 2 starts from phase 1's finished checkpoints):", file=out)
    for phase, stage in ((1, "step1"), (2, "step2")):
        for cell in (c for c in cells if c.config.stage == stage):
            done = "done" if cell.hash in finished else "to run"
            what = f"{cell.config.binary_opt.name} seed {cell.config.seed}"
            if stage == "step2":
                what += f", from {cell.grid}-{config_hash(step1_config(cell.config))}"
            print(f"  phase {phase}  {stage}  {cell.run_name}  {done:<6}  {what}", file=out)


# --- the Tune run ----------------------------------------------------------------------------------------
def _connect_ray(address: str | None, num_cpus: int | None, summary: RunSummary) -> bool:
    """Connect to (or start) Ray; True when this call started it and so must shut it down."""
    import ray

    if ray.is_initialized():
        return False
    start = time.perf_counter()
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # "local" always starts a fresh instance, never joins a cluster found on this host
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LaunchError(f"--address {address or 'local'}: cannot start or reach Ray ({exc})") from None
    summary.timings["ray_init_s"] = time.perf_counter() - start
    return True


def two_step_phases(targets: dict[str, list[Cell]]) -> list[dict[str, list[Cell]]]:
    """Targets split into launch phases: everything but stage-step2 cells first, then the step2 cells, which
    start from their step-1 runs' finished checkpoints (one phase when nothing is two-step)."""
    first = {d: cells for d, cells in targets.items() if cells[0].config.stage != "step2"}
    second = {d: cells for d, cells in targets.items() if cells[0].config.stage == "step2"}
    return [phase for phase in (first, second) if phase]


def _step1_checkpoints(storage: str, cells: dict[str, Cell]) -> dict[str, dict[str, str]]:
    """For each step2 cell, the finished checkpoint its step-1 run left in Tune storage (absent when none)."""
    step1 = {d: config_hash(step1_config(c.config)) for d, c in cells.items()}
    found = find_resumable(storage, set(step1.values()))
    return {
        d: {"storage": storage, "path": found[h].path}
        for d, h in step1.items()
        if h in found and found[h].epochs == cells[d].config.epochs
    }


def _run_tune(
    plan: _Plan,
    writer: TrackingWriter,
    summary: RunSummary,
    gpus_per_trial: float,
    cpus_per_trial: float,
    max_concurrent: int | None,
    max_failures: int,
    fault: str | None,
    gpu: bool,
    out: TextIO,
) -> None:
    status: dict[str, str] = {}
    for index, targets in enumerate(two_step_phases(plan.targets)):
        inits: dict[str, dict[str, str]] = {}
        if index:  # step2 cells: only those whose step 1 finished can run
            inits = _step1_checkpoints(summary.storage, {d: cells[0] for d, cells in targets.items()})
            for digest in sorted(set(targets) - set(inits)):
                print(f"  {targets[digest][0].run_name}: its step-1 run has no finished checkpoint in "
                      f"{summary.storage}; not run", file=out, flush=True)
                status[digest] = "FAILED"
            targets = {d: cells for d, cells in targets.items() if d in inits}
        if targets:
            status.update(_run_phase(plan, targets, inits, index, writer, summary, gpus_per_trial, cpus_per_trial,
                                     max_concurrent, max_failures, fault, gpu, out))  # fmt: skip
    for stats in summary.grids:
        for digest, entries in plan.targets.items():
            if any(cell.grid == stats.name for cell in entries):
                if status.get(digest) == "FINISHED":
                    stats.finished += 1
                else:
                    stats.failed += 1


def _run_phase(
    plan: _Plan,
    targets: dict[str, list[Cell]],
    inits: dict[str, dict[str, str]],
    phase: int,
    writer: TrackingWriter,
    summary: RunSummary,
    gpus_per_trial: float,
    cpus_per_trial: float,
    max_concurrent: int | None,
    max_failures: int,
    fault: str | None,
    gpu: bool,
    out: TextIO,
) -> dict[str, str]:
    """One Tuner.fit over ``targets``; the final MLflow status per config hash."""
    import ray
    from ray import tune

    from pipeline.callbacks import MlflowLogger, Progress
    from pipeline.trial import run_trial

    # Tune's ResultGrid looks for the per-trial result files that TUNE_DISABLE_AUTO_CALLBACK_LOGGERS turns off.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    resumable = plan.resumable
    cells = {digest: entries[0] for digest, entries in targets.items()}
    estimates = {d: _remaining_s(c, resumable, gpu) for d, c in cells.items()}
    order = sorted(cells, key=lambda d: -estimates[d])  # longest first: fewer stragglers at the end
    payloads = [
        {
            "hash": digest,
            "grids": [cell.grid for cell in targets[digest]],
            "config": to_dict(cells[digest].config),
            "resume": {"storage": summary.storage, "path": resumable[digest].path,
                       "older": list(resumable[digest].older)} if digest in resumable else None,
            "init": inits.get(digest),
        }
        for digest in order
    ]
    logger = MlflowLogger(writer, summary.preset, targets, plan.experiment_ids,
                          {d: r.history for d, r in resumable.items()})
    _check_fits(ray.nodes(), cpus_per_trial, gpus_per_trial)
    resources = ray.cluster_resources()
    slots = _concurrency(max_concurrent, cpus_per_trial, gpus_per_trial, resources.get("CPU", 1.0),
                         resources.get("GPU", 0.0))
    progress = Progress(estimates, {d: c.config.epochs for d, c in cells.items()}, slots, out)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={
            "cell": tune.grid_search(payloads),
            "options": {"threads": max(1, int(cpus_per_trial)), "fault_once": fault,
                        "fault_kill": os.environ.get(FAULT_KILL_ENV) == "1"},
        },
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
            trial_name_creator=lambda t: f"{t.config['cell']['grids'][0]}-{t.config['cell']['hash']}",
            trial_dirname_creator=lambda t: f"{CELL_DIR_PREFIX}{t.config['cell']['hash']}",
        ),
        run_config=tune.RunConfig(
            name=f"ablate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" + ("-step2" if phase else ""),
            storage_path=summary.storage,
            verbose=0,
            callbacks=[logger, progress],
            failure_config=tune.FailureConfig(max_failures=max_failures),
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


def _check_fits(nodes: list[dict[str, Any]], cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial must fit on one node, or Tune waits for ever: refuse up front, naming what the nodes have."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    if any(r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial for r in alive):
        return
    have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in alive) or "no live nodes"
    raise LaunchError(f"--cpus-per-trial {cpus_per_trial:g} --gpus-per-trial {gpus_per_trial:g}: no Ray node can "
                      f"hold one trial (nodes: {have}); ask for less, or add bigger nodes")


def _print_header(summary: RunSummary, killed: int, unique: int, out: TextIO) -> None:
    total = summary.total("cells")
    parts = [f"{total} cells in {len(summary.grids)} grid(s)", f"{summary.total('already_done')} done before"]
    if summary.total("adopted"):
        parts.append(f"{summary.total('adopted')} copied from other grids")
    parts.append(f"{unique} to run")
    if summary.total("resumed"):
        parts.append(f"{summary.total('resumed')} resuming from checkpoints")
    if killed:
        parts.append(f"{killed} stale RUNNING run(s) marked KILLED")
    print(f"wmhp ablate ({summary.preset}): " + ", ".join(parts), file=out)
    print(f"  tracking {summary.tracking_uri}  storage {summary.storage}", file=out, flush=True)


def _print_footer(summary: RunSummary, out: TextIO) -> None:
    for g in summary.grids:
        status = f"{g.finished} finished, {g.failed} failed" if g.to_run else "nothing to run"
        print(f"  {g.name:<18} {g.cells:>4} cells: {g.already_done + g.adopted} done before, {status}", file=out)
    print(f"wmhp ablate: {'ok' if summary.ok else f'{summary.failed} cell(s) FAILED'} "
          f"in {format_duration(summary.wall_s)}", file=out, flush=True)
