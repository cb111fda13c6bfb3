"""The GPU cluster: ray_cluster.yaml against Ray's own schema, and the scripts it runs on its nodes
(pipeline/cluster/*.sh) run here for real: a Ray head and an MLflow server on 127.0.0.1, a second Ray node,
and a smoke grid through `wmhp ablate` on both nodes.

Every Ray / MLflow process these tests start lives in a session of its own and is stopped by id (stop.sh, then
a check here), never with `ray stop`, which would end every Ray cluster on the machine. Each cluster uses its
own ports, Ray temp dir and auth token file, so that tests of other modules can run Ray at the same time.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
SCRIPTS = REPO / "pipeline" / "cluster"
VENV_BIN = Path(sys.executable).parent


# --- ray_cluster.yaml ---------------------------------------------------------------------------------------
def load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate_with_ray(config: dict) -> None:
    """What `ray up` checks before it touches AWS (offline: nothing inside provider/node_config is checked)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_ray_schema_validation() -> None:
    validate_with_ray(load_cluster_yaml())


MISSPELLINGS = [
    (("idle_timeout_minutes",), "idle_timeout_minute"),
    (("head_start_ray_commands",), "head_start_ray_command"),
    (("available_node_types", "worker.gpu", "min_workers"), "min_worker"),
    (("available_node_types", "head.cpu", "node_config"), "node_confg"),
    (("provider", "security_group", "IpPermissions"), "IpPermision"),
]


@pytest.mark.parametrize(("path", "misspelled"), MISSPELLINGS, ids=[m for _, m in MISSPELLINGS])
def test_cluster_yaml_with_a_misspelled_key_fails_ray_schema_validation(path: tuple[str, ...], misspelled: str) -> None:
    import jsonschema

    config = load_cluster_yaml()
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[misspelled] = parent.pop(path[-1])
    with pytest.raises(jsonschema.ValidationError, match=misspelled):
        validate_with_ray(config)


