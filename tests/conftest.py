import os

# Before any test imports Ray: no usage reporting, no token auth between local test nodes (stack.md).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests train tiny networks, often beside Ray workers on 2 cores: a second OpenMP thread per process only adds
# barrier waits (measured 10x slower per step under load). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
