"""Tune callbacks running in the driver: MLflow logging (the one writer) and the compact progress lines."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from ray import tune
from ray.tune.progress_reporter import TrialProgressCallback

from pipeline.cost import format_duration
from pipeline.grids import Cell
from pipeline.tracking import Tracker
from pipeline.writer import TrackingWriter
from pipeline.trial import CHECKPOINT_FILE, RESTORED_KEY, TrialCell, fetch_file


def payload(trial: Any) -> TrialCell:
    return trial.config["cell"]


def cell_hash(trial: Any) -> str:
    return payload(trial)["hash"]


@dataclass
class _TrialLog:
    digest: str
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    reported: bool = False  # the trial reported at least once (so it says which checkpoint it resumed from)


class MlflowLogger(tune.Callback):
    """One MLflow run per (grid, cell) a trial serves; per-epoch metrics as they arrive; the end status.

    Bookkeeping (which epochs are logged, the end status) happens here, in Tune's controller; the MLflow calls
    are queued on the launch's TrackingWriter. ``targets``: hash -> the cells of every grid that needs it
    (several when grids of one launch share a cell); ``experiment_ids``: grid -> MLflow experiment id, filled
    by the writer's set-up before any queued job runs; ``backfill``: hash -> epochs an earlier launch finished
    (the trial resumes after them). Which of them a run gets is decided by the trial's first report
    (``RESTORED_KEY``: the history of the checkpoint it actually loaded, which is older or empty when the newest
    one could not be loaded safely), so that every run holds every epoch of the state it ends with.
    """

    def __init__(
        self,
        writer: TrackingWriter,
        preset: str,
        targets: dict[str, list[Cell]],
        experiment_ids: dict[str, str],
        backfill: dict[str, list[dict[str, float]]],
    ) -> None:
        self.writer = writer
        self.preset = preset
        self.targets = targets
        self.experiment_ids = experiment_ids
        self.backfill = backfill
        self.trials: dict[str, _TrialLog] = {}
        self.status: dict[str, str] = {}  # hash -> FINISHED / FAILED
        self._run_ids: dict[str, list[str]] = {}  # trial id -> run ids; touched by the writer thread only

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_writer()
        if trial.trial_id in self.trials:  # a retry restarts the same trial: same runs
            return
        digest = cell_hash(trial)
        self.trials[trial.trial_id] = _TrialLog(digest)
        self.writer.submit(partial(self._start_runs, trial.trial_id, digest, []))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._check_writer()
        metrics = result.get("wmhp")
        log = self.trials.get(trial.trial_id)
        if metrics is None or log is None:
            return
        epoch = int(metrics["epoch"])
        log.reported = True
        if RESTORED_KEY in result:
            self._backfill(trial.trial_id, log, json.loads(result[RESTORED_KEY]), epoch)
        if epoch in log.history:  # replayed after a retry from an older checkpoint: already logged
            return
        log.history[epoch] = metrics
        self.writer.submit(partial(self._log_epochs, trial.trial_id, [metrics]))

    def _backfill(self, trial_id: str, log: _TrialLog, rows: list[dict[str, float]], before: int) -> None:
        new = [row for row in rows if int(row["epoch"]) < before and int(row["epoch"]) not in log.history]
        log.history.update({int(row["epoch"]): row for row in new})
        if new:
            self.writer.submit(partial(self._log_epochs, trial_id, new))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            error = str(trial.get_error() or "trial failed")
        except Exception:  # noqa: BLE001 - the error text is a courtesy; the status is what matters
            error = "trial failed"
        self._end(trial, error)

    def close_open_runs(self) -> None:
        """Runs of trials Tune never ended (Ctrl-C, a crash in fit) are KILLED now, not at the next launch."""
        for trial_id, log in self.trials.items():
            if log.digest not in self.status:
                history = [log.history[e] for e in sorted(log.history)]
                self.writer.submit(partial(self._kill_runs, trial_id, history))

    def _end(self, trial: Any, error: str | None) -> None:
        log = self.trials.get(trial.trial_id)
        if log is None:
            return
        epochs = payload(trial)["config"]["epochs"]
        if not log.reported and error is None:  # resumed from its last epoch's checkpoint: nothing left to train
            self._backfill(trial.trial_id, log, self.backfill.get(log.digest, []), epochs + 1)
        history = [log.history[e] for e in sorted(log.history)]
        if error is None and sorted(log.history) != list(range(1, epochs + 1)):
            error = f"trial ended after epochs {sorted(log.history)} of {epochs}"
        status = "FINISHED" if error is None else "FAILED"
        # A cell resumed from its last epoch's checkpoint reports nothing new: its state is that checkpoint.
        source = trial.checkpoint if trial.checkpoint is not None else payload(trial)["resume"]
        self.writer.submit(partial(self._end_runs, trial.trial_id, history, status,
                                   source if status == "FINISHED" else None, error))
        self.status[log.digest] = status

    def _check_writer(self) -> None:
        if self.writer.error is not None:  # stop the launch: nothing it does now would be recorded
            raise RuntimeError(f"MLflow writer failed: {self.writer.error!r}")

    # --- run in the writer thread -------------------------------------------------------------------------
    def _start_runs(self, trial_id: str, digest: str, earlier: list[dict[str, float]], tracker: Tracker) -> None:
        cells = self.targets[digest]
        run_ids = [tracker.start_run(self.experiment_ids[cell.grid], cell, self.preset) for cell in cells]
        self._run_ids[trial_id] = run_ids
        if earlier:
            for run_id in run_ids:
                tracker.log_epochs(run_id, earlier)

    def _log_epochs(self, trial_id: str, rows: list[dict[str, float]], tracker: Tracker) -> None:
        for run_id in self._run_ids[trial_id]:
            tracker.log_epochs(run_id, rows)

    def _end_runs(self, trial_id: str, history: list[dict[str, float]], status: str, source: Any,
                  error: str | None, tracker: Tracker) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            state = _local_state_file(source, Path(tmp)) if source is not None else None
            for run_id in self._run_ids[trial_id]:
                tracker.end_run(run_id, history, status, state_file=state, error=error)

    def _kill_runs(self, trial_id: str, history: list[dict[str, float]], tracker: Tracker) -> None:
        for run_id in self._run_ids.get(trial_id, []):
            tracker.end_run(run_id, history, "KILLED", error="the launch stopped before this trial ended")


def _local_state_file(source: Any, scratch: Path) -> Path | None:
    """state.pt of a tune.Checkpoint or of an earlier launch's checkpoint, as a local file."""
    import pyarrow.fs

    if isinstance(source, dict):  # a StoredCheckpoint
        return fetch_file(source["storage"], source["path"], CHECKPOINT_FILE, scratch)
    if isinstance(source.filesystem, pyarrow.fs.LocalFileSystem):
        path = Path(source.path) / CHECKPOINT_FILE
        return path if path.exists() else None
    return fetch_file(source.filesystem, source.path, CHECKPOINT_FILE, scratch)


