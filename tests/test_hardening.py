"""Issue 12: no code runs from a checkpoint, and an unreadable checkpoint is set aside instead of blocking a run."""

from __future__ import annotations

import io
import json
import logging
import pickle
import subprocess
import sys
import textwrap
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


ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")


@pytest.mark.slow
def test_pipeline_skips_planted_and_corrupt_checkpoints(tmp_path: Path) -> None:
    """Earlier launches' checkpoints on storage: a payload pickle (cell a) and a garbage newest checkpoint with a
    good older one (cell b). The launch resumes b from the good one, a from scratch; nothing runs the payload."""
    from pipeline import run_grids
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

    summary = run_grids([str(grid)], "smoke", results, num_cpus=2, out=io.StringIO())
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
