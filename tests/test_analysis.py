"""analysis: MLflow runs in the pipeline's exact form -> parquet -> figures, tables and REPORT.md.

The runs are logged by the pipeline's own Tracker into a real sqlite store (benchmarks.synthetic: real configs,
params, tags, statuses, curves.csv artifacts; made-up numbers), so a change to what the pipeline stores that
analysis does not follow fails here. Every number the report states is recomputed
here from the parquet files with code independent of analysis/.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import collect, make_figures
from benchmarks import synthetic
from analysis.cli import collect_main, figures_main
from analysis.schema import arrow_type, runs_schema
from bnn.config import config_hash, field_names, field_type, from_flat

SIZE = synthetic.Size(points=2, seeds=2, epochs=3)
FIGURES = (
    "e1_equivalence",
    "e2_lr_wd",
    "e3_init_scale",
    "e4_momentum_gamma",
    "e5_alpha_gamma",
    "e6_schedules",
    "e7_adam",
    "e8_optimizers",
)


def wmhp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmhp.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results dir holding mlflow.db and artifacts/ as the pipeline leaves them, then collected."""
    root = tmp_path_factory.mktemp("results")
    synthetic.write(f"sqlite:///{root / 'mlflow.db'}", root, SIZE)
    collect(root)
    return root


@pytest.fixture(scope="module")
def drawn(results, tmp_path_factory) -> Path:
    """Figures, tables and report drawn from a copy holding only the two parquet files (no MLflow at all)."""
    root = tmp_path_factory.mktemp("drawn")
    for name in ("runs.parquet", "curves.parquet"):
        shutil.copy(results / name, root / name)
    make_figures(root)
    return root


@pytest.fixture(scope="module")
def mlflow_runs(results):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith("wmhp/")]
    return client, list(client.search_runs(ids, max_results=5000))


