"""Rough cost of a cell, for ``--dry-run`` estimates, longest-first scheduling and the progress ETA.

The model: seconds = epochs * (examples * MACs per example * passes / throughput + steps * step overhead)
+ start-up. The CPU constants were measured for the MLP (one thread per trial); the GPU numbers are
order-of-magnitude guesses for the cluster presets. The ETA only uses *relative* costs, re-scaled
by the time the finished epochs actually took, so it does not depend on these constants being right.
"""

from __future__ import annotations

import itertools
import math

from bnn.config import TrainConfig
from bnn.data.splits import TEST_SIZES, TRAIN_SIZES
INPUT_SIZES = {"digits": 64, "fashion-mnist": 784, "cifar10": 3072, "imagenet": 150528}
CLASSES = {"digits": 10, "fashion-mnist": 10, "cifar10": 10, "imagenet": 1000}
CONV_MACS = {"resnet20": 41e6, "reactnet_a": 4.8e9}  # per example, 32x32 and 224x224 inputs

# Measured on a shared, loaded 2-core machine (2026-11-25): a Fashion-MNIST MLP epoch (20000 examples,
# hidden 256x256, batch 128, one thread) took 2.4 s, a digits epoch (64x64, batch 64) 0.11 s. A training
# example costs ~3 forward passes (forward, backward, update).
CPU_MACS_PER_S = 1.0e10  # one thread, float32 dense layers
CPU_STEP_OVERHEAD_S = 4e-3  # optimizer step + flip statistics + Python, per batch
GPU_MACS_PER_S = 2.0e12
GPU_STEP_OVERHEAD_S = 4e-3
TRIAL_START_S = 3.0  # dataset load + model build inside a trial


def macs_per_example(config: TrainConfig) -> float:
    if config.model.name == "mlp":
        widths = [INPUT_SIZES[config.data.name], *config.model.hidden, CLASSES[config.data.name]]
        return float(sum(a * b for a, b in itertools.pairwise(widths)))
    return CONV_MACS[config.model.name]


def train_examples(config: TrainConfig) -> int:
    full = TRAIN_SIZES[config.data.name] - val_examples(config)
    return min(full, config.data.train_subset) if config.data.train_subset is not None else full


def val_examples(config: TrainConfig) -> int:
    return round(config.data.val_fraction * TRAIN_SIZES[config.data.name])


def epoch_seconds(config: TrainConfig, gpu: bool = False) -> float:
    """Estimated wall time of one epoch of ``config`` on one CPU thread (or one GPU)."""
    n_train = train_examples(config)
    n_eval = TEST_SIZES[config.data.name] + val_examples(config)
    steps = math.ceil(n_train / config.batch_size)
    throughput = GPU_MACS_PER_S if gpu else CPU_MACS_PER_S
    overhead = GPU_STEP_OVERHEAD_S if gpu else CPU_STEP_OVERHEAD_S
    dtype_factor = 2.0 if config.dtype == "float64" else 1.0
    compute = (3 * n_train + n_eval) * macs_per_example(config) * dtype_factor / throughput
    return compute + steps * overhead


def trial_seconds(config: TrainConfig, gpu: bool = False, epochs_done: int = 0) -> float:
    """Estimated wall time of the epochs of ``config`` not done yet, start-up included."""
    return TRIAL_START_S + max(0, config.epochs - epochs_done) * epoch_seconds(config, gpu)


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``4:05``: compact, fixed-width enough for log lines."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