def test_cluster_yaml_opens_no_port_beyond_ssh() -> None:
    """Ray's own security group rules allow SSH from anywhere and all traffic inside the cluster; any extra
    rule in the YAML must not open another port to an address range."""
    config = load_cluster_yaml()
    rules = config["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), f"rule opens more than SSH: {rule}"
    for node_type in config["available_node_types"].values():
        # Own security groups would bypass the rules above.
        assert "SecurityGroupIds" not in node_type["node_config"]
    assert config["provider"].get("use_internal_ips", False) is False  # SSH from outside needs the public IP


def test_cluster_yaml_starts_nodes_with_the_scripts_the_tests_run() -> None:
    config = load_cluster_yaml()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "pipeline/cluster/start_head.sh" in head and "pipeline/cluster/stop.sh" in head
    assert "pipeline/cluster/start_worker.sh" in worker and "pipeline/cluster/stop.sh" in worker
    assert "ray start" not in head + worker  # only through the scripts
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    words = [word for command in commands for word in command.split()]
    scripts = {word.split("pipeline/cluster/")[1] for word in words if "pipeline/cluster/" in word}
    assert scripts == {"node_setup.sh", "start_head.sh", "start_worker.sh", "stop.sh"}
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_cluster_yaml_names_the_shared_storage_once_and_copies_the_auth_token() -> None:
    text = CLUSTER_YAML.read_text()
    config = load_cluster_yaml()
    setup = " ".join(config["setup_commands"])
    [shared_fs] = [w.split("=", 1)[1] for w in setup.split() if w.startswith("WMHP_SHARED_FS=")]
    assert text.count(shared_fs) == 1
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # ray get-auth-token --generate
    assert config["file_mounts"]["~/wmhp"] == "."


def test_node_setup_rejects_a_malformed_shared_fs_before_touching_the_node() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "node_setup.sh")],
        env={**os.environ, "WMHP_SHARED_FS": "my-bucket"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "WMHP_SHARED_FS" in result.stderr and "my-bucket" in result.stderr


# --- the head / worker / stop scripts on this machine -------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
    rows = (line.split() for line in out.splitlines())
    return [int(pid) for pid, s, stat in rows if int(s) == sid and not stat.startswith("Z")]


@dataclass
class LocalCluster:
    """One head (and optionally a worker) started by the repository's scripts, with its own everything."""

    root: Path
    ray_port: int = field(default_factory=free_port)
    mlflow_port: int = field(default_factory=free_port)
    sids: set[int] = field(default_factory=set)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "WMHP_"))}
        env.update(
            PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.root / "auth_token"),
            RAY_USAGE_STATS_ENABLED="0",
            WMHP_CLUSTER_DIR=str(self.state_dir),
            WMHP_RAY_TEMP_DIR=str(self.root / "ray"),
            WMHP_OBJECT_STORE_BYTES=str(150 * 2**20),
            WMHP_NUM_CPUS="1",
            WMHP_STOP_GRACE_S="10",
        )
        env.update(extra)
        return env

    def script(self, name: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(SCRIPTS / name)], env=self.env(**extra), capture_output=True, text=True, timeout=timeout
        )
        self.sids |= {int(f.read_text()) for f in self.state_dir.glob("*.sid")}
        return result

    def running(self, service: str) -> bool:
        sid_file = self.state_dir / f"{service}.sid"
        return sid_file.exists() and session_pids(int(sid_file.read_text())) != []

    def ensure_head(self) -> None:
        """Start the head unless it runs already (tests share one; any of them may run first, or alone)."""
        if self.running("ray-head") and self.running("mlflow"):
            return
        result = self.script(
            "start_head.sh",
            WMHP_HEAD_HOST="127.0.0.1",
            WMHP_RAY_PORT=str(self.ray_port),
            WMHP_MLFLOW_PORT=str(self.mlflow_port),
            WMHP_RESULTS_DIR=str(self.results_dir),
            WMHP_DASHBOARD="false",
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def ensure_worker(self, node_host: str) -> None:
        self.ensure_head()
        if self.running("ray-worker"):
            return
        result = self.script("start_worker.sh", WMHP_HEAD_ADDRESS=self.ray_address, WMHP_NODE_HOST=node_host)
        assert result.returncode == 0, result.stdout + result.stderr

    def python(self, code: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        """A separate Ray client: the token settings stay out of the test process (Ray caches them)."""
        return subprocess.run(
            [sys.executable, "-c", code], env=self.env(**extra), capture_output=True, text=True, timeout=timeout
        )

    def nodes(self) -> list[dict]:
        code = (
            "import json, ray\n"
            f"ray.init(address={self.ray_address!r}, log_to_driver=False)\n"
            "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], 'alive': n['Alive'],"
            " 'cpus': n['Resources'].get('CPU', 0)} for n in ray.nodes()]))\n"
        )
        result = self.python(code)
        assert result.returncode == 0, result.stderr
        return [n for n in json.loads(result.stdout.strip().splitlines()[-1]) if n["alive"]]

    def leftover_pids(self) -> list[int]:
        return [pid for sid in self.sids for pid in session_pids(sid)]

    def teardown(self) -> None:
        """stop.sh, then SIGKILL by id whatever it left (only processes of the sessions this cluster started)."""
        try:
            self.script("stop.sh", timeout=90)
        finally:
            for pid in self.leftover_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.root, ignore_errors=True)


def new_cluster() -> LocalCluster:
    # Short and outside pytest's tmp_path: Ray's socket paths must stay under 108 characters.
    root = Path(tempfile.mkdtemp(prefix="wmhp-cl-", dir="/tmp"))
    (root / "auth_token").write_text(os.urandom(16).hex())
    return LocalCluster(root)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One head for the module (a start costs 10-20 s); each test brings up what it needs."""
    local = new_cluster()
    try:
        yield local
    finally:
        local.teardown()


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    local = new_cluster()
    try:
        yield local
    finally:
        local.teardown()


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def refuses_connections(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


def non_loopback_address() -> str | None:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next((a for a in out if not a.startswith("127.") and ":" not in a), None)


def trial_node_ips(storage: Path) -> dict[str, str]:
    """Trial id -> the node_ip Tune recorded with the trial's last result (read from the experiment state)."""
    from ray.tune import ExperimentAnalysis

    # The pipeline turns Tune's result.json files off; the experiment state still holds every last result.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    [experiment] = [p for p in storage.iterdir() if p.is_dir()]
    results = ExperimentAnalysis(str(experiment)).results
    return {trial_id: result["node_ip"] for trial_id, result in results.items()}


@pytest.mark.slow
def test_head_script_brings_up_ray_and_a_healthy_mlflow_server(cluster: LocalCluster) -> None:
    cluster.ensure_head()
    assert (cluster.state_dir / "tracking_uri").read_text().strip() == cluster.tracking_uri
    assert (cluster.state_dir / "ray_address").read_text().strip() == cluster.ray_address
    assert http_get(f"{cluster.tracking_uri}/health") == "OK"
    # Bound to the address it was given only (on the cluster: the head's private address).
    other = non_loopback_address()
    if other is not None:
        assert refuses_connections(other, cluster.mlflow_port)

    # A real round trip through the server; artifacts are proxied into <results>/artifacts.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cluster.tracking_uri)
    experiment_id = client.create_experiment("wmhp/cluster-check")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "test_acc", 0.5, step=1)
    note = cluster.root / "note.txt"
    note.write_text("through the server")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"test_acc": 0.5}
    [stored] = cluster.results_dir.glob("artifacts/**/note.txt")
    assert stored.read_text() == "through the server"
    assert (cluster.results_dir / "mlflow.db").is_file()

    nodes = cluster.nodes()  # with the token: connects
    assert nodes and all(node["cpus"] == 1 for node in nodes)
    # Token authentication is on: a client without the token is turned away (two connection attempts
    # instead of Ray's default twenty).
    refused = cluster.python(
        f"import ray; ray.init(address={cluster.ray_address!r})",
        RAY_AUTH_MODE="disabled",
        RAY_gcs_server_port_wait_time_s="2",
    )
    assert refused.returncode != 0 and "Failed to connect" in refused.stderr


