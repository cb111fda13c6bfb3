import os
from collections.abc import Iterator

import pytest

# Before any test imports Ray: no usage reporting, no token auth between local test nodes (stack.md).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests train tiny networks, often beside Ray workers on 2 cores: a second OpenMP thread per process only adds
# barrier waits (measured 10x slower per step under load). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture()
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for the test: on tiny tensors, extra threads only wait on each other on a
    shared, loaded machine (38 s instead of 2 s for test_mapping here). Use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
