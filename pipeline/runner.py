"""``run_grids``: validate grids, read what is stored, plan (pipeline.plan), then carry the plan out.

Order of work, so that bad input writes nothing: options (LaunchOptions) and every grid are validated and
expanded first; only then the results dir, the launch lock, MLflow experiments (created up front) and Ray. All
MLflow writes go through one writer thread (pipeline.writer); on a first launch it creates the store while Ray
starts. What to do with each cell is decided by ``pipeline.plan.classify`` from the FINISHED runs of every
``wmhp/*`` experiment and the checkpoints in Tune storage, the same for ``--dry-run`` and the launch: done,
adopted (copied from another grid's experiment, not run), run once for every grid of the launch that has it,
or resumed from the newest checkpoint an earlier launch left.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO, TypeVar

from bnn.config import config_hash, step1_config
from pipeline.cost import format_duration
from pipeline.grids import Cell, Grid, GridError, load_cells
from pipeline.isolation import isolate_local_ray
from pipeline.launch import RunSummary, connect_ray, execute
from pipeline.lease import LaunchLease, LeaseHeld
from pipeline.options import LaunchError, LaunchOptions
from pipeline.plan import GridSummary, Plan, classify, pending, print_table
from pipeline.search import parse_search
from pipeline.search_run import finished_tpe, tpe_jobs
from pipeline.tracking import Tracker, create_sqlite_store, sqlite_path, unusable_sqlite_store
from pipeline.trial import find_resumable
from pipeline.writer import TrackingWriter
from wmhp.contract import default_tracking_uri

__all__ = ["GridSummary", "LaunchError", "LaunchOptions", "RunSummary", "run_grids"]

# Ray/Tune behaviour the pipeline relies on; set before Ray is imported (stack.md).
_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the old reporter honours verbose=0; the new one prints tables regardless
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial json/csv/tensorboard files: MLflow has it all
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # checkpointing every epoch is intended
    # Tune's experiment snapshot (every 10 s) serves Tuner.restore, which wmhp never uses (it resumes from MLflow and
    # the cells' checkpoints): ~3 s of driver CPU per 24-trial launch, profiled 2026-11-30.
    "TUNE_GLOBAL_CHECKPOINT_S": "86400",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "1",
    # Read at a process's first cuBLAS call, so it must be in the workers' environment from the start for
    # TrainConfig.deterministic; harmless otherwise (a fixed 8 x 4 MiB cuBLAS workspace).
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
LOCK_FILE = ".ablate.lock"
Loaded = list[tuple[Grid, list[Cell]]]
T = TypeVar("T")


def run_grids(
    grids: list[str] | None,
    preset: str,
    results_dir: Path,
    options: LaunchOptions | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> RunSummary:
    """Run every unfinished cell of ``grids`` (names, paths, or None for all) at ``preset``.

    Raises GridError (bad grid file or option: nothing written) or LaunchError; trial failures are counted
    in the returned summary (``summary.ok``), not raised.
    """
    started = time.perf_counter()
    out = out or sys.stdout
    options = options or LaunchOptions()
    loaded = load_cells(grids, preset, overrides)
    results_dir = Path(results_dir).resolve()
    if results_dir.exists() and not results_dir.is_dir():
        raise GridError(f"--results-dir {results_dir}: is a file, not a directory; give a directory")
    if not dry_run:
        _probe_address(options.address)
    uri = options.tracking_uri or default_tracking_uri(results_dir)
    summary = RunSummary(preset, results_dir, uri, options.storage or str(results_dir / "ray"), dry_run)
    _probe_server(uri)
    db = sqlite_path(uri)
    problem = unusable_sqlite_store(db) if db is not None else None
    if problem:
        raise LaunchError(f"--tracking-uri {uri}: {problem}; move the file aside or give another --results-dir")
    if dry_run:
        finished: dict[str, Any] = {}
        done_tpe: dict[Any, Any] = {}
        if db is None or (db.exists() and db.stat().st_size > 0):  # MLflow would write a schema into an empty file
            tracker = _connected(lambda: Tracker(uri, results_dir), summary)
            finished, done_tpe = _connected(lambda: _read_stored(tracker, loaded, preset), summary)
        plan = _plan(loaded, finished, done_tpe, summary, overrides, options)
        _print_dry_run(plan, summary, options, out)
        _print_two_step(loaded, finished, out)
        summary.wall_s = time.perf_counter() - started
        return summary

    isolate_local_ray(options.address, uri, summary.storage)  # before any thread: Ray on loopback only
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
        _launch(loaded, summary, overrides, options, out)
    summary.wall_s = time.perf_counter() - started
    _print_footer(summary, out)
    return summary


def _launch(loaded: Loaded, summary: RunSummary, overrides: dict[str, Any] | None, options: LaunchOptions,
            out: TextIO) -> None:
    """Under the lock and lease: read the store, plan, set up experiments and adoptions, run the trials."""
    uri, results_dir = summary.tracking_uri, summary.results_dir
    db = sqlite_path(uri)
    experiment_ids: dict[str, str] = {}
    killed = 0
    start = time.perf_counter()
    if db is not None and not db.exists():
        # A first launch: nothing can be finished in a store that does not exist yet. The writer thread
        # creates it (and the experiments) while Ray starts and the first trials import torch.
        plan = _plan(loaded, {}, {}, summary, overrides, options)

        def first(tracker: Tracker) -> None:
            for grid in [g.name for g in plan.grids if g.to_run]:
                experiment_ids[grid] = tracker.ensure_experiment(grid)

        writer = TrackingWriter(lambda: _new_store_tracker(db, uri, results_dir), first=first)
    else:
        tracker = _connected(lambda: Tracker(uri, results_dir), summary)
        finished, done_tpe = _connected(lambda: _read_stored(tracker, loaded, summary.preset), summary)
        plan = _plan(loaded, finished, done_tpe, summary, overrides, options)
        killed = _connected(lambda: _set_up(tracker, plan, experiment_ids, summary.preset), summary)
        summary.timings["setup_s"] = time.perf_counter() - start
        writer = TrackingWriter(lambda: tracker)
    _print_header(summary, plan, killed, out)
    started_ray = False
    failure: Exception | None = None
    try:
        if plan.trials:
            started_ray = connect_ray(options, summary)
            execute(plan, experiment_ids, writer, summary, options, out)
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


def _set_up(tracker: Tracker, plan: Plan, experiment_ids: dict[str, str], preset: str) -> int:
    """Every grid's experiment, stale runs KILLED (the lock and lease make them stale), adoptions copied; returns
    how many runs were marked KILLED."""
    experiment_ids.update({g.name: tracker.ensure_experiment(g.name) for g in plan.grids})
    killed = sum(tracker.mark_stale_running(eid) for eid in experiment_ids.values())
    for source, cell in plan.adopt:
        tracker.adopt(source, experiment_ids[cell.grid], cell, preset)
    return killed


def _read_stored(tracker: Tracker, loaded: Loaded, preset: str) -> tuple[dict[str, Any], dict[Any, Any]]:
    """What the store holds for this launch: FINISHED runs by config hash, and finished TPE trials."""
    finished = tracker.finished_by_hash()
    ids = {grid: eid for eid, grid in tracker.wmhp_experiments().items()}
    metrics = {grid.name: parse_search(grid, preset).metric for grid, _ in loaded if grid.search is not None}
    return finished, finished_tpe(tracker, ids, metrics)


def _plan(loaded: Loaded, finished: dict[str, Any], done_tpe: dict[Any, Any], summary: RunSummary,
          overrides: dict[str, Any] | None, options: LaunchOptions) -> Plan:
    """classify() over what is stored, with the checkpoints Tune storage holds for the unfinished cells."""
    resumable = find_resumable(summary.storage, pending(loaded, finished))
    searches = [job for grid, _ in loaded if grid.search is not None
                for job in tpe_jobs(grid, summary.preset, overrides, done_tpe)]
    plan = classify(loaded, finished, resumable, searches, options.gpu)
    summary.grids = plan.grids
    return plan


def _new_store_tracker(db: Path, uri: str, results_dir: Path) -> Tracker:
    create_sqlite_store(db)
    return Tracker(uri, results_dir)


def _connected(step: Callable[[], T], summary: RunSummary) -> T:
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


def _probe_address(address: str | None) -> None:
    """A head that does not answer makes ray.init retry for many minutes: fail fast instead."""
    if address in (None, "auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")  # the form is checked by LaunchOptions
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


# --- printing ------------------------------------------------------------------------------------------------
def _print_dry_run(plan: Plan, summary: RunSummary, options: LaunchOptions, out: TextIO) -> None:
    print(f"wmhp ablate --dry-run: preset {summary.preset}, tracking {summary.tracking_uri}", file=out)
    print_table(plan.grids, out)
    slots = options.max_concurrent
    if options.address is None and not options.gpu:
        slots = options.concurrency(options.local_cpus)
    total_s = sum(g.estimate_s for g in plan.grids)
    wall = f"about {format_duration(total_s / slots)} wall at {slots} concurrent trials" if slots else \
        "wall time depends on the cluster's size (give --max-concurrent for an estimate)"
    device = "GPU" if options.gpu else "CPU thread"
    print(f"estimate (rough cost model, one {device} per trial): {wall}", file=out)


def _print_two_step(loaded: Loaded, finished: dict[str, Any], out: TextIO) -> None:
    """The two-step cells in launch order: every step 1 (phase 1) before the step 2 that starts from it."""
    cells = {c.hash: c for _, grid_cells in loaded for c in grid_cells if c.config.stage != "single"}
    if not cells:
        return
    print("two-step cells, in launch order (phase 2 starts from phase 1's finished checkpoints):", file=out)
    for phase, stage in ((1, "step1"), (2, "step2")):
        for cell in (c for c in cells.values() if c.config.stage == stage):
            line = f"  phase {phase}  {stage}  {'done' if cell.hash in finished else 'to run':<6}  {cell.run_name}"
            if stage == "step2":
                step1 = config_hash(step1_config(cell.config))
                line += f"  (from {cells[step1].run_name if step1 in cells else step1})"
            print(line, file=out)


def _print_header(summary: RunSummary, plan: Plan, killed: int, out: TextIO) -> None:
    total = summary.total("cells")
    parts = [f"{total} cells in {len(summary.grids)} grid(s)", f"{summary.total('already_done')} done before"]
    if summary.total("adopted"):
        parts.append(f"{summary.total('adopted')} copied from other grids")
    parts.append(f"{plan.trials} trial(s) to run")
    if summary.total("resumed"):
        parts.append(f"{summary.total('resumed')} resuming from checkpoints")
    if killed:
        parts.append(f"{killed} stale RUNNING run(s) marked KILLED")
    print(f"wmhp ablate ({summary.preset}): " + ", ".join(parts), file=out)
    print(f"  tracking {summary.tracking_uri}  storage {summary.storage}", file=out)
    print_table(summary.grids, out)


def _print_footer(summary: RunSummary, out: TextIO) -> None:
    for g in summary.grids:
        status = f"{g.finished} finished, {g.failed} failed" if g.to_run else "nothing to run"
        print(f"  {g.name:<18} {g.cells:>4} cells: {g.already_done + g.adopted} done before, {status}", file=out)
    print(f"wmhp ablate: {'ok' if summary.ok else f'{summary.failed} cell(s) FAILED'} "
          f"in {format_duration(summary.wall_s)}", file=out, flush=True)
