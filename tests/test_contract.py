"""wmhp.contract: the one statement of the stored-results layout that pipeline/ writes and analysis/ reads."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wmhp import contract

ROOT = Path(__file__).resolve().parent.parent


def test_contract_imports_no_torch_mlflow_ray_pipeline_or_analysis() -> None:
    code = "import sys, wmhp.contract; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "'wmhp'" in loaded
    for heavy in ("torch", "mlflow", "ray", "pipeline", "analysis"):
        assert f"'{heavy}'" not in loaded, heavy


def test_each_contract_string_is_spelled_once_outside_tests() -> None:
    """A tag name, file name or the experiment prefix written as a literal anywhere else would be a second copy of
    the contract, free to drift."""
    names = [value for name, value in vars(contract).items() if name.startswith("TAG_") and name != "TAG_PREFIX"]
    names += [contract.EXPERIMENT_PREFIX, contract.CHECKPOINT_FILE, contract.HISTORY_FILE, contract.CURVES_FILE,
              contract.CONFIG_FILE, contract.RUNS_PARQUET, contract.CURVES_PARQUET, contract.TRACKING_DB]
    sources = [p for d in ("bnn", "pipeline", "analysis", "wmhp", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    text = {p: p.read_text() for p in sources}
    for name in names:
        literal = re.compile(rf"[\"']{re.escape(name)}[\"']")
        places = [str(p.relative_to(ROOT)) for p, t in text.items() for _ in literal.finditer(t)]
        assert len(places) == 1, (name, places)


def test_analysis_curve_columns_are_the_metrics_bnn_reports() -> None:
    from analysis.schema import EPOCH_METRICS, curves_schema
    from bnn.outputs import METRIC_NAMES

    assert ("epoch", *EPOCH_METRICS) == METRIC_NAMES
    assert set(METRIC_NAMES) <= set(curves_schema().names)


@pytest.mark.parametrize(
    "swept, seed, name",
    [
        ({"binary_opt.alpha": 1e-3, "binary_opt.gamma": 0.1, "seed": 0}, 0, "e5 alpha=1e-3 gamma=0.1 seed=0"),
        ({"binary_opt.name": "frozen"}, 2, "e5 binary_opt=frozen seed=2"),  # a section's name goes by the section
        ({"binary_opt.lr": 1.0, "real_opt.lr": 5e-4, "init.scale": 2.0202e-3, "binary_opt.alpha": None}, 1,
         "e5 binary_opt.lr=1 real_opt.lr=5e-4 scale=2.0202e-3 seed=1"),  # shared short names spelled out; None left out
        ({"model.hidden": [64, 32], "data.augment": False, "epochs": 3}, 0,
         "e5 hidden=64x32 augment=false epochs=3 seed=0"),
    ],
)
def test_run_names_say_the_cell(swept, seed, name) -> None:
    assert contract.run_name("e5", swept, seed) == name


def test_run_names_are_unique_within_every_builtin_grid() -> None:
    from pipeline.grids import load_cells

    grids = [f"e{n}" for n in range(1, 9)]  # e9's cells are numbered samples; its pools would load Ray Tune
    for grid, cells in load_cells(grids, "cpu", check_paths=False):
        names = [cell.run_name for cell in cells]
        assert len(set(names)) == len(names), grid.name
        assert all(name.startswith(f"{grid.experiment} ") and "seed=" in name for name in names)


def test_curves_csv_round_trip(tmp_path: Path) -> None:
    history = [
        {"epoch": 2.0, "test_acc": 0.5, "alpha": math.nan, "sign_hash": 2.0**51 + 1, "flips.fc": 0.25},
        {"epoch": 1.0, "test_acc": 0.25, "alpha": math.nan, "sign_hash": 7.0, "flips.fc": 0.5},
        {"epoch": 2.0, "test_acc": 0.75, "alpha": math.nan, "sign_hash": 9.0, "flips.fc": 0.125},  # a retried epoch
    ]
    path = tmp_path / contract.CURVES_FILE
    contract.write_curves(history, path)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "test_acc", "alpha", "flips.fc", "sign_hash"]
    assert rows[1] == ["1", "0.25", "nan", "0.5", "7"]
    assert rows[2] == ["2", "0.5", "nan", "0.25", str(2**51 + 1)]  # exact integers survive
    other = tmp_path / "other.csv"
    contract.write_curves(history[1:2], other)
    (curve, single) = contract.read_curves([path, other])  # one batch: the same header
    assert curve["epoch"].tolist() == [1.0, 2.0]
    assert curve["test_acc"].tolist() == [0.25, 0.75] and curve["sign_hash"][1] == 9.0  # the retry's row wins
    assert np.isnan(curve["alpha"]).all() and single["test_acc"].tolist() == [0.25]
    bad = tmp_path / "bad.csv"
    bad.write_text("test_acc\n0.5\n")
    with pytest.raises(contract.CurvesError, match=re.escape(str(bad))):
        contract.read_curves([other, bad])


def test_paged_search_reads_every_page() -> None:
    class Page(list):
        def __init__(self, items: list[int], token: str | None) -> None:
            super().__init__(items)
            self.token = token

    pages = {None: Page([1, 2], "a"), "a": Page([3], "b"), "b": Page([], None)}
    assert list(contract.paged(pages.__getitem__)) == [1, 2, 3]


def test_a_cell_differing_outside_its_swept_fields_gets_a_hashed_name(tmp_path: Path) -> None:
    """Same swept values, another config (a --set override, another preset): the name gets a short hash, in this
    launch and in the next; a rerun of the same cell keeps its name."""
    from pipeline.grids import expand, find_grid, load_grid
    from pipeline.tracking import Tracker, create_sqlite_store

    grid = load_grid(find_grid("e5"))
    plain, changed = expand(grid, "smoke")[0], expand(grid, "smoke", {"epochs": 1})[0]
    assert plain.run_name == changed.run_name and plain.hash != changed.hash
    db = tmp_path / contract.TRACKING_DB
    create_sqlite_store(db)
    names = []
    for _launch in range(2):
        tracker = Tracker(contract.default_tracking_uri(tmp_path), tmp_path)
        eid = tracker.ensure_experiment(grid.name)
        for cell in (plain, changed):
            run_id = tracker.start_run(eid, cell, "smoke")
            names.append(tracker.client.get_run(run_id).info.run_name)
    hashed = contract.with_hash(plain.run_name, changed.hash)
    assert names == [plain.run_name, hashed] * 2
