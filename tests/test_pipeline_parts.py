"""Pipeline parts that need neither Ray nor MLflow: checkpoint discovery, curves, the fault hook, the lock."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.runner import LaunchError, _launch_lock
from pipeline.trial import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    InjectedFault,
    find_resumable,
    maybe_fault,
    parse_fault_spec,
    read_history,
    write_history,
)


def checkpoint(storage: Path, launch: str, digest: str, index: int, epochs: int) -> Path:
    directory = storage / launch / f"cell-{digest}" / f"checkpoint_{index:06d}"
    directory.mkdir(parents=True)
    (directory / CHECKPOINT_FILE).write_bytes(b"x" * (100 + epochs))
    write_history(directory, [{"epoch": float(e), "test_acc": 0.1 * e} for e in range(1, epochs + 1)])
    return directory


def test_find_resumable_takes_the_most_advanced_complete_checkpoint(tmp_path: Path) -> None:
    checkpoint(tmp_path, "ablate-1", "aaaa", 0, 1)
    checkpoint(tmp_path, "ablate-1", "aaaa", 1, 2)
    newest = checkpoint(tmp_path, "ablate-2", "aaaa", 0, 3)
    cut_short = checkpoint(tmp_path, "ablate-2", "aaaa", 1, 4)
    (cut_short / CHECKPOINT_FILE).write_bytes(b"partial")  # a copy interrupted by the kill: size no longer matches
    no_history = checkpoint(tmp_path, "ablate-3", "aaaa", 0, 5)
    (no_history / HISTORY_FILE).unlink()
    checkpoint(tmp_path, "ablate-1", "bbbb", 0, 2)
    checkpoint(tmp_path, "ablate-1", "cccc", 0, 2)  # not asked for

    found = find_resumable(str(tmp_path), {"aaaa", "bbbb", "dddd"})
    assert sorted(found) == ["aaaa", "bbbb"]
    assert found["aaaa"].path == str(newest) and found["aaaa"].epochs == 3
    assert [row["epoch"] for row in found["aaaa"].history] == [1.0, 2.0, 3.0]
    assert find_resumable(str(tmp_path / "missing"), {"aaaa"}) == {}


def test_history_round_trips_with_nan(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"state")
    write_history(tmp_path, [{"epoch": 1.0, "alpha": math.nan}])
    assert json.loads((tmp_path / HISTORY_FILE).read_text(), parse_constant=str)["state_bytes"] == 5
    (row,) = read_history(tmp_path)
    assert row["epoch"] == 1.0 and math.isnan(row["alpha"])


def test_fault_hook_fires_once_per_cell_at_its_epoch(tmp_path: Path) -> None:
    spec = parse_fault_spec(f"{tmp_path}:2")
    maybe_fault(spec, "aaaa", 1)
    with pytest.raises(InjectedFault):
        maybe_fault(spec, "aaaa", 2)
    maybe_fault(spec, "aaaa", 2)  # the retry passes
    with pytest.raises(InjectedFault):
        maybe_fault(spec, "bbbb", 2)
    assert parse_fault_spec(None) is None
    for bad in ("nodir", f"{tmp_path}:x", f"{tmp_path}:0", ":3"):
        with pytest.raises(ValueError, match="WMHP_FAULT_ONCE"):
            parse_fault_spec(bad)


def test_one_driver_per_results_dir(tmp_path: Path) -> None:
    with _launch_lock(tmp_path):
        with pytest.raises(LaunchError, match="another `wmhp ablate`"):
            with _launch_lock(tmp_path):
                pass
    with _launch_lock(tmp_path):  # released on exit
        pass