@pytest.mark.slow
def test_two_node_cluster_runs_a_smoke_grid_on_both_nodes_logging_to_the_mlflow_server(
    cluster: LocalCluster,
) -> None:
    """As on AWS: the head script, a second node by the worker script, `wmhp ablate --address` against them,
    tracking through the head's MLflow server, Tune storage on a directory both nodes share."""
    from mlflow.tracking import MlflowClient

    from pipeline.grids import load_cells

    [(grid, cells)] = load_cells(["e1"], "smoke")
    assert len(cells) >= 4
    # A second raylet on this machine; its own loopback address tells its trials apart from the head's.
    cluster.ensure_worker(node_host="127.0.0.2")
    nodes = cluster.nodes()
    assert len(nodes) == 2 and [n["cpus"] for n in nodes] == [1, 1]

    driver_results = cluster.root / "driver"
    storage = cluster.root / "shared" / "ray"
    launched = subprocess.run(
        [str(VENV_BIN / "wmhp"), "ablate", "e1", "--preset", "smoke", "--address", cluster.ray_address,
         "--tracking-uri", cluster.tracking_uri, "--results-dir", str(driver_results), "--storage", str(storage)],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

    # Trials landed on both nodes (each node has 1 CPU, each trial takes 1).
    node_ips = trial_node_ips(storage)
    assert len(node_ips) == len(cells)
    assert set(node_ips.values()) == {n["ip"] for n in nodes}

    # Logged to the head's server: one FINISHED run per cell, artifacts uploaded through the server.
    client = MlflowClient(tracking_uri=cluster.tracking_uri)
    experiment = client.get_experiment_by_name(f"wmhp/{grid.name}")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(r.data.tags["wmhp.config_hash"] for r in runs) == sorted(c.hash for c in cells)
    assert {r.info.status for r in runs} == {"FINISHED"}
    curves = list(cluster.results_dir.glob("artifacts/**/curves.csv"))
    assert len(curves) == len(cells)
    assert not (driver_results / "mlflow.db").exists()  # nothing went to an embedded store


@pytest.mark.slow
def test_stop_script_ends_every_process_the_scripts_started(cluster: LocalCluster) -> None:
    cluster.ensure_head()
    sids = {int(f.read_text()) for f in cluster.state_dir.glob("*.sid")}
    assert len(sids) >= 2  # Ray and MLflow (and a Ray worker), each in a session of its own
    stopped = cluster.script("stop.sh", timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert all(session_pids(sid) == [] for sid in sids)
    assert refuses_connections("127.0.0.1", cluster.mlflow_port)
    assert refuses_connections("127.0.0.1", cluster.ray_port)
    assert not (cluster.state_dir / "tracking_uri").exists()
    assert list(cluster.state_dir.glob("*.sid")) == []


def test_head_script_rejects_bad_settings_and_starts_nothing(fresh_cluster: LocalCluster) -> None:
    cluster = fresh_cluster
    bad_port = cluster.script("start_head.sh", WMHP_HEAD_HOST="127.0.0.1", WMHP_MLFLOW_PORT="50OO")
    assert bad_port.returncode == 2
    assert "WMHP_MLFLOW_PORT" in bad_port.stderr and "50OO" in bad_port.stderr
    missing_token = str(cluster.root / "none")
    no_token = cluster.script("start_head.sh", WMHP_HEAD_HOST="127.0.0.1", RAY_AUTH_TOKEN_PATH=missing_token)
    assert no_token.returncode == 2
    assert "ray get-auth-token --generate" in no_token.stderr
    no_head = cluster.script("start_worker.sh")
    assert no_head.returncode == 2 and "WMHP_HEAD_ADDRESS" in no_head.stderr
    assert cluster.sids == set()
    assert not cluster.results_dir.exists()


def test_node_scripts_make_the_auth_token_private(tmp_path: Path) -> None:
    """start_head.sh and start_worker.sh check the token with require_token, which leaves it mode 0600."""
    token = tmp_path / "auth_token"
    token.write_text(os.urandom(16).hex())
    token.chmod(0o644)
    common = Path(__file__).resolve().parents[1] / "pipeline" / "cluster" / "common.sh"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_AUTH_TOKEN", None)
    done = subprocess.run(["bash", "-c", f"source {common} && require_token"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert token.stat().st_mode & 0o777 == 0o600
    for script in ("start_head.sh", "start_worker.sh"):  # every node runs one of them
        assert "\nrequire_token\n" in (common.parent / script).read_text()
