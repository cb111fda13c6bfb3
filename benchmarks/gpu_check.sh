#!/usr/bin/env bash
# The prepared GPU check of issue 10: benchmarks/gpu_check.sh [--cpu] [--out PATH] (default results/bench/gpu.md).
# Under 8 minutes on one GPU; --cpu runs the same four parts at small sizes (the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
# Read by cuBLAS at a process's first call: set before Python starts (TrainConfig.deterministic needs it).
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The project's virtualenv (make install) unless PYTHON names another interpreter with torch.
default_python=python3
[ -x .venv/bin/python ] && default_python=.venv/bin/python
exec "${PYTHON:-$default_python}" -m benchmarks.gpu_check "$@"
