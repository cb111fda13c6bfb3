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


def finished_exactly_once(grid: Path, results: Path, epochs: int, uri: str | None = None) -> None:
    hashes = {c.hash for c in expand(load_grid(grid), "smoke")}
    client = mlflow.MlflowClient(uri or f"sqlite:///{results / 'mlflow.db'}")
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


# --- the driver killed while results are logged; local Ray on loopback only ---------------------------------
def host_listeners(pgid: int) -> list[tuple[str, str]]:
    """(process name, local address) of every TCP socket listening in this test's network namespace (the
    host's) that a process of group ``pgid`` owns: what `ss -ltnp` shows of the launch."""
    owners: dict[str, str] = {}
    for pid in group_members(pgid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = name
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                found.append((owners[fields[9]], fields[1].split(":")[0]))
    return found


LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def ray_processes(pgid: int) -> set[str]:
    names = set()
    for pid in group_members(pgid):
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass
    return names


def run_watching(command: list[str], env: dict[str, str], probe: Callable[[int], object],
                 marker: str = "] start") -> tuple[subprocess.Popen, str, object]:
    """Run the driver to its end; ``probe(pgid)`` runs once, when a line with ``marker`` appears (Ray is up)."""
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True)
    seen: list[str] = []
    probed: list[object] = []
    try:
        for line in driver.stdout:
            seen.append(line)
            if not probed and marker in line:
                probed.append(probe(driver.pid))
        driver.wait(timeout=300)
    finally:
        time.sleep(1)
        stop_leftovers(driver.pid)
    return driver, "".join(seen), probed[0] if probed else None


def test_driver_killed_while_logging_then_rerun_and_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    """SIGKILL between a run's logged results and its FINISHED status (the second run to end: one cell is
    FINISHED before). That launch runs Ray in a private network namespace: no Ray port in the host's. The
    rerun opts out (WMHP_RAY_NETNS=0): Ray's wildcard ports show, and it completes the grid."""
    grid, results = tmp_path / "killme.yaml", tmp_path / "results"
    grid.write_text(TINY_GRID)

    def during_isolated(pgid: int) -> tuple[set[str], list]:
        return ray_processes(pgid), host_listeners(pgid)

    env = {**os.environ, "WMHP_FAULT_DRIVER": "end_run:2"}
    env.pop("WMHP_RAY_NETNS", None)
    driver, output, (names, listeners) = run_watching(ablate(grid, results), env, during_isolated)
    assert driver.returncode == -signal.SIGKILL, output
    assert {"gcs_server", "raylet"} <= names, names  # Ray was up when the launch was probed
    assert listeners == [], listeners  # ss in the host namespace shows none of the launch's ports
    assert "listen on all network interfaces" not in output
    before = {r.data.tags["wmhp.config_hash"]: r.info.run_id for r in finished_runs(results, driver_alive=False)}
    assert len(before) == 1  # the first run to end is FINISHED, the second was cut before its status

    env["WMHP_RAY_NETNS"] = "0"
    del env["WMHP_FAULT_DRIVER"]
    rerun, output, listeners = run_watching(ablate(grid, results), env, host_listeners)
    assert rerun.returncode == 0, output
    assert "local Ray will listen on all network interfaces: WMHP_RAY_NETNS=0" in output
    wide = [(name, address) for name, address in listeners if address not in LOOPBACK_HEX]
    assert any(name == "gcs_server" for name, _ in wide), listeners  # the probe sees Ray's wildcard ports
    finished_exactly_once(grid, results, 2)
    for digest, run_id in before.items():  # finished before the kill: kept, not run again
        assert [r.info.run_id for r in finished_runs(results, driver_alive=False)
                if r.data.tags["wmhp.config_hash"] == digest] == [run_id]


# --- the MLflow server killed and restarted mid-grid ---------------------------------------------------------
TWO_CELLS = TINY_GRID.replace("[1.0e-3, 1.0e-2, 1.0e-1]", "[1.0e-3, 1.0e-2]")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group (no graceful shutdown) and wait until they are gone."""
    deadline = time.monotonic() + 30
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def start_server(store: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over ``store`` (sqlite + artifacts), healthy when this returns."""
    import urllib.request

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
               f"sqlite:///{store / 'server.db'}", "--artifacts-destination", str(store / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                kill_group(server.pid)
                raise AssertionError("mlflow server did not start") from None
            time.sleep(0.3)


def finished_in_server_store(db: Path) -> dict[str, str]:
    """config hash -> run id of the FINISHED grid runs, read from the server's sqlite file itself."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            rows = connection.execute(
                "SELECT t.value, r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "AND t.key = 'wmhp.config_hash' WHERE r.status = 'FINISHED'").fetchall()
    except sqlite3.Error:  # not created yet, or busy
        return {}
    return dict(rows)


def test_mlflow_server_killed_and_restarted_mid_grid_then_rerun(tmp_path: Path) -> None:
    """Two cells one after the other; the server is SIGKILLed once the first is FINISHED (the second is
    training) and restarted on the same port and store. The launch rides it out through MLflow's retries,
    or fails with one error line; either way a rerun ends with each cell FINISHED once, the first one kept."""
    grid, results, store = tmp_path / "killme.yaml", tmp_path / "results", tmp_path / "store"
    grid.write_text(TWO_CELLS)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    servers = [start_server(store, port)]
    command = ablate(grid, results) + ["--tracking-uri", uri, "--max-concurrent", "1"]

    def kill_and_restart_server(pgid: int) -> dict[str, str]:
        deadline = time.monotonic() + 120
        while not finished_in_server_store(store / "server.db") and time.monotonic() < deadline:
            time.sleep(0.1)
        kill_group(servers[-1].pid)
        finished = finished_in_server_store(store / "server.db")  # what the server had when it died
        servers.append(start_server(store, port))
        return finished

    try:
        launch, output, before = run_watching(command, dict(os.environ), kill_and_restart_server, marker="] done")
        assert len(before) == 1, output  # killed mid-grid: one cell FINISHED, the other not yet
        assert "local Ray will listen on all network interfaces: --tracking-uri" in output  # no namespace
        # Either the launch rode the outage out, or it failed cleanly: one error line, no traceback.
        assert launch.returncode in (0, 1), output
        assert "Traceback" not in output, output
        if launch.returncode == 1:
            assert output.rstrip().splitlines()[-1].startswith("wmhp ablate: error: --tracking-uri"), output
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        finished_exactly_once(grid, results, 2, uri)
        for digest, run_id in before.items():  # finished before the kill: kept, not run again
            assert finished_in_server_store(store / "server.db")[digest] == run_id
    finally:
        for server in servers:
            kill_group(server.pid)
