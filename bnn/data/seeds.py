"""Random streams derived only from (run seed, epoch): the batch order and augmentation of epoch e are the same
whether the run got there in one go or was resumed after epoch e - 1."""

from __future__ import annotations

import numpy as np
import torch

SHUFFLE = 0
AUGMENT = 1
WORKERS = 2
# The train/test split and train_subset use this seed, not the run seed, so all runs share one test set.
SPLIT_SEED = 20230306


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative ints (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one stream of one epoch; its draws are moved to the data's device afterwards."""
    return torch.Generator().manual_seed(derived_seed(seed, epoch, stream))
