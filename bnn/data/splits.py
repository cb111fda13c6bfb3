"""Split sizes from a DataConfig alone (no torch, no files), for logging a run's dataset before it loads.

Full sizes are the datasets' published ones (digits: scikit-learn's 1,797 images less the fixed 20 % test
split); the validation split and train_subset follow bnn.data.base.split_indices (a test ties them). ImageNet's
sizes depend on the folder tree it is pointed at, so they are not known here.
"""

from __future__ import annotations

import hashlib
import json

from bnn.config import DataConfig

# Where a dataset comes from when data.root is unset (a description for people, not a path the code opens).
DEFAULT_SOURCES = {"digits": "sklearn.datasets.load_digits", "fashion-mnist": "Fashion-MNIST (Debian package or "
                   "wmhp cache)", "cifar10": "CIFAR-10 python batches (wmhp cache)"}
# Published sizes of each training and test set (imagenet: ILSVRC-2012; a folder may hold fewer, so a run's own
# imagenet sizes are not claimed from these).
TRAIN_SIZES = {"digits": 1437, "fashion-mnist": 60000, "cifar10": 50000, "imagenet": 1281167}
TEST_SIZES = {"digits": 360, "fashion-mnist": 10000, "cifar10": 10000, "imagenet": 50000}


def split_sizes(cfg: DataConfig) -> dict[str, int] | None:
    """``{"train": n, "validation": n, "test": n}`` as a run sees them; None when the data decides (imagenet)."""
    if cfg.name == "imagenet":
        return None
    n, n_test = TRAIN_SIZES[cfg.name], TEST_SIZES[cfg.name]
    n_val = round(cfg.val_fraction * n)
    n_train = n - n_val if cfg.train_subset is None else min(cfg.train_subset, n - n_val)
    return {"train": n_train, "validation": n_val, "test": n_test}


def split_digest(cfg: DataConfig) -> str:
    """Names the examples a run trains, selects and tests on: dataset, validation fraction, subset (the split
    seed is a code constant, bnn.data.seeds.SPLIT_SEED, so code_version covers it)."""
    key = {"name": cfg.name, "val_fraction": cfg.val_fraction, "train_subset": cfg.train_subset}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
