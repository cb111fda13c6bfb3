"""collect and figures on a real smoke run: `wmhp ablate` (Ray Tune + MLflow + bnn.train), once per module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis import collect, make_figures
from analysis.schema import curves_schema, flip_columns, runs_schema

GRIDS = ("e1", "e2", "e6", "e8")  # 18 smoke cells: a pair experiment, a grid, curves per schedule, the table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "wmhp.cli", "ablate", *GRIDS, "--preset", "smoke", "--results-dir", str(root)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collect(root)
    make_figures(root)
    return root


def test_rows_equal_the_grid_cells_and_columns_are_typed(smoke):
    from pipeline.grids import load_cells

    expected = {
        (cell.grid, cell.hash, cell.experiment) for _, cells in load_cells(list(GRIDS), "smoke") for cell in cells
    }
    table = pq.read_table(smoke / "runs.parquet")
    assert table.schema.equals(runs_schema(), check_metadata=False)
    runs = table.to_pandas()
    assert set(zip(runs["grid"], runs["config_hash"], runs["experiment"])) == expected
    assert len(runs) == len(expected) and (runs["status"] == "FINISHED").all() and (runs["preset"] == "smoke").all()
    assert runs["final_test_acc"].between(0, 1).all() and (runs["wall_s"] > 0).all()


def test_curves_complete(smoke):
    table = pq.read_table(smoke / "curves.parquet")
    assert table.schema.equals(curves_schema(flip_columns(table.schema)), check_metadata=False)
    assert flip_columns(table.schema)  # one flips.<layer> column per binary layer
    curves, runs = table.to_pandas(), pd.read_parquet(smoke / "runs.parquet")
    for run in runs.itertuples(index=False):
        rows = curves[curves["run_id"] == run.run_id]
        assert rows["epoch"].tolist() == list(range(1, run.epochs + 1))
        assert rows[["test_acc", "train_loss", "flip_ratio", "sign_hash", "steps"]].notna().all().all()
        assert rows["test_acc"].iloc[-1] == run.final_test_acc


def test_collect_twice_gives_identical_files(smoke):
    before = [(smoke / n).read_bytes() for n in ("runs.parquet", "curves.parquet")]
    collect(smoke)
    assert [(smoke / n).read_bytes() for n in ("runs.parquet", "curves.parquet")] == before


def test_figures_and_report_from_the_smoke_run(smoke):
    for name in ("e1_equivalence", "e2_lr_wd", "e6_schedules", "e8_optimizers"):
        assert (smoke / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert (smoke / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF-")
    report = (smoke / "REPORT.md").read_text()
    for key in ("e3", "e4", "e5", "e7"):
        assert f"{key}: no finished runs" in report
    runs, curves = pd.read_parquet(smoke / "runs.parquet"), pd.read_parquet(smoke / "curves.parquet")
    e1 = runs[runs["experiment"] == "e1"]
    key = ["binary_opt.lr", "binary_opt.weight_decay", "binary_opt.momentum", "seed"]
    pairs = e1[e1["binary_opt.name"] == "sgd"].merge(e1[e1["binary_opt.name"] == "filter"], on=key)
    hashes = curves.set_index("run_id")["sign_hash"]
    mismatched = sum(
        int((hashes[a].to_numpy() != hashes[b].to_numpy()).sum()) for a, b in zip(pairs["run_id_x"], pairs["run_id_y"])
    )
    compared = sum(len(hashes[a]) for a in pairs["run_id_x"])
    match = re.search(r"\*\*(\d+)\*\* of \*\*(\d+)\*\* epoch-end sign vectors differ", report)
    assert match and (int(match[1]), int(match[2])) == (mismatched, compared) and compared > 0
    table = pd.read_csv(smoke / "tables" / "e8_optimizers.csv")
    e8 = runs[runs["experiment"] == "e8"]
    assert len(table) == len(e8)  # smoke: one seed, one row per optimizer
    assert sorted(table["final_test_acc_mean"]) == pytest.approx(sorted(100 * e8["final_test_acc"]), abs=1e-6)
