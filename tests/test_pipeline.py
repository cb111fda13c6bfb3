"""run_grids on a real local Ray with a real sqlite MLflow store: runs, dedup, adoption, retry from checkpoint."""

from __future__ import annotations

import csv
import io
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from bnn.config import flatten, to_dict
from bnn.train import METRIC_NAMES
from pipeline import run_grids
from pipeline.grids import expand, find_grid, load_grid

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray instance for the module (start-up costs seconds); run_grids joins it instead of starting one."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def client_for(results: Path):
    return mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def runs_of(results: Path, grid: str) -> list:
    client = client_for(results)
    experiment = client.get_experiment_by_name(f"wmhp/{grid}")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def sgd_grid(tmp_path: Path, name: str, cells: list[tuple[float, float]]) -> Path:
    """A grid of latent-SGD cells (lr, weight decay) with e2's base, so its cells can coincide with e2's."""
    variants = "\n".join(f"    - {{binary_opt.lr: {lr}, binary_opt.weight_decay: {wd}}}" for lr, wd in cells)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nexperiment: e2\n"
                    "base: {binary_opt.name: sgd, binary_opt.momentum: 0.0, schedule.name: constant}\n"
                    f"axes:\n  cell:\n{variants}\npresets: {{smoke: {{}}}}\n")
    return path


def test_smoke_grid_logs_one_run_per_trial_and_a_rerun_starts_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = io.StringIO()
    summary = run_grids(["e2"], "smoke", results, out=out)
    cells = {c.hash: c for c in expand(load_grid(find_grid("e2")), "smoke")}
    assert len(cells) >= 3
    assert (summary.total("to_run"), summary.total("finished"), summary.failed) == (len(cells), len(cells), 0)
    assert f"{len(cells)}/{len(cells)} done, 0 running, 0 failed" in out.getvalue()

    client = client_for(results)
    experiment = client.get_experiment_by_name("wmhp/e2_lr_wd")
    assert experiment.artifact_location == str(results.resolve() / "artifacts" / "e2_lr_wd")
    runs = runs_of(results, "e2_lr_wd")
    assert sorted(r.data.tags["wmhp.config_hash"] for r in runs) == sorted(cells)
    for run in runs:
        cell = cells[run.data.tags["wmhp.config_hash"]]
        assert run.info.status == "FINISHED" and run.info.run_name == cell.run_name
        assert re.fullmatch(r"e2 lr=\S+ weight_decay=\S+ (\S+ )*seed=\d+", cell.run_name)  # says the cell
        tags = run.data.tags
        assert (tags["wmhp.experiment"], tags["wmhp.grid"], tags["wmhp.preset"]) == ("e2", "e2_lr_wd", "smoke")
        assert tags["wmhp.code_version"].startswith("0.")
        assert run.data.params == {k: "None" if v is None else str(v) for k, v in flatten(cell.config).items()}
        keys = set(run.data.metrics)
        assert set(METRIC_NAMES) <= keys and any(k.startswith("flips.") for k in keys)
        for key in keys:
            assert [step for step, _ in history(client, run.info.run_id, key)] == [1, 2], key
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        assert sorted(p.name for p in local.iterdir()) == ["config.yaml", "curves.csv", "state.pt"]
        assert yaml.safe_load((local / "config.yaml").read_text()) == to_dict(cell.config)
        rows = list(csv.DictReader((local / "curves.csv").open()))
        assert [int(r["epoch"]) for r in rows] == [1, 2] and set(rows[0]) == keys
        for row in rows:
            for key in keys:
                logged = dict(history(client, run.info.run_id, key))[int(row["epoch"])]
                assert same(float(row[key]), logged), key
        assert torch.load(local / "state.pt", weights_only=False)["epoch"] == 2

    launches = sorted((results / "ray").iterdir())
    again = run_grids(["e2"], "smoke", results, out=io.StringIO())
    assert (again.total("already_done"), again.total("to_run")) == (len(cells), 0)
    assert len(runs_of(results, "e2_lr_wd")) == len(cells)
    assert sorted((results / "ray").iterdir()) == launches  # no Tune experiment was even started

    # A cell finished in e2 is copied into another grid, a cell shared by two grids of one launch runs once.
    first = sgd_grid(tmp_path, "share_a", [(0.1, 1.0e-1), (1.0, 1.0e-3)])  # (0.1, 1e-1) is one of e2's
    second = sgd_grid(tmp_path, "share_b", [(1.0, 1.0e-3), (1.0, 1.0e-4)])
    out = io.StringIO()
    shared = run_grids([str(first), str(second)], "smoke", results, out=out)
    assert [(g.adopted, g.to_run, g.finished) for g in shared.grids] == [(1, 1, 1), (0, 2, 2)]
    assert out.getvalue().count("] start") == 2
    adopted = [r for r in runs_of(results, "share_a") if "wmhp.adopted_from" in r.data.tags]
    assert len(adopted) == 1 and adopted[0].info.status == "FINISHED"
    source = client.get_run(adopted[0].data.tags["wmhp.adopted_from"])
    assert source.data.tags["wmhp.grid"] == "e2_lr_wd" and adopted[0].data.tags["wmhp.grid"] == "share_a"
    assert history(client, adopted[0].info.run_id, "test_acc") == history(client, source.info.run_id, "test_acc")
    shared_hash = next(c.hash for c in expand(load_grid(second), "smoke") if c.config.binary_opt.weight_decay == 1e-3)
    both = [r for g in ("share_a", "share_b") for r in runs_of(results, g)
            if r.data.tags["wmhp.config_hash"] == shared_hash]
    assert [r.data.tags["wmhp.grid"] for r in both] == ["share_a", "share_b"]
    assert history(client, both[0].info.run_id, "sign_hash") == history(client, both[1].info.run_id, "sign_hash")


