"""Issue 12: no code runs from a checkpoint, and an unreadable checkpoint is set aside instead of blocking a run."""

from __future__ import annotations

import io
import json
import logging
import pickle
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from bnn.config import from_flat
from bnn.train import CHECKPOINT_FILE, train

TINY = {"model.hidden": [16, 16], "epochs": 2, "binary_opt.alpha": 1e-2}


class Payload:
    """Unpickling this creates ``marker``: what a planted checkpoint would do under weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_payload(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"config": "x", "epoch": 1, "history": [], "model": Payload(marker)}))


def wmhp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmhp.cli", *args], capture_output=True, text=True, timeout=120)


def test_planted_checkpoint_is_refused_named_and_set_aside(tmp_path: Path) -> None:
    ckpt, marker = tmp_path / "ckpt", tmp_path / "PAYLOAD_RAN"
    plant_payload(ckpt / CHECKPOINT_FILE, marker)
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    result = wmhp("train", *sets, "--checkpoint-dir", str(ckpt))
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "the checkpoint's payload ran"
    warning = [line for line in result.stderr.splitlines() if "state.pt" in line]
    assert len(warning) == 1 and str(ckpt / CHECKPOINT_FILE) in warning[0] and "refused" in warning[0]
    assert "Traceback" not in result.stderr and len(warning[0]) < 600
    aside = list(ckpt.glob(f"{CHECKPOINT_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].name in warning[0]
    assert result.stdout.splitlines()[-1].split()[0] == "2"  # trained from epoch 0 to the end


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_set_aside_and_training_starts_fresh(tmp_path: Path, damage: str, caplog) -> None:
    config = from_flat(TINY)
    straight: list[dict] = []
    train(config, straight.append)
    train(config, checkpoint_dir=tmp_path, stop_after=1)
    state = tmp_path / CHECKPOINT_FILE
    data = state.read_bytes()
    state.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x80\x02garbage" * 50, "empty": b""}[damage])
    rows: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="bnn.train"):
        train(config, rows.append, checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in rows] == [1.0, 2.0]  # started afresh, not from the damaged epoch 1
    assert [r["test_acc"] for r in rows] == [r["test_acc"] for r in straight]
    (aside,) = tmp_path.glob(f"{CHECKPOINT_FILE}.corrupt-*")
    assert str(state) in caplog.text and aside.name in caplog.text
    assert state.exists()  # a good checkpoint again, loadable without pickle
    train(config, rows.append, checkpoint_dir=tmp_path)
    assert len(rows) == 2  # resumed at its last epoch: nothing more to train



# --- bad input and environment faults: exit 2 / 1, one line naming the file or option, nothing created ---------
GOOD_HEAD = "name: broken\nexperiment: e0\n"
RUNNABLE = "{smoke: {base: {binary_opt.alpha: 1.0e-3}}}"

# Broken grid files (wmhp ablate GRID --preset smoke): body -> what the message must name.
BROKEN_GRIDS = {
    "unknown top-level key": ("axis: {seed: [0]}\npresets: {smoke: {}}", "axis"),
    "unknown field in base": ("base: {binary_opt.lrr: 0.1}\npresets: {smoke: {}}", "binary_opt.lrr"),
    "unknown nested field": ("base: {binary_opt: {lrr: 0.1}}\npresets: {smoke: {}}", "binary_opt.lrr"),
    "wrong type": ("base: {epochs: ten}\npresets: {smoke: {}}", "epochs"),
    "empty axis": ("axes: {binary_opt.lr: []}\npresets: {smoke: {}}", "binary_opt.lr"),
    "axis not a list": ("axes: {seed: 3}\npresets: {smoke: {}}", "seed"),
    "out of range": ("axes: {binary_opt.momentum: [0.5, 1.5]}\npresets: {smoke: {}}", "binary_opt.momentum"),
    "out of range in base": ("base: {batch_size: 0}\npresets: {smoke: {}}", "batch_size"),
    "bad literal": ("axes: {schedule.name: [linear, exponential]}\npresets: {smoke: {}}", "schedule.name"),
    "missing dataset dir": ("base: {data.root: /nonexistent/wmhp-data}\npresets: {smoke: {}}", "data.root"),
    "missing teacher file": ("base: {model.teacher_path: /nonexistent/t.pth}\npresets: {smoke: {}}",
                             "model.teacher_path"),
    "subset larger than dataset": ("base: {data.train_subset: 5000}\npresets: {smoke: {}}", "data.train_subset"),
    "zipped axis of scalars": ("axes: {optimizr: [sgd, filter]}\npresets: {smoke: {}}", "optimizr"),
    "section as axis": ("axes: {binary_opt: [{lr: 0.1}]}\npresets: {smoke: {}}", "binary_opt"),
    "bad field in zipped axis": ("axes: {v: [{binary_opt.nme: sgd}]}\npresets: {smoke: {}}", "binary_opt.nme"),
    "two axes set one field": ("axes: {seed: [0, 1], v: [{seed: 2}]}\npresets: {smoke: {}}", "seed"),
    "duplicate cells": ("axes: {seed: [0, 0]}\npresets: {smoke: {}}", "same config"),
    "gamma without alpha": ("base: {binary_opt: {name: filter, weight_decay: 0.0}}\n"
                            "presets: {smoke: {base: {binary_opt.alpha: null, binary_opt.gamma: 0.5}}}",
                            "binary_opt.gamma"),
    "unset environment variable": ("base: {data.root: '${WMHP_TEST_UNSET_VARIABLE}'}\npresets: {smoke: {}}",
                                   "WMHP_TEST_UNSET_VARIABLE"),
    "preset not defined": ("presets: {cpu: {}}", "smoke"),
    "no presets": ("axes: {seed: [0]}", "presets"),
    "unknown preset key": ("presets: {smoke: {bases: {}}}", "bases"),
    "null removes a missing axis": ("presets: {smoke: {axes: {seed: null}}}", "seed"),
    "not YAML": ("presets: {smoke: [}", "YAML"),
    "huge value is not echoed": ("base: {epochs: '" + "9" * 100_000 + "'}\npresets: {smoke: {}}", "epochs"),
}

# Bad options on a good grid: extra argv -> what the message must name.
BAD_OPTIONS = {
    "--set on an axis": (["--set", "seed=4"], "axes: {seed: [0, 1]}\npresets: {smoke: {}}", "--set seed"),
    "--set unknown key": (["--set", "binary_opt.nope=1"], "presets: {smoke: {}}", "binary_opt.nope"),
    "--set bad value": (["--set", "epochs=-1"], "presets: {smoke: {}}", "epochs"),
    "--set seed too large": (["--set", f"seed={10**20}"], "presets: {smoke: {}}", "seed"),
    "--gpus-per-trial": (["--gpus-per-trial", "-1"], "presets: {smoke: {}}", "--gpus-per-trial"),
    "--cpus-per-trial inf": (["--cpus-per-trial", "inf"], "presets: {smoke: {}}", "--cpus-per-trial"),
    "--cpus-per-trial nan": (["--cpus-per-trial", "nan"], "presets: {smoke: {}}", "--cpus-per-trial"),
    "--cpus-per-trial above local CPUs": (["--cpus-per-trial", "4096"], "presets: {smoke: {}}", "--cpus-per-trial"),
    "--max-concurrent": (["--max-concurrent", "0"], "presets: {smoke: {}}", "--max-concurrent"),
    "--preset missing": (["--preset", "imagenet"], "presets: {smoke: {}}", "imagenet"),
    "--address malformed": (["--address", "headnode"], "presets: {smoke: {}}", "--address headnode"),
}


def _grid(tmp: Path, body: str) -> Path:
    path = tmp / "g.yaml"
    path.write_text(GOOD_HEAD + body.replace("{smoke: {}}", RUNNABLE))
    return path


def _fashion_root(tmp: Path, damage: str) -> Path:
    import numpy as np

    from bnn.data import fashion_mnist as fm
    from bnn.data.idx import write_idx

    root = tmp / "fashion"
    root.mkdir()
    for key, stem in fm.FILES.items():
        shape = (10, 28, 28) if key.endswith("images") else (10,)
        write_idx(root / f"{stem}.gz", np.zeros(shape, dtype=np.uint8))
    test_labels = root / f"{fm.FILES['test_labels']}.gz"
    if damage == "missing":
        test_labels.unlink()
    else:  # a flipped byte inside the deflate stream: zlib.error, not a gzip header problem
        data = bytearray(test_labels.read_bytes())
        data[12] ^= 0xFF
        test_labels.write_bytes(bytes(data))
    return root


def _sqlite_file(tmp: Path, content: bytes) -> Path:
    results = tmp / "results"
    results.mkdir()
    (results / "mlflow.db").write_bytes(content)
    return results


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


GARBAGE_DB = b"this is not an sqlite database, " * 64
TINY_TRAIN = ["--set", "model.hidden=[8, 8]", "--set", "epochs=1"]


def _case_table() -> dict[str, tuple]:
    """name -> (setup(tmp) -> argv, exit code, texts the one stderr line must contain). Paths are under tmp."""
    cases: dict[str, tuple] = {}
    for name, (body, key) in BROKEN_GRIDS.items():
        cases[f"grid: {name}"] = (
            lambda t, body=body: ["ablate", str(_grid(t, body)), "--preset", "smoke", "--results-dir", str(t / "r")],
            2, [key, "g.yaml"])
    for name, (extra, body, key) in BAD_OPTIONS.items():
        cases[f"option: {name}"] = (
            lambda t, extra=extra, body=body: ["ablate", str(_grid(t, body)), "--results-dir", str(t / "r"), *extra]
            + ([] if "--preset" in extra else ["--preset", "smoke"]), 2, [key])
    cases.update({
        "train: binary YAML": (
            lambda t: ["train", str(_write(t / "c.yaml", b"\xff\xfe\x00\x01binary"))], 2, ["c.yaml", "UTF-8"]),
        "train: 100 kB YAML list": (
            lambda t: ["train", str(_write(t / "c.yaml", b"[" + b"1, " * 30_000 + b"1]"))], 2, ["c.yaml"]),
        "train: --set seed too large": (lambda t: ["train", "--set", f"seed={10**20}"], 2, ["seed"]),
        "train: --stop-after 0": (lambda t: ["train", "--stop-after", "0", *TINY_TRAIN], 2, ["--stop-after"]),
        "train: --stop-after -1": (lambda t: ["train", "--stop-after", "-1", *TINY_TRAIN], 2, ["--stop-after"]),
        "train: data.root lacks a file": (
            lambda t: ["train", *TINY_TRAIN, "--set", "data.name=fashion-mnist",
                       "--set", f"data.root={_fashion_root(t, 'missing')}"], 2, ["data.root", "t10k-labels"]),
        "train: corrupt deflate stream": (
            lambda t: ["train", *TINY_TRAIN, "--set", "data.name=fashion-mnist",
                       "--set", f"data.root={_fashion_root(t, 'corrupt')}"], 2, ["t10k-labels-idx1-ubyte.gz"]),
        "collect: empty mlflow.db": (
            lambda t: ["collect", "--results-dir", str(_sqlite_file(t, b""))], 2, ["mlflow.db", "not an MLflow"]),
        "collect: garbage mlflow.db": (
            lambda t: ["collect", "--results-dir", str(_sqlite_file(t, GARBAGE_DB))], 2, ["mlflow.db"]),
        "ablate --dry-run: garbage mlflow.db": (
            lambda t: ["ablate", "e2", "--preset", "smoke", "--dry-run",
                       "--results-dir", str(_sqlite_file(t, GARBAGE_DB))], 1, ["mlflow.db", "not a readable SQLite"]),
        "ablate: garbage mlflow.db": (
            lambda t: ["ablate", str(_grid(t, "presets: {smoke: {}}")), "--preset", "smoke",
                       "--results-dir", str(_sqlite_file(t, GARBAGE_DB))], 1, ["mlflow.db", "not a readable SQLite"]),
        "ablate: --results-dir is a file": (
            lambda t: ["ablate", "e2", "--preset", "smoke", "--results-dir", str(_write(t / "file", b"x"))],
            2, ["--results-dir", "is a file"]),
        "ablate: --results-dir cannot be made": (
            lambda t: ["ablate", str(_grid(t, "presets: {smoke: {}}")), "--preset", "smoke",
                       "--results-dir", str(_write(t / "file", b"x") / "sub")], 1, ["--results-dir", "cannot write"]),
        "ablate: unreachable tracking server": (
            lambda t: ["ablate", str(_grid(t, "presets: {smoke: {}}")), "--preset", "smoke",
                       "--results-dir", str(t / "r"), "--tracking-uri", f"http://127.0.0.1:{_closed_port()}"],
            1, ["--tracking-uri", "no MLflow server"]),
        "ablate: a text file as grid": (
            lambda t: ["ablate", str(_write(t / "passwd", b"root:x:0:0:" * 5000)), "--preset", "smoke",
                       "--results-dir", str(t / "r")], 2, ["passwd"]),
    })
    return cases


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


CASES = _case_table()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_and_faults_end_in_one_line(tmp_path: Path, capsys, case: str) -> None:
    from wmhp.cli import main

    setup, code, texts = CASES[case]
    argv = setup(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[:2000]
    assert "Traceback" not in err and len(err) < 1200, err[:2000]
    for text in texts:
        assert text in err, err
    assert _snapshot(tmp_path) == before, "the command created or changed files"


def test_bare_train_trains_the_default_model(capsys) -> None:
    from bnn.cli import train_main

    assert train_main(["--stop-after", "1"]) == 0
    out = capsys.readouterr().out
    assert "mlp on digits, binary optimizer filter" in out
    assert float(out.strip().splitlines()[-1].split()[4]) > 0.5  # test accuracy after one epoch


ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")


@pytest.mark.slow
def test_pipeline_skips_planted_and_corrupt_checkpoints(tmp_path: Path) -> None:
    """Earlier launches' checkpoints on storage: a payload pickle (cell a) and a garbage newest checkpoint with a
    good older one (cell b). The launch resumes b from the good one, a from scratch; nothing runs the payload."""
    from pipeline import LaunchOptions, run_grids
    from pipeline.grids import expand, load_grid
    from pipeline.trial import HISTORY_FILE, write_history

    grid = tmp_path / "planted.yaml"
    grid.write_text(textwrap.dedent("""\
        name: planted
        experiment: e0
        base: {epochs: 3, model.hidden: [16, 16], binary_opt: {name: filter, gamma: 0.1}}
        axes:
          binary_opt.alpha: [1.0e-2, 1.0e-1]
        presets: {smoke: {}}
        """))
    cells = expand(load_grid(grid), "smoke")
    results, marker = tmp_path / "results", tmp_path / "PAYLOAD_RAN"
    cell_a, cell_b = (results / "ray" / "ablate-old" / f"cell-{c.hash}" for c in cells)
    planted = cell_a / "checkpoint_000001"
    plant_payload(planted / CHECKPOINT_FILE, marker)
    fake_history = [{"epoch": 1.0, "test_acc": 0.99}, {"epoch": 2.0, "test_acc": 0.99}]
    write_history(planted, fake_history)
    good, bad = cell_b / "checkpoint_000000", cell_b / "checkpoint_000001"
    good_rows: list[dict] = []
    train(cells[1].config, good_rows.append, checkpoint_dir=good, stop_after=1)
    write_history(good, good_rows)
    bad.mkdir(parents=True)
    (bad / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short by a full disk")
    write_history(bad, good_rows + [{**good_rows[0], "epoch": 2.0}])

    summary = run_grids([str(grid)], "smoke", results, LaunchOptions(num_cpus=2), out=io.StringIO())
    assert summary.ok and summary.total("resumed") == 2
    assert not marker.exists(), "the planted checkpoint's payload ran"
    assert len(list(planted.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == 1
    assert len(list(bad.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == 1
    assert (good / CHECKPOINT_FILE).exists() and json.loads((good / HISTORY_FILE).read_text())["history"]

    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wmhp/planted").experiment_id])
    assert Counter(r.info.status for r in runs) == Counter({"FINISHED": 2})
    fresh_a: list[dict] = []
    train(cells[0].config, fresh_a.append, stop_after=1)
    first_epoch = {cells[0].hash: fresh_a[0]["test_acc"], cells[1].hash: good_rows[0]["test_acc"]}
    for run in runs:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_acc"))
        assert [step for step, _ in history] == [1, 2, 3]
        # the planted history's numbers are not in the run: it holds what the state it ends with went through
        assert history[0][1] == first_epoch[run.data.tags["wmhp.config_hash"]]


# --- one writer per tracking store ----------------------------------------------------------------------------
def _second_launch(tmp_path: Path, uri: str, capsys) -> str:
    """A launch on ``uri`` with its own results dir (the cluster set-up): returns its one error line."""
    from pipeline.cli import ablate_main

    grid = _grid(tmp_path, "presets: {smoke: {}}")
    capsys.readouterr()
    assert ablate_main([str(grid), "--preset", "smoke", "--results-dir", str(tmp_path / "second"),
                        "--tracking-uri", uri]) == 1
    return capsys.readouterr().err.strip()


def _live_grid_run(uri: str) -> tuple[object, str]:
    """A RUNNING run of the first launch, which a second launch must not mark KILLED."""
    client = mlflow.MlflowClient(uri)
    return client, client.create_run(client.create_experiment("wmhp/first")).info.run_id


def _assert_names_the_first(err: str) -> None:
    import os
    import socket

    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"host {socket.gethostname()}" in err and f"pid {os.getpid()}" in err and "started 20" in err, err


def test_second_launch_on_one_sqlite_store_refuses_and_kills_nothing(tmp_path: Path, capsys) -> None:
    from pipeline.lease import LaunchLease

    uri = f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}"
    with LaunchLease(uri):  # the first launch, alive
        client, run_id = _live_grid_run(uri)
        _assert_names_the_first(_second_launch(tmp_path, uri, capsys))
        assert client.get_run(run_id).info.status == "RUNNING"
    # The holder gone (ended, or died: the kernel drops its flock), the lease is free, whatever the file says.
    with LaunchLease(uri):
        pass


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    import os
    import urllib.request

    port = _closed_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
               f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "mlflow server did not start"
                time.sleep(0.3)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_second_launch_on_one_server_refuses_and_a_stale_lease_is_taken_over(tmp_path: Path, capsys,
                                                                             mlflow_server: str) -> None:
    from pipeline.lease import LEASE_EXPERIMENT, LaunchLease

    uri = mlflow_server
    with LaunchLease(uri, heartbeat_s=0.5):  # the first launch, alive, on this host
        client, run_id = _live_grid_run(uri)
        _assert_names_the_first(_second_launch(tmp_path, uri, capsys))
        assert client.get_run(run_id).info.status == "RUNNING"
    eid = client.get_experiment_by_name(LEASE_EXPERIMENT).experiment_id
    assert {r.info.status for r in client.search_runs([eid])} == {"FINISHED"}

    # Leases of launches that died: another host whose heartbeat stopped long ago, and a dead pid on this host.
    now = time.time()
    import socket

    dead = {"old heartbeat": ("node-7", "4242", now - 3600), "dead pid": (socket.gethostname(), "999999", now)}
    stale = {name: client.create_run(eid, tags={"wmhp.host": host, "wmhp.pid": pid, "wmhp.start": repr(beat),
                                                "wmhp.heartbeat": repr(beat)}).info.run_id
             for name, (host, pid, beat) in dead.items()}
    with LaunchLease(uri):
        for run_id in stale.values():
            assert client.get_run(run_id).info.status == "KILLED"
    # A live lease on another host (fresh heartbeat) is respected.
    client.create_run(eid, tags={"wmhp.host": "node-8", "wmhp.pid": "17", "wmhp.start": repr(now),
                                 "wmhp.heartbeat": repr(time.time())})
    with pytest.raises(Exception, match="host node-8, pid 17"):
        LaunchLease(uri).__enter__()


def test_a_trial_no_node_can_hold_is_refused_naming_the_nodes() -> None:
    """The shape ray.nodes() returns; Tune would otherwise wait for ever for such a node."""
    from pipeline.launch import check_fits
    from pipeline.runner import LaunchError

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    check_fits(nodes, 8, 1)
    with pytest.raises(LaunchError, match=r"--cpus-per-trial 64 .*nodes: 2 CPU, 0 GPU; 8 CPU, 1 GPU\)"):
        check_fits(nodes, 64, 0)
