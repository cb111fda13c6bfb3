"""One writer per tracking store: the launch lease.

Every launch marks the RUNNING runs it finds KILLED (they belong to a dead driver) and runs every unfinished
cell, so two live launches on one store would kill each other's runs and run every cell twice. The results-dir
lock cannot see a second launch with another ``--results-dir`` and the same ``--tracking-uri``, so the lease is
keyed on the store itself:

- an sqlite store: an flock on ``<db>.launch.lock`` beside it (the kernel drops it when the holder dies);
- a tracking server (several hosts): a RUNNING run in the MLflow experiment ``wmhp-launch`` whose tags say the
  holder's host, pid, start time and heartbeat. A lease is stale, and taken over, when its heartbeat is older
  than ``timeout_s`` or its pid is dead on this host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

LEASE_EXPERIMENT = "wmhp-launch"  # not "wmhp/...": collect reads only grid experiments
HEARTBEAT_S = 10.0
TIMEOUT_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live launch writes to this tracking store; the message names it (host, pid, start time)."""


def _holder_text(uri: str, info: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("start", 0))))
    beat = info.get("heartbeat")
    age = f", last heartbeat {time.time() - float(beat):.0f} s ago" if beat else ""
    return (f"another `wmhp ablate` writes to {uri}: host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
            f"started {started}{age}; wait for it to end (or stop it), then launch again")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}


class LaunchLease:
    """Context manager: hold the lease on ``uri`` for the launch, or raise LeaseHeld."""

    def __init__(self, uri: str, timeout_s: float = TIMEOUT_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.uri = uri
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self._handle: Any = None
        self._client: Any = None
        self._run_id: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> LaunchLease:
        if self._handle is not None or self._run_id is not None:  # held already (run_grids takes it early)
            return self
        if self.uri.startswith("sqlite:///"):
            self._lock_file(Path(self.uri[len("sqlite:///"):]))
        elif self.uri.startswith(("http://", "https://")):
            self._lease_run()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self._run_id is not None:
            try:
                self._client.set_terminated(self._run_id, "FINISHED")
            except Exception:  # noqa: BLE001 - a lost lease run goes stale after timeout_s anyway
                pass
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()

    # --- sqlite: a lock file beside the store -------------------------------------------------------------
    def _lock_file(self, db: Path) -> None:
        db.parent.mkdir(parents=True, exist_ok=True)
        handle = (db.parent / f"{db.name}.launch.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                info = json.loads(handle.read() or "{}")
            except ValueError:
                info = {}
            handle.close()
            raise LeaseHeld(_holder_text(self.uri, info)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_me()))
        handle.flush()
        self._handle = handle

    # --- a tracking server: a lease run with heartbeat tags -------------------------------------------------
    def _lease_run(self) -> None:
        from mlflow.tracking import MlflowClient

        client = self._client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(LEASE_EXPERIMENT)
        eid = experiment.experiment_id if experiment else client.create_experiment(LEASE_EXPERIMENT)
        self._refuse_if_live(eid, None)
        me = _me()
        run = client.create_run(eid, run_name=f"launch-{me['host']}-{me['pid']}", tags={
            "wmhp.host": me["host"], "wmhp.pid": str(me["pid"]), "wmhp.start": repr(me["start"]),
            "wmhp.heartbeat": repr(me["start"]),
        })
        self._run_id = run.info.run_id
        try:  # two launches may have got here at once: the older lease wins, the other backs off
            self._refuse_if_live(eid, run)
        except LeaseHeld:
            client.set_terminated(self._run_id, "KILLED")
            self._run_id = None
            raise
        self._beat = threading.Thread(target=self._heartbeat, name="wmhp-lease", daemon=True)
        self._beat.start()

    def _refuse_if_live(self, eid: str, mine: Any) -> None:
        client = self._client
        for run in client.search_runs([eid], "attributes.status = 'RUNNING'"):
            if mine is not None and run.info.run_id == mine.info.run_id:
                continue
            tags = run.data.tags
            info = {"host": tags.get("wmhp.host"), "pid": tags.get("wmhp.pid"),
                    "start": tags.get("wmhp.start", 0), "heartbeat": tags.get("wmhp.heartbeat", 0)}
            if self._stale(info):
                client.set_terminated(run.info.run_id, "KILLED")
                continue
            if mine is None or (run.info.start_time, run.info.run_id) < (mine.info.start_time, mine.info.run_id):
                raise LeaseHeld(_holder_text(self.uri, info))

    def _stale(self, info: dict[str, Any]) -> bool:
        try:
            beat, pid = float(info["heartbeat"]), int(info["pid"])
        except (TypeError, ValueError):
            return True
        if time.time() - beat > self.timeout_s:
            return True
        return info["host"] == socket.gethostname() and not _pid_alive(pid)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._client.set_tag(self._run_id, "wmhp.heartbeat", repr(time.time()))
            except Exception:  # noqa: BLE001 - the server may be back at the next beat
                pass
