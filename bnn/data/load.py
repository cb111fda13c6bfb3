"""load_data: the dataset named by DataConfig.name, ready for the training loop."""

from __future__ import annotations

import torch

from bnn.config import ConfigError, DataConfig
from bnn.data.base import Data

DATASETS = ("digits", "fashion-mnist", "cifar10", "imagenet")


def load_data(cfg: DataConfig, device: torch.device, dtype: torch.dtype, seed: int) -> Data:
    """The dataset of ``cfg``: inputs normalised, in ``dtype``, on ``device``; labels int64 on ``device``.

    Training order and augmentation depend only on (seed, epoch); the train/validation/test
    split and data.train_subset are fixed for all seeds. Raises DatasetError when files are missing or unreadable, ConfigError for bad settings.
    """
    device = torch.device(device)
    if cfg.name == "digits":
        from bnn.data.digits import load_digits_data

        return load_digits_data(cfg.train_subset, cfg.val_fraction, device, dtype, seed)
    if cfg.name == "fashion-mnist":
        from bnn.data.fashion_mnist import load_fashion_mnist_data

        return load_fashion_mnist_data(cfg, device, dtype, seed)
    if cfg.name == "cifar10":
        from bnn.data.cifar10 import load_cifar10_data

        return load_cifar10_data(cfg, device, dtype, seed)
    if cfg.name == "imagenet":
        from bnn.data.imagenet import load_imagenet_data

        return load_imagenet_data(cfg, device, dtype, seed)
    raise ConfigError(f"data.name: expected one of {', '.join(DATASETS)}, got {cfg.name!r}")