class Progress(TrialProgressCallback):
    """One line per trial event: what happened, done / running / failed / total, and an ETA.

    The ETA re-scales the cost model by the wall time the epochs done so far actually took, so it adapts to
    the machine and to the concurrency. Being a TrialProgressCallback keeps Tune from adding its own, which
    prints result tables.
    """

    HEARTBEAT_S = 60.0

    def __init__(
        self,
        estimates: dict[str, float],
        epochs: dict[str, int],
        concurrency: int,
        out: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.estimates = estimates  # hash -> estimated seconds of the remaining epochs
        self.epochs = epochs  # hash -> epochs of the config
        self.start_epoch: dict[str, int] = {}
        self.epochs_done: dict[str, int] = {}
        self.concurrency = max(1, concurrency)
        self.out = out or sys.stdout
        self.total = len(estimates)
        self.done = self.failed = 0
        self.running: set[str] = set()
        self.started = time.monotonic()
        self.last_line = self.started

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._line("start", trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = result.get("wmhp")
        if metrics is not None:
            digest = cell_hash(trial)
            epoch = int(metrics["epoch"])
            self.start_epoch.setdefault(digest, epoch - 1)
            self.epochs_done[digest] = epoch

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line("retry", trial, f"failure {trial.num_failures}, resuming from its last checkpoint")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        self.epochs_done[cell_hash(trial)] = self.epochs[cell_hash(trial)]
        acc = (trial.last_result or {}).get("wmhp", {}).get("test_acc")
        self._line("done", trial, f"test_acc {acc:.4f}" if isinstance(acc, float) else "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._line("FAILED", trial, f"after {trial.num_failures} failure(s); see its MLflow run")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.last_line >= self.HEARTBEAT_S:
            self._line("", None)

    def log_result(self, trial: Any, result: dict, error: bool = False) -> None:
        """Tune's per-result table print: replaced by the lines above."""

    def eta_seconds(self) -> float:
        elapsed = time.monotonic() - self.started
        done_cost = remaining = 0.0
        for digest, estimate in self.estimates.items():
            total_epochs = self.epochs[digest]
            start = self.start_epoch.get(digest, 0)
            todo = max(1, total_epochs - start)
            fraction = (self.epochs_done.get(digest, start) - start) / todo
            done_cost += estimate * fraction
            remaining += estimate * (1 - fraction)
        if done_cost <= 0:
            return remaining / self.concurrency
        return elapsed * remaining / done_cost

    def _line(self, event: str, trial: Any, detail: str = "") -> None:
        now = time.monotonic()
        self.last_line = now
        finished = self.done + self.failed
        eta = "0:00" if finished == self.total else format_duration(self.eta_seconds())
        what = f"{event:<6} {trial}" if trial is not None else "…"
        if detail:
            what += f"  {detail}"
        counts = f"{self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed"
        stamp = format_duration(now - self.started)
        print(f"[ablate {stamp:>7}] {what} | {counts} | ETA {eta}", file=self.out, flush=True)
