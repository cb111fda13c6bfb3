"""Datasets by name: ``load_data(cfg, device, dtype, seed) -> Data`` (digits, fashion-mnist, cifar10, imagenet).

Attributes are imported lazily so that ``python -m bnn.data.fashion_mnist_setup`` runs without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bnn.data.errors import DatasetError

if TYPE_CHECKING:
    from bnn.data.base import Data, TensorData
    from bnn.data.load import DATASETS, load_data

__all__ = ["DATASETS", "Data", "DatasetError", "TensorData", "load_data"]

_LAZY = {"Data": "bnn.data.base", "TensorData": "bnn.data.base", "load_data": "bnn.data.load",
         "DATASETS": "bnn.data.load"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bnn.data' has no attribute {name!r}")
