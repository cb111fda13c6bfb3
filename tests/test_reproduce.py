"""`wmhp reproduce`, the README's main job, end to end on the smoke preset (real Ray, MLflow, parquet, figures)."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_reproduce_smoke_writes_parquet_figures_and_report(tmp_path):
    cmd = [sys.executable, "-m", "wmhp.cli", "reproduce", "--preset", "smoke", "--results-dir", str(tmp_path),
           "--grids", "e1", "e8"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs.parquet").stat().st_size > 0 and (tmp_path / "curves.parquet").stat().st_size > 0
    assert (tmp_path / "figures" / "e1_equivalence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tables" / "e8_optimizers.csv").exists()
    assert "## E1" in (tmp_path / "REPORT.md").read_text()
    assert str(tmp_path / "REPORT.md") in result.stdout