def test_a_trial_failing_once_resumes_and_ends_like_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    grid = tmp_path / "fault.yaml"
    grid.write_text(textwrap.dedent("""\
        name: fault
        experiment: e0
        base: {epochs: 3, binary_opt: {name: filter, alpha: 1.0e-2, gamma: 0.5}}
        presets: {smoke: {}}
        """))
    plain = run_grids([str(grid)], "smoke", tmp_path / "plain", out=io.StringIO())
    markers = tmp_path / "markers"
    monkeypatch.setenv("WMHP_FAULT_ONCE", f"{markers}:2")
    out = io.StringIO()
    faulty = run_grids([str(grid)], "smoke", tmp_path / "faulty", out=out)
    assert plain.ok and faulty.ok
    assert len(list(markers.glob("*.fault"))) == 1  # the fault did fire
    assert "retry" in out.getvalue()

    (reference,) = runs_of(tmp_path / "plain", "fault")
    (retried,) = runs_of(tmp_path / "faulty", "fault")
    assert retried.info.status == "FINISHED"
    assert set(reference.data.metrics) == set(retried.data.metrics)
    a, b = client_for(tmp_path / "plain"), client_for(tmp_path / "faulty")
    for key in reference.data.metrics:
        expected, got = history(a, reference.info.run_id, key), history(b, retried.info.run_id, key)
        assert [s for s, _ in got] == [1, 2, 3], key  # every epoch logged once, despite the replay
        if key != "epoch_s":
            assert all(same(x, y) for (_, x), (_, y) in zip(expected, got, strict=True)), key


AGREE_GRID = """\
name: {name}
experiment: e0
base: {{epochs: 2, model.hidden: [16, 16], binary_opt: {{name: filter, gamma: 0.1}}}}
axes:
  binary_opt.alpha: [{alphas}]
presets: {{smoke: {{}}}}
"""


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of pipeline.plan.print_table in a command's output: grid -> its counts and trial time."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["grid", "cells"])
    rows = {}
    for line in lines[start + 1 :]:
        name, *values = line.split()
        rows[name] = values
        if name == "total":
            return rows
    raise AssertionError(text)


