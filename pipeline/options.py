"""How a launch runs (``wmhp ablate``'s flags) as one frozen value, checked once, when it is made."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from pipeline.grids import GridError
from pipeline.trial import FAULT_ENV, FAULT_KILL_ENV, TrialOptions, parse_fault_spec


class LaunchError(RuntimeError):
    """The launch cannot proceed (another driver holds the results dir, Ray cannot be reached, ...)."""


@dataclass(frozen=True)
class LaunchOptions:
    """Where results go and how trials are placed. Bad values raise GridError naming the flag (exit 2)."""

    tracking_uri: str | None = None  # default: sqlite:///<results dir>/mlflow.db
    storage: str | None = None  # Tune storage, shared by all nodes (default: <results dir>/ray)
    address: str | None = None  # Ray cluster; None starts a local Ray
    num_cpus: int | None = None  # CPUs of that local Ray (default: the machine's)
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0  # also the trial's torch threads
    max_concurrent: int | None = None
    max_failures: int = 2  # retries of a failing trial, each from its last checkpoint
    # Test hooks (pipeline.trial): read from the environment, so that a subprocess launch can be faulted too.
    fault: str | None = field(default_factory=lambda: os.environ.get(FAULT_ENV))
    fault_kill: bool = field(default_factory=lambda: os.environ.get(FAULT_KILL_ENV) == "1")

    def __post_init__(self) -> None:
        gpus, cpus = self.gpus_per_trial, self.cpus_per_trial
        if not (gpus >= 0 and math.isfinite(gpus)):
            raise GridError(f"--gpus-per-trial: expected a finite number >= 0 (fractions share a GPU), got {gpus}")
        if not (cpus > 0 and math.isfinite(cpus)):
            raise GridError(f"--cpus-per-trial: expected a finite number > 0, got {cpus}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise GridError(f"--max-concurrent: expected an int >= 1, got {self.max_concurrent}")
        if self.max_failures < 0:
            raise GridError(f"--max-failures: expected an int >= 0, got {self.max_failures}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise GridError(f"num_cpus: expected an int >= 1, got {self.num_cpus}")
        if self.address is None and cpus > self.local_cpus:  # Tune would wait for ever for a node that big
            raise GridError(f"--cpus-per-trial {cpus:g}: local Ray has {self.local_cpus} CPUs; ask for at most "
                            f"{self.local_cpus}, or run on a cluster (--address)")
        address = self.address
        if address not in (None, "auto", "local") and "://" not in address:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise GridError(f"--address {address}: expected host:port of a Ray head, 'auto', or ray://host:port")
        try:
            parse_fault_spec(self.fault)
        except ValueError as exc:
            raise GridError(str(exc)) from None

    @property
    def local_cpus(self) -> int:
        return self.num_cpus or os.cpu_count() or 1

    @property
    def gpu(self) -> bool:
        return self.gpus_per_trial > 0

    @property
    def resources(self) -> dict[str, float]:
        """One trial's Ray resources."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def trial_options(self) -> TrialOptions:
        return {"threads": max(1, int(self.cpus_per_trial)), "fault_once": self.fault, "fault_kill": self.fault_kill}

    def concurrency(self, cpus: float, gpus: float = 0.0) -> int:
        """Trials that fit at once in ``cpus`` / ``gpus``, capped by --max-concurrent (at least 1)."""
        slots = int(cpus // self.cpus_per_trial)
        if self.gpus_per_trial > 0:
            slots = min(slots, int(gpus // self.gpus_per_trial))
        slots = max(1, slots)
        return min(slots, self.max_concurrent) if self.max_concurrent else slots
