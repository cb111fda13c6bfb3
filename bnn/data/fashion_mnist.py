"""Fashion-MNIST (70,000 28x28 grey images, 10 classes) from its standard IDX files.

Looked for in order: ``data.root`` (the files themselves or torchvision's ``FashionMNIST/raw`` below it), the
Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), wmhp's download cache
(~/.cache/wmhp/fashion-mnist); then, only with ``data.download``, a torchvision download. This module imports
no torch at import time: ``python -m bnn.data.fashion_mnist_setup`` uses it to answer in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bnn.data.errors import DatasetError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bnn.config import DataConfig
    from bnn.data.base import TensorData

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Mean and std of the 60,000 training images' pixels on the 0..1 scale.
MEAN, STD = 0.2860, 0.3530
APT_COMMAND = "apt-get install -y dataset-fashion-mnist"
SETUP_COMMAND = "python -m bnn.data.fashion_mnist_setup"


def cache_dir() -> Path:
    """Where wmhp downloads Fashion-MNIST: $XDG_CACHE_HOME/wmhp/fashion-mnist, by default ~/.cache/wmhp/..."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wmhp" / "fashion-mnist"


def files_in(directory: Path) -> dict[str, Path] | None:
    """The four IDX files (each .gz or plain) in ``directory`` or its torchvision layout, else None."""
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        found = {}
        for key, stem in FILES.items():
            for candidate in (folder / f"{stem}.gz", folder / stem):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    return None


def search_places(root: str | Path | None, debian_dir: Path = DEBIAN_DIR, cache: Path | None = None) -> list[Path]:
    if root is not None:  # a given root means that root only: never silently train on another copy
        return [Path(root).expanduser()]
    return [debian_dir, cache if cache is not None else cache_dir()]


def missing_in(directory: Path) -> list[str]:
    """The IDX file names (neither plain nor .gz) missing from ``directory``."""
    return [stem for stem in FILES.values()
            if not any((directory / name).is_file() for name in (f"{stem}.gz", stem))]  # fmt: skip


def locate(
    root: str | Path | None, debian_dir: Path = DEBIAN_DIR, cache: Path | None = None
) -> dict[str, Path] | None:
    """The IDX files at the first place that has all four, or None."""
    for place in search_places(root, debian_dir, cache):
        found = files_in(place)
        if found is not None:
            return found
    return None


def download(target: Path) -> dict[str, Path]:
    """torchvision's FashionMNIST download into ``target`` (its files land in target/FashionMNIST/raw)."""
    try:
        import torchvision
    except ImportError as exc:
        raise DatasetError(f"Fashion-MNIST download needs torchvision (pip install torchvision): {exc}") from None
    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(target), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DatasetError(f"Fashion-MNIST download into {target} failed: {exc}") from None
    found = files_in(target)
    if found is None:
        raise DatasetError(f"Fashion-MNIST download into {target} left no IDX files in {target}/FashionMNIST/raw")
    return found


def not_found_message(root: str | Path | None, debian_dir: Path = DEBIAN_DIR, cache: Path | None = None) -> str:
    looked = ", ".join(str(p) for p in search_places(root, debian_dir, cache))
    names = ", ".join(f"{stem}[.gz]" for stem in FILES.values())
    if root is not None:
        place = Path(root).expanduser()
        missing = ", ".join(f"{place / stem}[.gz]" for stem in missing_in(place)) or "?"
        return (f"data.root {str(root)[:200]}: Fashion-MNIST file(s) missing: {missing}. Put all four IDX files "
                f"({names}) there, set data.download=true to download them there, or unset data.root to use "
                f"the installed copy ({debian_dir})")
    return (
        f"Fashion-MNIST not found (looked in: {looked}). Any one of these fixes it: "
        f"(1) set data.root to a directory holding the four IDX files ({names}); "
        f"(2) on Debian, as root: `{APT_COMMAND}` (after `apt-get update`), which installs them in {debian_dir}; "
        f"(3) set data.download=true, or run `{SETUP_COMMAND}`, to download them with torchvision "
        f"(`pip install torchvision`) into data.root or {cache if cache is not None else cache_dir()}."
    )


def find_or_download(
    root: str | Path | None, allow_download: bool, debian_dir: Path = DEBIAN_DIR, cache: Path | None = None
) -> dict[str, Path]:
    """The files, from the first place that has them, downloading only when allowed; one clear error otherwise."""
    found = locate(root, debian_dir, cache)
    if found is not None:
        return found
    message = not_found_message(root, debian_dir, cache)
    if allow_download:
        target = Path(root).expanduser() if root is not None else (cache if cache is not None else cache_dir())
        try:
            return download(target)
        except DatasetError as exc:
            raise DatasetError(f"{message} The download was tried and failed: {exc}") from None
    raise DatasetError(message)


def read_arrays(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images (N,1,28,28) uint8, train labels int64, test images, test labels), checked for consistency."""
    import numpy as np

    from bnn.data.idx import read_idx

    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(f"{files[split + '_images']}: expected uint8 images (N, H, W), got {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(
                f"{files[split + '_labels']}: expected {len(images)} labels to match "
                f"{files[split + '_images'].name}, got shape {labels.shape}"
            )
        if len(labels) and labels.max() > 9:
            raise DatasetError(f"{files[split + '_labels']}: labels must be 0..9, found {int(labels.max())}")
    return (
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
    )


def load_fashion_mnist_data(
    cfg: DataConfig,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    debian_dir: Path = DEBIAN_DIR,
    cache: Path | None = None,
) -> TensorData:
    """TensorData of Fashion-MNIST for a DataConfig ``cfg``."""
    import torch

    from bnn.data.base import TensorData, split_train_val

    files = find_or_download(cfg.root, cfg.download, debian_dir, cache)
    x_train, y_train, x_test, y_test = read_arrays(files)
    train, val = split_train_val(
        torch.from_numpy(x_train.copy()), torch.from_numpy(y_train), cfg.val_fraction, cfg.train_subset
    )
    return TensorData(
        name="fashion-mnist",
        train=train,
        val=val,
        test=(torch.from_numpy(x_test.copy()), torch.from_numpy(y_test)),
        num_classes=10,
        mean=[MEAN * 255],
        std=[STD * 255],
        device=device,
        dtype=dtype,
        seed=seed,
        source=str(files["train_images"].parent),
    )
