"""`wmhp ablate` killed with SIGKILL mid-grid, then the same command again: every cell finished exactly once."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from pipeline.grids import expand, load_grid

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow


def ablate(grid: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "wmhp.cli", "ablate", str(grid), "--preset", "smoke", "--results-dir", str(results)]


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return members


def stop_leftovers(pgid: int) -> None:
    """Ray helper processes of the killed driver's session (all in the process group we started) are ended."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in group_members(pgid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)


def finished_runs(results: Path, driver_alive: bool = True, experiment_name: str = "wmhp/killme") -> list:
    """FINISHED runs of the test grid's MLflow experiment.

    While the driver lives, a read-only probe comes first: a client opening a half-created store would run schema
    migrations concurrently. Once the driver is SIGKILLed mid-transaction it may leave a hot journal, which only a
    read-write connection can roll back (read-only gets "attempt to write a readonly database"), so afterwards the
    client opens the store directly.
    """
    db = results / "mlflow.db"
    if driver_alive:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
                query = "SELECT 1 FROM experiments WHERE name = ?"
                if not connection.execute(query, (experiment_name,)).fetchall():
                    return []
        except sqlite3.Error:
            return []
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")


def kill_driver_after(command: list[str], marker: str, ready: Callable[[], bool],
                      env: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Start the ``wmhp ablate`` driver, wait for an output line containing ``marker`` and then for ``ready()``,
    SIGKILL it and end its leftover Ray processes; return the lines it printed and its process group."""
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in driver.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            if marker in seen[-1]:
                break
        while time.monotonic() < deadline and not ready():
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        time.sleep(1)
        stop_leftovers(driver.pid)
    return seen, driver.pid


def test_sigkill_mid_grid_then_rerun_finishes_every_cell_exactly_once(tmp_path: Path) -> None:
    grid = tmp_path / "killme.yaml"
    grid.write_text(textwrap.dedent("""\
        name: killme
        experiment: e0
        base: {epochs: 20, binary_opt: {name: filter, gamma: 0.1}}
        axes:
          binary_opt.alpha: [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1, 1.0]
        presets: {smoke: {}}
        """))
    hashes = {c.hash for c in expand(load_grid(grid), "smoke")}
    results = tmp_path / "results"
    # The first cell is done and recorded: kill the driver.
    seen, pgid = kill_driver_after(ablate(grid, results), "] done", lambda: bool(finished_runs(results)))
    assert any("] done" in line for line in seen), "".join(seen)

    before = {r.data.tags["wmhp.config_hash"]: r.info.run_id
              for r in finished_runs(results, driver_alive=False)}
    assert 1 <= len(before) < len(hashes)

    try:
        rerun = subprocess.run(ablate(grid, results), capture_output=True, text=True, timeout=600)
    finally:
        stop_leftovers(pgid)  # agents of the killed session may outlive the first sweep
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(before)} done before" in rerun.stdout

    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wmhp/killme").experiment_id])
    finished = Counter(r.data.tags["wmhp.config_hash"] for r in runs if r.info.status == "FINISHED")
    assert finished == Counter({h: 1 for h in hashes})  # every cell, exactly once
    for digest, run_id in before.items():  # finished before the kill: kept, not run again
        assert [r.info.run_id for r in runs if r.data.tags["wmhp.config_hash"] == digest] == [run_id]
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    for run in runs:
        if run.info.status == "FINISHED":
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
            assert sorted(steps) == list(range(1, 21))


# --- the rest of the fault matrix (issue 12), on one tiny grid ------------------------------------------------
TINY_GRID = """\
name: killme
experiment: e0
base: {epochs: 2, model.hidden: [16, 16], binary_opt: {name: filter, gamma: 0.1}}
axes:
  binary_opt.alpha: [1.0e-3, 1.0e-2, 1.0e-1]
presets: {smoke: {}}
"""


def finished_exactly_once(grid: Path, results: Path, epochs: int) -> None:
    hashes = {c.hash for c in expand(load_grid(grid), "smoke")}
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wmhp/killme").experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert Counter(r.data.tags["wmhp.config_hash"] for r in finished) == Counter({h: 1 for h in hashes})
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
        assert sorted(steps) == list(range(1, epochs + 1))


def test_sigkill_before_the_first_trial_then_rerun(tmp_path: Path) -> None:
    grid, results = tmp_path / "killme.yaml", tmp_path / "results"
    grid.write_text(TINY_GRID)
    driver = subprocess.Popen(ablate(grid, results), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        for line in driver.stdout:  # the header: store and experiments are set up, Ray is starting
            if "to run" in line:
                driver.send_signal(signal.SIGKILL)
                break
        driver.wait(timeout=60)
    finally:
        time.sleep(1)
        stop_leftovers(driver.pid)
    assert driver.returncode == -signal.SIGKILL
    rerun = subprocess.run(ablate(grid, results), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    finished_exactly_once(grid, results, 2)


def test_a_sigkilled_trial_worker_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    grid, results, markers = tmp_path / "killme.yaml", tmp_path / "results", tmp_path / "faults"
    grid.write_text(TINY_GRID)
    env = {**os.environ, "WMHP_FAULT_ONCE": f"{markers}:1", "WMHP_FAULT_KILL": "1"}
    done = subprocess.run(ablate(grid, results), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list(markers.glob("*.fault"))) == 3  # every trial's worker was killed once, after epoch 1
    finished_exactly_once(grid, results, 2)
