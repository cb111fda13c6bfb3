"""The one MLflow writer of a launch: a thread applying queued calls in order.

Tune's controller runs callbacks on its event loop, and a trial waits for the controller before it continues
after each report. Logging there would make every trial wait on the tracking store (a sqlite commit, or an HTTP
round trip to a server on a cluster), so callbacks only queue work here: 42 s of writing (wall) in a 24-trial e6
launch at 2 epochs on 2 loaded cores (2026-11-30) that trials would otherwise wait through. On a first launch the
store itself is created by this thread while Ray starts.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from pipeline.tracking import Tracker

Job = Callable[[Tracker], None]


class TrackingWriter:
    def __init__(self, connect: Callable[[], Tracker], first: Job | None = None) -> None:
        """``connect`` makes the Tracker (in the writer thread); ``first`` runs before any queued job."""
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._connect = connect
        self._first = first
        self.tracker: Tracker | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0  # time spent writing, for the benchmark
        self.setup_s = 0.0  # of which connecting and ``first``
        self._thread = threading.Thread(target=self._work, name="wmhp-mlflow-writer", daemon=True)
        self._thread.start()

    def __reduce__(self) -> tuple:
        # Tune pickles callbacks into its experiment snapshot; wmhp never restores one (it dedups through
        # MLflow instead), so a snapshot holds an inert stand-in rather than the thread and its queue.
        return (_detached, ())

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def _work(self) -> None:
        start = time.perf_counter()
        try:
            self.tracker = self._connect()
            if self._first is not None:
                self._first(self.tracker)
        except BaseException as exc:  # noqa: BLE001 - reported by close(), in the driver's thread
            self.error = exc
        self.setup_s = self.seconds = time.perf_counter() - start
        while (job := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain: later jobs depend on earlier ones
            start = time.perf_counter()
            try:
                job(self.tracker)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc
            self.seconds += time.perf_counter() - start

    def close(self) -> BaseException | None:
        """Wait until every queued job is written; the first error, if any (later jobs were skipped)."""
        self._queue.put(None)
        self._thread.join()
        return self.error


def _detached() -> None:
    return None