@pytest.mark.slow
def test_dry_run_and_launch_agree_on_every_count_for_grids_sharing_cells(tmp_path: Path, capsys) -> None:
    """Two grids sharing two cells: one done in the first (the second adopts it), one to run, shared, and resumed
    from an earlier launch's checkpoint. `wmhp ablate --dry-run` prints the numbers the launch prints, and the
    launch does what they say."""
    from bnn.train import CHECKPOINT_FILE, train
    from pipeline.cli import ablate_main
    from pipeline.tracking import Tracker, create_sqlite_store
    from pipeline.trial import write_history

    alpha = {"c1": "1.0e-3", "c2": "1.0e-2"}

    def grid(name: str, cells: list[str]) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(AGREE_GRID.format(name=name, alphas=", ".join(alpha[c] for c in cells)))
        return str(path)

    results = tmp_path / "results"
    a, b = grid("agree_a", ["c1", "c2"]), grid("agree_b", ["c1", "c2"])
    c1, c2 = expand(load_grid(a), "smoke")
    create_sqlite_store(results / "mlflow.db")
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)  # c1 FINISHED in agree_a, as a launch logs it
    run_id = tracker.start_run(tracker.ensure_experiment("agree_a"), c1, "smoke")
    done_rows = [{"epoch": 1.0, "test_acc": 0.5}, {"epoch": 2.0, "test_acc": 0.6}]
    tracker.log_epochs(run_id, done_rows)
    tracker.end_run(run_id, done_rows, "FINISHED")
    planted = results / "ray" / "ablate-old" / f"cell-{c2.hash}" / "checkpoint_000000"
    rows: list[dict] = []
    train(c2.config, rows.append, checkpoint_dir=planted, stop_after=1)
    write_history(planted, rows)  # c2: 1 of 2 epochs left by an earlier launch

    def dry_run() -> dict[str, list[str]]:
        capsys.readouterr()
        assert ablate_main([a, b, "--preset", "smoke", "--results-dir", str(results), "--dry-run"]) == 0
        return table_rows(capsys.readouterr().out)

    planned = dry_run()
    out = io.StringIO()
    summary = run_grids([a, b], "smoke", results, out=out)
    # cells, done, adopt, to run, shared, resume (then the trial time)
    expected = {"agree_a": ["2", "1", "0", "1", "0", "1"], "agree_b": ["2", "0", "1", "1", "1", "0"],
                "total": ["4", "1", "1", "2", "1", "1"]}
    assert {name: values[:6] for name, values in planned.items()} == expected
    assert table_rows(out.getvalue()) == planned  # the launch prints the dry run's table, trial time included
    assert [[str(n) for n in (g.cells, g.already_done, g.adopted, g.to_run, g.shared, g.resumed)]
            for g in summary.grids] == [expected["agree_a"], expected["agree_b"]]
    assert [(g.finished, g.failed) for g in summary.grids] == [(1, 0), (1, 0)]  # each to-run cell got its run
    assert out.getvalue().count("] start") == sum(g.trials for g in summary.grids) == 1
    assert "1 trial(s) to run" in out.getvalue()
    assert {name: values[:6] for name, values in dry_run().items()} == {
        "agree_a": ["2", "2", "0", "0", "0", "0"], "agree_b": ["2", "2", "0", "0", "0", "0"],
        "total": ["4", "4", "0", "0", "0", "0"]}
    client = client_for(results)
    for name in ("agree_a", "agree_b"):
        runs = {r.data.tags["wmhp.config_hash"]: r for r in runs_of(results, name) if r.info.status == "FINISHED"}
        assert sorted(runs) == sorted([c1.hash, c2.hash])
        assert history(client, runs[c1.hash].info.run_id, "test_acc") == [(1, 0.5), (2, 0.6)]  # done / adopted
        resumed = history(client, runs[c2.hash].info.run_id, "test_acc")  # epoch 1 from the checkpoint's history
        assert [step for step, _ in resumed] == [1, 2] and resumed[0][1] == rows[0]["test_acc"]