def finished(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    return runs[(runs["experiment"] == experiment) & (runs["status"] == "FINISHED")]


# --- collect -----------------------------------------------------------------------------------------------
def test_one_row_per_run_with_status_kept(results, mlflow_runs):
    _, runs_in_mlflow = mlflow_runs
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(runs["run_id"]) == sorted(r.info.run_id for r in runs_in_mlflow)
    by_id = {r.info.run_id: r for r in runs_in_mlflow}
    for row in runs.itertuples(index=False):
        run = by_id[row.run_id]
        assert row.status == run.info.status
        assert row.config_hash == run.data.tags["wmhp.config_hash"]
        assert row.grid == run.data.tags["wmhp.grid"] and row.experiment == run.data.tags["wmhp.experiment"]
    assert set(runs["status"]) == {"FINISHED", "FAILED", "KILLED", "RUNNING"}
    # Run names say the cell; a killed run and the rerun of its cell share one.
    killed = runs[runs["status"] == "KILLED"].iloc[0]
    rerun = runs[(runs["config_hash"] == killed["config_hash"]) & (runs["status"] == "FINISHED")]
    assert rerun["run_name"].tolist() == [killed["run_name"]]
    assert re.fullmatch(r"e2 binary_opt=sgd lr=\S+ weight_decay=\S+ seed=\d+", killed["run_name"])


def test_config_columns_are_typed_and_round_trip_to_the_config_hash(results):
    table = pq.read_table(results / "runs.parquet")
    for name in field_names():
        assert table.schema.field(name).type == arrow_type(field_type(name)), name
    assert table.schema.field("binary_opt.lr").type == pa.float64()
    assert table.schema.field("epochs").type == pa.int64()
    assert table.schema.field("model.hidden").type == pa.list_(pa.int64())
    for row in table.to_pylist():
        overrides = {name: row[name] for name in field_names()}
        assert config_hash(from_flat(overrides)) == row["config_hash"]


def test_curves_complete_and_equal_to_what_mlflow_holds(results, mlflow_runs):
    client, runs_in_mlflow = mlflow_runs
    runs = pd.read_parquet(results / "runs.parquet")
    curves = pd.read_parquet(results / "curves.parquet")
    done = runs[runs["status"] == "FINISHED"]
    for row in done.itertuples(index=False):
        epochs = curves.loc[curves["run_id"] == row.run_id, "epoch"].tolist()
        assert epochs == list(range(1, row.epochs + 1))
    assert (done["epochs_done"] == done["epochs"]).all()
    # The killed run has no curves.csv: its rows come from the metric history, value for value.
    killed = runs[runs["status"] == "KILLED"].iloc[0]
    rows = curves[curves["run_id"] == killed["run_id"]].set_index("epoch")
    assert 0 < len(rows) < killed["epochs"]
    for key in ("test_acc", "flip_ratio", "sign_hash", "flips.fc2"):
        history = {m.step: m.value for m in client.get_metric_history(killed["run_id"], key)}
        assert {e: rows.loc[e, key] for e in rows.index} == history
    # A finished run's rows are its curves.csv, bit for bit.
    one = done.iloc[0]
    csv = pd.read_csv(results / "artifacts" / one["grid"] / one["run_id"] / "artifacts" / "curves.csv")
    mine = curves[curves["run_id"] == one["run_id"]].reset_index(drop=True)
    for column in csv.columns:
        np.testing.assert_array_equal(mine[column].to_numpy(float), csv[column].to_numpy(float), err_msg=column)
    assert one["final_test_acc"] == csv["test_acc"].iloc[-1] and one["best_test_acc"] == csv["test_acc"].max()


def test_collect_twice_gives_identical_files(results, tmp_path):
    first = [(results / name).read_bytes() for name in ("runs.parquet", "curves.parquet")]
    collect(results)
    assert [(results / name).read_bytes() for name in ("runs.parquet", "curves.parquet")] == first


def test_collect_bad_store_exits_2_and_writes_nothing(tmp_path, capsys):
    assert collect_main(["--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mlflow.db" in err and "no such database" in err
    assert list(tmp_path.iterdir()) == []  # not even an empty database
    assert collect_main(["--results-dir", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- figures, tables, report -------------------------------------------------------------------------------
def test_every_figure_and_table_is_a_valid_file(drawn):
    import matplotlib.image

    for name in FIGURES:
        png, pdf = drawn / "figures" / f"{name}.png", drawn / "figures" / f"{name}.pdf"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300, name
        assert image[..., :3].std() > 0.05, f"{name}.png is blank"
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), name
    table = pd.read_csv(drawn / "tables" / "e8_optimizers.csv")
    assert len(table) == 8 and "reference_top1" in table.columns
    assert (drawn / "tables" / "e8_optimizers.md").read_text().count("\n| ") == 9  # header + 8 rows
    report = (drawn / "REPORT.md").read_text()
    for name in FIGURES:
        assert f"](figures/{name}.png)" in report


def test_report_e1_sign_mismatches_equal_a_recount(drawn):
    runs, curves = pd.read_parquet(drawn / "runs.parquet"), pd.read_parquet(drawn / "curves.parquet")
    e1 = finished(runs, "e1")
    key = ["binary_opt.lr", "binary_opt.weight_decay", "binary_opt.momentum", "seed"]
    pairs = e1[e1["binary_opt.name"] == "sgd"].merge(e1[e1["binary_opt.name"] == "filter"], on=key)
    assert len(pairs) == 6
    mismatched = compared = 0
    for latent, filt in zip(pairs["run_id_x"], pairs["run_id_y"]):
        a = curves[curves["run_id"] == latent].set_index("epoch")["sign_hash"]
        b = curves[curves["run_id"] == filt].set_index("epoch")["sign_hash"]
        mismatched += int((a != b).sum())
        compared += len(a)
    report = (drawn / "REPORT.md").read_text()
    match = re.search(r"\*\*(\d+)\*\* of \*\*(\d+)\*\* epoch-end sign vectors differ", report)
    assert match and (int(match[1]), int(match[2])) == (mismatched, compared)
    assert mismatched > 0  # the generated set holds some, so a count stuck at zero fails


def test_report_e2_spreads_equal_a_recomputation(drawn):
    runs = pd.read_parquet(drawn / "runs.parquet")
    e2 = finished(runs, "e2")
    e2 = e2[e2["binary_opt.weight_decay"] > 0]
    cells = e2.groupby(["binary_opt.lr", "binary_opt.weight_decay"])["final_test_acc"].mean().reset_index()
    cells["diag"] = [
        round(math.log10(a * b), 6) for a, b in zip(cells["binary_opt.lr"], cells["binary_opt.weight_decay"])
    ]
    groups = cells.groupby("diag")["final_test_acc"]
    along = np.mean([v.max() - v.min() for _, v in groups if len(v) >= 2])
    across = groups.mean().max() - groups.mean().min()
    report = (drawn / "REPORT.md").read_text()
    match = re.search(
        r"along a diagonal \(mean of max - min\): \*\*(-?[\d.]+) pp\*\*; across diagonals "
        r"\(max - min of diagonal means\): \*\*(-?[\d.]+) pp\*\*",
        report,
    )
    assert match and (match[1], match[2]) == (f"{100 * along:.2f}", f"{100 * across:.2f}")
    # The E2 caption counts the runs left out: the generated set has one failed, one killed, one running.
    assert "not drawn: 1 failed, 1 killed, 1 running" in report


def test_report_e3_forget_counts_equal_a_recount(drawn):
    runs, curves = pd.read_parquet(drawn / "runs.parquet"), pd.read_parquet(drawn / "curves.parquet")
    e3 = finished(runs, "e3")
    last = curves.sort_values("epoch").groupby("run_id")["init_forget_step"].last()
    report = (drawn / "REPORT.md").read_text()
    for wd, group in e3.groupby("binary_opt.weight_decay"):
        forgot = int(np.isfinite(group["run_id"].map(last)).sum())
        label = "without weight decay" if wd == 0 else "weight decay 5e-4"
        assert f"{label}: init forgotten in **{forgot}** of {len(group)} runs" in report


def test_e8_table_equals_means_and_stds_over_seeds(drawn):
    runs = pd.read_parquet(drawn / "runs.parquet")
    table = pd.read_csv(drawn / "tables" / "e8_optimizers.csv")
    expected = finished(runs, "e8").groupby(["data.name", "binary_opt.name"])["final_test_acc"].agg(["mean", "std"])
    labels = {"adam": "latent Adam", "sgd": "latent SGD", "bop": "Bop", "filter": "gradient filter"}
    for (dataset, optimizer), row in expected.iterrows():
        mine = table[(table["dataset"] == dataset) & (table["optimizer"] == labels[optimizer])]
        assert len(mine) == 1
        assert mine["final_test_acc_mean"].iloc[0] == pytest.approx(100 * row["mean"], abs=1e-6)
        assert mine["final_test_acc_std"].iloc[0] == pytest.approx(100 * row["std"], abs=1e-6)
    assert "—" in (drawn / "tables" / "e8_optimizers.md").read_text()  # no published number for these datasets


def test_missing_experiments_are_skipped_with_a_notice(results, tmp_path, capsys):
    runs = pq.read_table(results / "runs.parquet")
    keep = pa.compute.is_in(runs["experiment"], pa.array(["e6", "e8"]))
    pq.write_table(runs.filter(keep), tmp_path / "runs.parquet")
    shutil.copy(results / "curves.parquet", tmp_path / "curves.parquet")
    written = make_figures(tmp_path)
    out = capsys.readouterr().out
    report = (tmp_path / "REPORT.md").read_text()
    for key in ("e1", "e2", "e3", "e4", "e5", "e7"):
        assert f"{key}: no finished runs" in out and f"{key}: no finished runs" in report
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "e6_schedules.pdf",
        "e6_schedules.png",
        "e8_optimizers.pdf",
        "e8_optimizers.png",
    ]
    assert tmp_path / "REPORT.md" in written


# --- schema checked on read --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "file, column, change",
    [
        ("runs.parquet", "final_test_acc", "drop"),
        ("runs.parquet", "binary_opt.weight_decay", "drop"),
        ("curves.parquet", "epoch", "string"),
        ("runs.parquet", "seed", "string"),
    ],
)
def test_bad_schema_exits_2_naming_the_column(results, tmp_path, capsys, file, column, change):
    for name in ("runs.parquet", "curves.parquet"):
        shutil.copy(results / name, tmp_path / name)
    table = pq.read_table(tmp_path / file)
    index = table.schema.get_field_index(column)
    if change == "drop":
        table = table.remove_column(index)
    else:
        table = table.set_column(index, column, pa.compute.cast(table[column], pa.string()))
    pq.write_table(table, tmp_path / file)
    assert figures_main(["--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"column '{column}'" in err and file in err
    assert ("missing" if change == "drop" else "expected") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.parquet", "runs.parquet"]  # nothing written


def test_figures_without_parquet_or_with_unknown_preset_exit_2(results, tmp_path, capsys):
    result = wmhp("figures", "--results-dir", str(tmp_path))  # the real entry point, once
    assert result.returncode == 2 and "runs.parquet" in result.stderr and "wmhp collect" in result.stderr
    assert "Traceback" not in result.stderr
    for name in ("runs.parquet", "curves.parquet"):
        shutil.copy(results / name, tmp_path / name)
    assert figures_main(["--results-dir", str(tmp_path), "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--preset nope" in err and "synthetic" in err


def test_schema_covers_every_config_field():
    schema = runs_schema()
    assert [n for n in schema.names if n in set(field_names())] == field_names()
    assert len(set(schema.names)) == len(schema.names)
