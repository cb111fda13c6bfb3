"""benchmarks/gpu_check.sh --cpu: the prepared GPU check runs end to end at small sizes and writes its report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_mode_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "gpu.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in report
    # (a) E1: three epochs, no sign mismatch, and the weights did flip.
    rows = re.findall(r"^\| (\d) \| (\d+) \| ([0-9.e-]+) \|", report, re.M)
    assert [int(e) for e, _, _ in rows] == [1, 2, 3] and all(int(m) == 0 for _, m, _ in rows)
    assert all(float(f) > 0 for _, _, f in rows)
    assert "total sign mismatches: 0" in report
    # (b) both loaders timed.
    for loader in ("on-device", "torch DataLoader"):
        assert float(re.search(rf"^\| {loader} \| ([0-9.]+) \|", report, re.M).group(1)) > 0
    # (c) the filter step against the official one, identical signs.
    assert re.search(r"official step [0-9.]+ ms, GradientFilter.step [0-9.]+ ms", report)
    assert "sign mismatches vs the unfused reference after 3 steps: 0" in report
    # (d) the 4-trial grid through wmhp ablate.
    assert "ok (rc 0)" in report and "4 finished, 0 failed" in report


def test_gpu_check_refuses_without_cuda_unless_cpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from benchmarks.gpu_check import main

    assert main(["--out", str(tmp_path / "gpu.md")]) == 1
    assert not (tmp_path / "gpu.md").exists()
