"""ImageNet (or any image-classification tree) from torchvision ImageFolder directories ``train/`` and ``val/``.

Standard augmentations (paper.md section 4): RandomResizedCrop(224) + Lighting (PCA colour noise, alphastd 0.1,
ImageNet's eigenvalues and eigenvectors as in the official code's imagenet/utils/utils.py) + horizontal flip for
training, Resize(256) + CenterCrop(224) for validation. Images are decoded in DataLoader workers. Determinism: the epoch's order comes
from (seed, epoch), and each example's augmentation from its own seed (seed, epoch, index), so the batches are the
same whatever data.num_workers is and however often the run was resumed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from bnn.data.base import Batch, Data, epoch_order, split_indices
from bnn.data.errors import DatasetError
from bnn.data.seeds import AUGMENT, WORKERS, derived_seed, epoch_generator

if TYPE_CHECKING:
    from bnn.config import DataConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 224
RESIZE = 256
LIGHTING_STD = 0.1  # the official code's lighting_param
# ImageNet RGB principal components (AlexNet; fb.resnet.torch; the official code's imagenet_pca).
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting:
    """AlexNet-style PCA colour noise on a (3, H, W) tensor in [0, 1]: adds eigvec @ (a * eigval) to every pixel,
    a ~ Normal(0, alphastd) per image, drawn from torch's RNG (seeded per example by SeededExamples).

    The official code applies the same increment to the uint8 PIL image (values 0..255), where the cast back to
    uint8 floors it away to a change of at most one grey level; this is the torchvision-style tensor version the
    increment was designed for (fb.resnet.torch), applied before Normalize.
    """

    def __init__(self, alphastd: float = LIGHTING_STD) -> None:
        self.alphastd = alphastd
        self.eigval = torch.tensor(EIGVAL, dtype=torch.float64)
        self.eigvec = torch.tensor(EIGVEC, dtype=torch.float64)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return image
        alpha = torch.randn(3, dtype=torch.float64) * self.alphastd
        increment = self.eigvec @ (alpha * self.eigval)
        return image + increment.to(image.dtype).view(3, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alphastd={self.alphastd})"


def transforms_for(train: bool) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms

    if train:
        steps = [transforms.RandomResizedCrop(CROP), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                 Lighting()]  # fmt: skip
    else:
        steps = [transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor()]
    return transforms.Compose([*steps, transforms.Normalize(MEAN, STD)])


def image_folder(directory: Path, train: bool) -> Any:
    """torchvision ImageFolder of ``directory``; DatasetError naming it when missing or without images."""
    from torchvision.datasets import ImageFolder

    if not directory.is_dir():
        raise DatasetError(
            f"imagenet: no directory {directory} (data.root must hold train/ and val/, one sub-directory per class)"
        )
    try:
        return ImageFolder(str(directory), transform=transforms_for(train))
    except (FileNotFoundError, OSError) as exc:
        raise DatasetError(f"imagenet: {directory}: {exc}") from None


class SeededExamples(torch.utils.data.Dataset):
    """Reads example i with torch's RNG seeded from (seed, epoch, i), so random transforms are reproducible in
    any worker process; the caller's RNG state is left as it was."""

    def __init__(self, dataset: Any, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, self.epoch, AUGMENT, i))
            return self.dataset[i]


class FolderData(Data):
    def __init__(self, cfg: DataConfig, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        if cfg.root is None:
            raise DatasetError("data.root: imagenet needs the directory holding train/ and val/ (ImageFolder trees)")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")
        root = Path(cfg.root).expanduser()
        self.name = "imagenet"
        self.device = torch.device(device)
        self.dtype = dtype
        self.seed = seed
        self.num_workers = cfg.num_workers
        self.train_set = image_folder(root / "train", train=cfg.augment)
        self.test_set = image_folder(root / "val", train=False)
        if self.train_set.classes != self.test_set.classes:
            only_train = sorted(set(self.train_set.classes) - set(self.test_set.classes))[:5]
            only_val = sorted(set(self.test_set.classes) - set(self.train_set.classes))[:5]
            raise DatasetError(
                f"imagenet: {root}/train and {root}/val must have the same class directories "
                f"(only in train: {only_train}, only in val: {only_val})"
            )
        self.train_indices, self.val_indices = split_indices(len(self.train_set), cfg.val_fraction, cfg.train_subset)
        # The validation split is read from train/ with the evaluation transform (no augmentation).
        self.val_set = copy.copy(self.train_set)
        self.val_set.transform = transforms_for(train=False)
        self.num_classes = len(self.train_set.classes)
        self.input_shape = (3, CROP, CROP)
        self.n_train = len(self.train_indices)
        self.n_test = len(self.test_set)
        self.n_val = len(self.val_indices)
        self.source = str(root)

    def _batches(self, dataset: Any, indices: list[int], batch_size: int, epoch: int) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=indices,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            # The loader draws its workers' base seed from this generator, not from torch's global RNG, which
            # belongs to the training loop (and its checkpoints).
            generator=epoch_generator(self.seed, epoch, WORKERS),
        )
        for x, y in loader:
            yield x.to(self.device, self.dtype, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        order = self.train_indices[epoch_order(self.n_train, self.seed, epoch, batch_size)]
        examples = SeededExamples(self.train_set, self.seed, epoch)
        yield from self._batches(examples, order.tolist(), batch_size, epoch)

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        yield from self._batches(self.test_set, list(range(self.n_test)), batch_size, 0)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        yield from self._batches(self.val_set, self.val_indices.tolist(), batch_size, 0)


def load_imagenet_data(cfg: DataConfig, device: torch.device, dtype: torch.dtype, seed: int) -> FolderData:
    return FolderData(cfg, device, dtype, seed)
