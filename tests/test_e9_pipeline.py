"""E9 end to end on the smoke preset, and a killed E9 launch rerun: real Ray, real sqlite MLflow, real parquet."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipeline.grids import GridError, expand, find_grid, load_grid
from tests.test_pipeline_kill import finished_runs, kill_driver_after, stop_leftovers

mlflow = pytest.importorskip("mlflow")

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def wmhp(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmhp.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def test_e9_grid_validates_and_pools_are_deterministic() -> None:
    grid = load_grid(find_grid("e9"))
    assert grid.experiment == "e9"
    first, again = expand(grid, "smoke"), expand(load_grid(find_grid("e9_tuning_cost")), "smoke")
    assert [c.hash for c in first] == [c.hash for c in again]  # a rerun finds the same configs: dedup works
    spaces = Counter(c.tags["wmhp.space"] for c in first)
    assert set(spaces) == {"latent_adam", "latent_sgd", "filter"} and len(set(spaces.values())) == 1
    names = {c.tags["wmhp.space"]: c.config.binary_opt.name for c in first}
    assert names == {"latent_adam": "adam", "latent_sgd": "sgd", "filter": "filter"}
    for preset in ("cpu", "cifar10"):
        assert len(expand(grid, preset, check_paths=False)) > len(first)
    cpu = [c.config for c in expand(grid, "cpu") if c.config.binary_opt.name == "filter"]
    steps = [-(-c.data.train_subset // c.batch_size) * c.epochs for c in cpu]
    alpha_t = [c.binary_opt.alpha * t for c, t in zip(cpu, steps)]
    assert 0.9 <= min(alpha_t) and max(alpha_t) <= 110  # alpha x T within ~1..100: every sample can act


GOOD = """\
name: e9_bad
experiment: e9
search:
  metric: val_acc
  spaces:
    filter:
      params:
        binary_opt.alpha: {loguniform: [1.0e-3, 1.0e-1]}
  random: {pool: 4}
  tpe: {repeats: 3, trials: 2, startup: 1}
presets: {smoke: {}}
"""


@pytest.mark.parametrize("old, new, message", [
    ("startup: 1", "startup: 3", r"search\.tpe\.startup"),
    ("{pool: 4}", "{pool: 4, size: 2}", r"search\.random\.size: unknown key"),
    ("binary_opt.alpha:", "binary_opt.alfa:", "binary_opt.alfa"),
    ("[1.0e-3, 1.0e-1]", "[0.0, 1.0e-1]", "low > 0"),
    ("presets: {smoke: {}}", "presets: {smoke: {search: {tpe: {repeats: 0}}}}", r"tpe\.repeats"),
])
def test_bad_search_sections_are_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD)
    assert len(expand(load_grid(path), "smoke")) == 4
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(GridError, match=message):
        expand(load_grid(path), "smoke")


@pytest.mark.slow
def test_e9_smoke_ablate_collect_figures(tmp_path: Path) -> None:
    results = tmp_path / "results"
    ran = wmhp("ablate", "e9", "--preset", "smoke", "--results-dir", str(results))
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert wmhp("collect", "--results-dir", str(results)).returncode == 0
    drawn = wmhp("figures", "--results-dir", str(results))
    assert drawn.returncode == 0, drawn.stdout[-3000:] + drawn.stderr[-3000:]
    runs = pd.read_parquet(results / "runs.parquet")
    e9 = runs[(runs["experiment"] == "e9") & (runs["status"] == "FINISHED")]
    assert Counter(zip(e9["search_space"], e9["searcher"])) == Counter(
        {(s, k): n for s in ("latent_adam", "latent_sgd", "filter") for k, n in (("random", 4), ("tpe", 6))})
    assert sorted(e9[e9["searcher"] == "tpe"]["search_repeat"].unique()) == [0, 1, 2]
    for suffix in ("png", "pdf"):
        assert (results / "figures" / f"e9_tuning_cost.{suffix}").stat().st_size > 0
    table = pd.read_csv(results / "tables" / "e9_tuning_cost.csv")
    assert set(zip(table["space"], table["searcher"])) == {
        (s, k) for s in ("latent_adam", "latent_sgd", "filter") for k in ("random", "tpe")}
    verdicts = pd.read_csv(results / "tables" / "verdicts.csv")
    row = verdicts[verdicts["experiment"] == "e9"]
    assert len(row) == 1 and row["verdict"].iloc[0] in ("supported", "not supported", "inconclusive")
    assert "E9" in (results / "REPORT.md").read_text()


KILL_GRID = """\
name: e9_killme
experiment: e9
base: {epochs: 12, binary_opt.name: filter}  # long enough to be killed mid-search
search:
  metric: val_acc
  spaces:
    filter:
      params:
        binary_opt.alpha: {loguniform: [1.0e-2, 1.0]}
        binary_opt.gamma: {loguniform: [1.0e-2, 1.0]}
  random: {pool: 3}
  tpe: {repeats: 2, trials: 3, startup: 1}
presets: {smoke: {}}
"""


@pytest.mark.slow
def test_killed_e9_launch_rerun_runs_every_trial_exactly_once(tmp_path: Path) -> None:
    grid = tmp_path / "e9_killme.yaml"
    grid.write_text(KILL_GRID)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "wmhp.cli", "ablate", str(grid), "--preset", "smoke", "--results-dir",
               str(results)]
    # The random pool is done and a TPE trial finished: kill the driver.
    seen, pgid = kill_driver_after(command, "] done   run_search_trial", lambda: len(finished_runs_of(results)) >= 4,
                                env=ENV)
    before = finished_runs_of(results, driver_alive=False)
    assert 4 <= len(before) < 9, "".join(seen)

    try:
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    finally:
        stop_leftovers(pgid)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{len(before)} done before" in rerun.stdout

    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wmhp/e9_killme").experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    per_search = Counter((r.data.tags["wmhp.searcher"], r.data.tags["wmhp.repeat"]) for r in finished)
    assert per_search == Counter({("random", "0"): 3, ("tpe", "0"): 3, ("tpe", "1"): 3})  # every trial once
    hashes = Counter(r.data.tags["wmhp.config_hash"] for r in finished)
    assert max(hashes.values()) == 1
    kept = {r.info.run_id for r in finished}
    assert {r.info.run_id for r in before} <= kept  # finished before the kill: kept, not run again


def finished_runs_of(results: Path, driver_alive: bool = True) -> list:
    return finished_runs(results, driver_alive, experiment_name="wmhp/e9_killme")
