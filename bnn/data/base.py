"""What every dataset offers the training loop (``Data``), and the in-memory implementation (``TensorData``) that
keeps a whole small dataset on the training device as uint8 pixels and normalises batch by batch."""

from __future__ import annotations

import abc
from typing import Callable, Iterator, Sequence

import torch

from bnn.config import ConfigError
from bnn.data.seeds import AUGMENT, SHUFFLE, SPLIT_SEED, epoch_generator

Batch = tuple[torch.Tensor, torch.Tensor]
# augment(a batch's raw (uint8) pixels on the device, the epoch's random draws, the batch's positions in the
# epoch order) -> augmented pixels of the same shape and dtype.
Augment = Callable[[torch.Tensor, "EpochDraws", slice], torch.Tensor]


class Data(abc.ABC):
    """A dataset as the training loop sees it. Inputs come normalised, in the run's dtype, on its device."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    n_train: int
    n_test: int
    n_val: int
    source: str  # where the files were read from, for logs

    @abc.abstractmethod
    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """One epoch of shuffled (and augmented) training batches; the order depends only on (seed, epoch)."""

    @abc.abstractmethod
    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """The test set in a fixed order, never augmented."""

    @abc.abstractmethod
    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """The validation split (held out from the training set) in a fixed order, never augmented."""

    def steps_per_epoch(self, batch_size: int) -> int:
        """How many batches train_batches yields (see epoch_order for the dropped lone example)."""
        return -(-epoch_length(self.n_train, batch_size) // batch_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, n_train={self.n_train}, n_val={self.n_val}, n_test={self.n_test}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}, source={self.source!r})")  # fmt: skip


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")


def epoch_length(n: int, batch_size: int) -> int:
    """Examples used per epoch: all, except a lone last one (BatchNorm cannot take a batch of one example)."""
    return n - 1 if batch_size > 1 and n % batch_size == 1 else n


def epoch_order(n: int, seed: int, epoch: int, batch_size: int) -> torch.Tensor:
    """The training example indices of one epoch, in order (CPU int64)."""
    check_batch_size(batch_size)
    order = torch.randperm(n, generator=epoch_generator(seed, epoch, SHUFFLE))
    return order[: epoch_length(n, batch_size)]


def split_indices(n: int, val_fraction: float, train_subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) into a training set of ``n`` examples, the same for every run seed.

    One fixed shuffle (SPLIT_SEED): its first round(val_fraction * n) examples are the validation split
    (data.val_fraction), and data.train_subset takes the first N of the rest, so the two never overlap. Both come
    back sorted, i.e. in file order (the training order is drawn per epoch anyway).
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = round(val_fraction * n)
    val, rest = order[:n_val].sort().values, order[n_val:]
    if train_subset is not None:
        if train_subset > len(rest):
            raise ConfigError(
                f"data.train_subset: expected at most {len(rest)} (the training set's {n} examples less the "
                f"{n_val} of data.val_fraction {val_fraction}), got {train_subset}"
            )
        rest = rest[:train_subset]
    return rest.sort().values, val


def split_train_val(
    images: torch.Tensor, labels: torch.Tensor, val_fraction: float, train_subset: int | None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images, labels), (validation images, labels)) by split_indices."""
    train, val = split_indices(len(labels), val_fraction, train_subset)
    return (images[train], labels[train]), (images[val], labels[val])


class EpochDraws:
    """Per-example random draws of one epoch's augmentation, made once on the CPU and indexed by position."""

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        self.generator = epoch_generator(seed, epoch, AUGMENT)
        self.n = n
        self._cache: dict[str, torch.Tensor] = {}

    def integers(self, key: str, high: int) -> torch.Tensor:
        """n ints uniform in [0, high), drawn in the order keys are first asked for."""
        if key not in self._cache:
            self._cache[key] = torch.randint(0, high, (self.n,), generator=self.generator)
        return self._cache[key]


class TensorData(Data):
    """A whole dataset held on the device as uint8 (N, C, H, W) pixels, normalised per batch."""

    def __init__(
        self,
        *,
        name: str,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
        source: str,
        augment: Augment | None = None,
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.seed = seed
        self.source = source
        self.augment = augment
        self.train_images, self.train_labels = (t.to(self.device) for t in train)
        self.test_images, self.test_labels = (t.to(self.device) for t in test)
        self.val_images, self.val_labels = (t.to(self.device) for t in val)
        self.num_classes = num_classes
        self.input_shape = tuple(self.train_images.shape[1:])
        self.n_train = len(self.train_labels)
        self.n_test = len(self.test_labels)
        self.n_val = len(self.val_labels)
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=dtype, device=self.device).reshape(shape)
        self.inv_std = 1 / torch.tensor(std, dtype=dtype, device=self.device).reshape(shape)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(self.dtype) - self.mean) * self.inv_std

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        order = epoch_order(self.n_train, self.seed, epoch, batch_size)
        draws = EpochDraws(len(order), self.seed, epoch) if self.augment is not None else None
        order = order.to(self.device)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            pixels = self.train_images[index]
            if draws is not None:  # on the raw pixels: a quarter of the memory traffic of the normalised floats
                pixels = self.augment(pixels, draws, slice(start, start + len(index)))  # type: ignore[misc]
            yield self.normalise(pixels), self.train_labels[index]

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        yield from self._fixed_batches(self.test_images, self.test_labels, batch_size)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        yield from self._fixed_batches(self.val_images, self.val_labels, batch_size)

    def _fixed_batches(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        check_batch_size(batch_size)
        for start in range(0, len(labels), batch_size):
            end = start + batch_size
            yield self.normalise(images[start:end]), labels[start:end]
