"""collect from a real `mlflow server` on 127.0.0.1: run data over HTTP, curves.csv downloaded through the
server's artifact proxy, metric history for the runs without one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import collect
from benchmarks import synthetic

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("mlflow server did not become healthy within 60 s")
            time.sleep(0.5)
    yield uri, root
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_collect_from_a_server(server, tmp_path):
    uri, root = server
    # history "final": finished runs hold only their last epoch in the metric history, so complete curves
    # below can only have come from the downloaded curves.csv.
    written = synthetic.write(uri, tmp_path, synthetic.Size(points=1, seeds=1, epochs=3), history="final")
    runs_path, curves_path = collect(tmp_path, uri)
    runs, curves = pd.read_parquet(runs_path), pd.read_parquet(curves_path)
    assert len(runs) == written
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "artifacts").exists()  # all on the server
    finished = runs[runs["status"] == "FINISHED"]
    for row in finished.itertuples(index=False):
        # The server keeps artifacts under <destination>/<experiment id>/<run id>/artifacts/.
        csv = pd.read_csv(root / "artifacts" / row.mlflow_experiment_id / row.run_id / "artifacts" / "curves.csv")
        mine = curves[curves["run_id"] == row.run_id]
        assert len(mine) == len(csv) == 3
        for column in ("epoch", "test_acc", "sign_hash", "flips.fc1"):
            np.testing.assert_array_equal(mine[column].to_numpy(float), csv[column].to_numpy(float))
    killed = runs[runs["status"] == "KILLED"].iloc[0]
    assert 0 < killed["epochs_done"] < killed["epochs"]  # from the metric history over HTTP
    first = [p.read_bytes() for p in (runs_path, curves_path)]
    collect(tmp_path, uri)
    assert [p.read_bytes() for p in (runs_path, curves_path)] == first
