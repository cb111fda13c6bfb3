"""pipeline.plan.classify, the one decision of done / adopt / run / resume, and LaunchOptions: pure, so no Ray
and no MLflow here."""

from __future__ import annotations

import io
from pathlib import Path

import dataclasses

import pytest

from pipeline.cost import trial_seconds
from pipeline.grids import GridError, load_cells
from pipeline.options import LaunchOptions
from pipeline.plan import GridSummary, classify, pending, print_table
from pipeline.search import Param, Space
from pipeline.search_run import TpeJob
from pipeline.tracking import FinishedRun
from pipeline.trial import Resumable

LRS = {"c1": 0.1, "c2": 0.2, "c3": 0.3, "c4": 0.4, "c5": 0.5}


def grid_file(tmp_path: Path, name: str, cells: list[str]) -> str:
    values = ", ".join(str(LRS[c]) for c in cells)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nexperiment: e0\nbase: {{binary_opt.name: sgd, epochs: 3}}\n"
                    f"axes: {{binary_opt.lr: [{values}]}}\npresets: {{smoke: {{}}}}\n")
    return str(path)


def loaded_grids(tmp_path: Path, grids: dict[str, list[str]]):
    loaded = load_cells([grid_file(tmp_path, name, cells) for name, cells in grids.items()], "smoke")
    by_name = {f"{grid.name}.{c}": cell for grid, cells in loaded for c, cell in zip(grids[grid.name], cells)}
    return loaded, by_name


def counts(g: GridSummary) -> tuple[int, ...]:
    return g.cells, g.already_done, g.adopted, g.to_run, g.shared, g.resumed


def test_every_cell_is_done_adopted_or_run_and_a_shared_cell_is_one_trial(tmp_path: Path) -> None:
    loaded, cell = loaded_grids(tmp_path, {"a": ["c1", "c2", "c3", "c4"], "b": ["c2", "c3", "c5"]})
    h = {name.split(".")[1]: c.hash for name, c in cell.items()}
    elsewhere = FinishedRun("r2", "9", "other", h["c2"])
    finished = {h["c1"]: [FinishedRun("r1", "1", "a", h["c1"])], h["c2"]: [elsewhere]}
    assert pending(loaded, finished) == {h["c3"], h["c4"], h["c5"]}
    one_epoch = Resumable("st", "st/x/cell-c4/checkpoint_000000", [{"epoch": 1.0}])
    plan = classify(loaded, finished, {h["c4"]: one_epoch, h["c1"]: one_epoch})

    a, b = plan.grids
    assert (a.name, counts(a)) == ("a", (4, 1, 1, 2, 0, 1))
    assert (b.name, counts(b)) == ("b", (3, 0, 1, 2, 1, 0))
    assert plan.adopt == [(elsewhere, cell["a.c2"]), (elsewhere, cell["b.c2"])]
    assert plan.targets == {h["c3"]: [cell["a.c3"], cell["b.c3"]], h["c4"]: [cell["a.c4"]], h["c5"]: [cell["b.c5"]]}
    assert plan.resumable == {h["c4"]: one_epoch}  # a finished cell's checkpoint is not resumed
    assert plan.trials == 3 == a.trials + b.trials
    config = cell["a.c3"].config
    assert a.estimate_s == trial_seconds(config) + trial_seconds(config, epochs_done=1)
    assert b.estimate_s == trial_seconds(config)  # the shared c3 is timed once, at the first grid


def test_the_shared_trial_is_counted_at_the_first_grid_in_launch_order(tmp_path: Path) -> None:
    loaded, _ = loaded_grids(tmp_path, {"b": ["c3", "c5"], "a": ["c3"]})
    plan = classify(loaded, {}, {})
    assert [(g.name, g.to_run, g.shared, g.trials) for g in plan.grids] == [("b", 2, 0, 2), ("a", 1, 1, 0)]


def test_a_cell_finished_in_its_own_grid_and_elsewhere_is_done_not_adopted(tmp_path: Path) -> None:
    loaded, cell = loaded_grids(tmp_path, {"a": ["c1"]})
    digest = cell["a.c1"].hash
    runs = [FinishedRun("x", "2", "other", digest), FinishedRun("y", "1", "a", digest)]
    plan = classify(loaded, {digest: runs}, {})
    assert counts(plan.grids[0]) == (1, 1, 0, 0, 0, 0) and plan.adopt == [] and plan.trials == 0


def test_tpe_trials_count_as_cells_of_their_search_grid(tmp_path: Path) -> None:
    loaded, _ = loaded_grids(tmp_path, {"a": ["c1"], "b": ["c2"]})
    space = Space("filter", {}, (Param("binary_opt.alpha", "loguniform", (1e-2, 1.0)),))
    jobs = [TpeJob("b", "e0", space, repeat, 0, "val_acc", 3, 1, {}) for repeat in (0, 1)]
    jobs[0].points += [{"binary_opt.alpha": 0.1}] * 2  # finished before
    plan = classify(loaded, {}, {}, jobs)
    a, b = plan.grids
    assert counts(a) == (1, 0, 0, 1, 0, 0)
    assert counts(b) == (1 + 6, 2, 0, 1 + 4, 0, 0)
    assert plan.trials == 1 + 1 + 4 == a.trials + b.trials


def test_table_prints_each_count_and_the_totals(tmp_path: Path) -> None:
    loaded, _ = loaded_grids(tmp_path, {"a": ["c1", "c3"], "b": ["c3"]})
    out = io.StringIO()
    print_table(classify(loaded, {}, {}).grids, out)
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert rows[0][:7] == ["grid", "cells", "done", "adopt", "to", "run", "shared"]
    assert [r[:7] for r in rows[1:]] == [["a", "2", "0", "0", "2", "0", "0"], ["b", "1", "0", "0", "1", "1", "0"],
                                         ["total", "3", "0", "0", "3", "1", "0"]]


@pytest.mark.parametrize("fields, flag", [
    ({"max_failures": -1}, "--max-failures"), ({"num_cpus": 0}, "num_cpus"),
    ({"cpus_per_trial": 3.0, "num_cpus": 2}, "--cpus-per-trial 3"), ({"fault": "nodir"}, "WMHP_FAULT_ONCE"),
])
def test_launch_options_are_checked_once_when_made(fields: dict, flag: str) -> None:
    with pytest.raises(GridError, match=flag):
        LaunchOptions(**fields)
    options = LaunchOptions(cpus_per_trial=3.0, num_cpus=8, max_concurrent=2, fault=None)
    assert options.trial_options() == {"threads": 3, "fault_once": None, "fault_kill": False}
    assert (options.concurrency(8), options.concurrency(2)) == (2, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_failures = 5  # type: ignore[misc]
