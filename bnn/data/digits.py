"""scikit-learn's bundled digits (1,797 8x8 images, 10 classes): the tiny dataset of smoke runs and fast tests."""

from __future__ import annotations

import numpy as np
import torch

from bnn.data.base import TensorData, split_train_val
from bnn.data.seeds import SPLIT_SEED

TEST_FRACTION = 0.2


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): one stratified split, fixed by SPLIT_SEED.

    Images are uint8 (N, 1, 8, 8) with values 0..16.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def load_digits_data(
    train_subset: int | None, val_fraction: float, device: torch.device, dtype: torch.dtype, seed: int
) -> TensorData:
    x_train, y_train, x_test, y_test = digits_split()
    # One global mean/std over the training pixels: the split is fixed, so these are constants.
    mean, std = float(x_train.mean()), float(x_train.std())
    train, val = split_train_val(torch.from_numpy(x_train), torch.from_numpy(y_train), val_fraction, train_subset)
    return TensorData(
        name="digits",
        train=train,
        val=val,
        test=(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        mean=[mean],
        std=[std],
        device=device,
        dtype=dtype,
        seed=seed,
        source="sklearn.datasets.load_digits",
    )
