"""CIFAR-10 from torchvision's python-pickle batches (cifar-10-batches-py), held whole on the device as uint8.

Training augmentation is the standard random crop (zero padding 4) + horizontal flip, done on the device for a
whole batch at once with one gather (airbench style), from per-example draws of the epoch's AUGMENT stream. A
standard torch DataLoader with torchvision transforms (``standard_loader``) is kept for comparison benchmarks.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from bnn.data.base import EpochDraws, TensorData, split_train_val
from bnn.data.errors import DatasetError
from bnn.data.seeds import SHUFFLE, epoch_generator

if TYPE_CHECKING:
    from bnn.config import DataConfig

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
ALL_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
MEAN = (0.4914, 0.4822, 0.4465)  # per channel, on the 0..1 scale, over the 50,000 training images
STD = (0.2470, 0.2435, 0.2616)
PAD = 4
IMAGE_SHAPE = (3, 32, 32)


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wmhp" / "cifar10"


def batch_dir(root: Path) -> Path:
    """root/cifar-10-batches-py (torchvision's layout), or root itself when the batch files lie directly in it."""
    nested = root / BATCH_DIR
    if not nested.is_dir() and any((root / name).exists() for name in ALL_FILES):
        return root
    return nested


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): a data file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read CIFAR-10 file ({exc.strerror})") from None
    except Exception as exc:  # a truncated pickle raises EOFError, UnpicklingError, ValueError, ...
        raise DatasetError(
            f"{path}: truncated or corrupt CIFAR-10 file ({type(exc).__name__}: {exc}); "
            f"delete {path.parent} and download it again (data.download=true)"
        ) from None
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 batch (holds a {type(content).__name__}, not a dict)")
    return content


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one pickled batch, checked."""
    content = _unpickle(path)
    data, labels = content.get("data"), content.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(f"{path}: 'labels' must be {len(data)} ints in 0..9, got shape {labels.shape}")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def read_cifar10(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from a cifar-10-batches-py directory."""
    missing = [name for name in ALL_FILES if not (directory / name).is_file()]
    if missing:
        raise DatasetError(missing_message(directory, missing))
    names = _unpickle(directory / META_FILE).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DatasetError(f"{directory / META_FILE}: expected 'label_names' with 10 class names, got {names!r}")
    train = [read_batch(directory / name) for name in TRAIN_FILES]
    x_test, y_test = read_batch(directory / TEST_FILE)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def missing_message(directory: Path, missing: list[str]) -> str:
    return (
        f"CIFAR-10: {directory} lacks {', '.join(missing)} (needs {', '.join(ALL_FILES)}). Point data.root at the "
        f"directory holding torchvision's {BATCH_DIR}, or set data.download=true to download it there."
    )


def find_or_download(root: str | Path | None, allow_download: bool) -> Path:
    """The batch directory under ``root`` (default ~/.cache/wmhp/cifar10), downloading only when allowed."""
    base = Path(root).expanduser() if root is not None else default_root()
    directory = batch_dir(base)
    missing = [name for name in ALL_FILES if not (directory / name).is_file()]
    if missing and allow_download:
        import torchvision

        try:
            torchvision.datasets.CIFAR10(str(base), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DatasetError(f"{missing_message(directory, missing)} The download failed: {exc}") from None
        directory = base / BATCH_DIR
    return directory


def crop_flip(pixels: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-example crop at offsets (dy, dx) of the zero-padded images, mirrored where ``flip``: two gathers, one
    along the rows and one along the (possibly reversed) columns, for the whole batch at once."""
    b, c, h, w = pixels.shape
    device = pixels.device
    padded = F.pad(pixels, (pad, pad, pad, pad))
    rows = dy.to(device)[:, None] + torch.arange(h, device=device)
    padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    columns = torch.arange(w, device=device)
    columns = dx.to(device)[:, None] + torch.where(flip.to(device)[:, None], w - 1 - columns, columns)
    return padded.gather(3, columns[:, None, None, :].expand(b, c, h, w))


def augment_crop_flip(pixels: torch.Tensor, draws: EpochDraws, positions: slice) -> torch.Tensor:
    """Random crop (pad PAD) + horizontal flip with this epoch's draws for the examples at ``positions``."""
    dy = draws.integers("dy", 2 * PAD + 1)[positions]
    dx = draws.integers("dx", 2 * PAD + 1)[positions]
    flip = draws.integers("flip", 2)[positions].bool()
    return crop_flip(pixels, dy, dx, flip, PAD)


def load_cifar10_data(cfg: DataConfig, device: torch.device, dtype: torch.dtype, seed: int) -> TensorData:
    directory = find_or_download(cfg.root, cfg.download)
    x_train, y_train, x_test, y_test = read_cifar10(directory)
    train, val = split_train_val(torch.from_numpy(x_train), torch.from_numpy(y_train), cfg.val_fraction,
                                 cfg.train_subset)
    return TensorData(
        name="cifar10",
        train=train,
        val=val,
        test=(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        mean=[m * 255 for m in MEAN],
        std=[s * 255 for s in STD],
        device=device,
        dtype=dtype,
        seed=seed,
        source=str(directory),
        augment=augment_crop_flip if cfg.augment else None,
    )


class _ArrayImages(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as PIL images through torchvision transforms: the usual CPU input pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:  # type: ignore[no-untyped-def]
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def standard_loader(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """The textbook CIFAR-10 pipeline: a DataLoader with RandomCrop(32, padding=4), RandomHorizontalFlip,
    ToTensor and Normalize in worker processes. For benchmarks against the on-device path."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=PAD), transforms.RandomHorizontalFlip()] if train else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(
        _ArrayImages(images, labels, transform),
        batch_size=batch_size,
        shuffle=train,
        generator=epoch_generator(seed, epoch, SHUFFLE),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
