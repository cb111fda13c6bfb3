"""Test-only fault points in the driver, for the fault matrix of tests/test_pipeline_kill.py.

``WMHP_FAULT_DRIVER=<point>:<n>`` makes the driver SIGKILL itself the n-th time it reaches ``<point>`` (as an OOM
kill or a lost head node would end it, with no Python cleanup). Points:

- ``end_run``: a run's metrics and artifacts are logged, its terminal status (FINISHED) is not.

The trial-side hooks (``WMHP_FAULT_ONCE``, ``WMHP_FAULT_KILL``) are in pipeline/trial.py.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

DRIVER_FAULT_ENV = "WMHP_FAULT_DRIVER"
POINTS = ("end_run",)
_reached: Counter[str] = Counter()


def driver_fault_point(point: str) -> None:
    """SIGKILL this process if ``WMHP_FAULT_DRIVER`` names ``point`` and this is its n-th arrival there."""
    spec = os.environ.get(DRIVER_FAULT_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{DRIVER_FAULT_ENV}: expected <point>:<n >= 1> with point one of {', '.join(POINTS)}, "
                         f"got {spec[:200]!r}")
    _reached[point] += 1
    if name == point and _reached[point] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
