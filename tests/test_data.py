"""bnn.data: every dataset read through the real loaders from files in the real on-disk formats (IDX, CIFAR-10's
pickled batches, ImageFolder trees) that the tests write; order and augmentation from (seed, epoch) only."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnn.config import ConfigError, DataConfig
from bnn.data import DatasetError, load_data
from bnn.data import fashion_mnist as fm
from bnn.data.base import epoch_order, split_indices
from bnn.data.cifar10 import PAD, crop_flip, standard_loader
from bnn.data.idx import read_idx, write_idx

CPU = torch.device("cpu")


def batches(data, epoch: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(data.train_batches(epoch, batch_size))


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def pixels(data, x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: back to pixel values (float64 inputs make this exact to ~1e-12)."""
    return (x / data.inv_std + data.mean).cpu().numpy()


# --- the validation split ----------------------------------------------------------------------------------------
def test_validation_split_is_held_out_fixed_and_disjoint_from_the_training_subset() -> None:
    train, val = split_indices(1000, 0.1, 300)
    assert (len(train), len(val)) == (300, 100)
    assert not set(train.tolist()) & set(val.tolist())
    again_train, again_val = split_indices(1000, 0.1, None)
    assert torch.equal(val, again_val) and set(train.tolist()) < set(again_train.tolist())
    assert torch.equal(again_train, torch.sort(again_train).values)  # file order
    assert len(split_indices(1000, 0.0, None)[1]) == 0
    with pytest.raises(ConfigError, match="data.train_subset: expected at most 900"):
        split_indices(1000, 0.1, 901)


def test_validation_split_comes_unaugmented_and_is_evaluated_separately(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.25), CPU, torch.float64, seed=0)
    assert (data.n_train, data.n_val, data.n_test) == (75, 25, 20)
    _, val = split_indices(100, 0.25, None)
    x = torch.cat([x for x, _ in data.val_batches(10)])
    assert np.allclose(pixels(data, x), images[:100][val.numpy()], rtol=0, atol=1e-9)


# --- digits ---------------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_complete() -> None:
    from sklearn.datasets import load_digits

    a = load_data(DataConfig(name="digits"), CPU, torch.float64, seed=0)
    b = load_data(DataConfig(name="digits"), CPU, torch.float64, seed=7)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.train_images, b.train_images)
    assert (a.n_train, a.n_val, a.n_test, a.num_classes, a.input_shape) == (1293, 144, 360, 10, (1, 8, 8))
    full = load_digits()
    per_class = np.bincount(full.target)
    test_counts = torch.bincount(a.test_labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - per_class * 0.2) <= 1)  # stratified: 20% of every class
    # Train, validation and test together are exactly the 1,797 images, each once.
    rows = torch.cat([a.train_images, a.val_images, a.test_images]).reshape(-1, 64).numpy().astype(np.float64)
    assert sorted(map(tuple, rows)) == sorted(map(tuple, full.data))


def test_inputs_are_normalised_in_the_asked_dtype() -> None:
    data = load_data(DataConfig(name="digits", val_fraction=0.0), CPU, torch.float64, seed=0)
    x, y = next(data.train_batches(1, data.n_train))
    assert x.dtype == torch.float64 and y.dtype == torch.int64 and x.shape == (data.n_train, 1, 8, 8)
    assert abs(x.mean().item()) < 1e-9 and abs(x.std().item() - 1) < 1e-3
    x32, _ = next(load_data(DataConfig(name="digits"), CPU, torch.float32, seed=0).test_batches(10))
    assert x32.dtype == torch.float32


def test_order_depends_only_on_seed_and_epoch() -> None:
    def fresh(seed: int):
        return load_data(DataConfig(name="digits"), CPU, torch.float64, seed=seed)

    run = fresh(0)
    epoch1, epoch2 = batches(run, 1, 128), batches(run, 2, 128)
    # A resumed run starts at epoch 2 without having seen epoch 1, and gets the same batches.
    assert same_batches(batches(fresh(0), 2, 128), epoch2)
    assert same_batches(batches(run, 1, 128), epoch1)
    assert not same_batches(epoch1, epoch2)
    assert not same_batches(batches(fresh(1), 1, 128), epoch1)
    # Each epoch is a permutation of the training set.
    x = torch.cat([x for x, _ in epoch2])
    assert sorted(map(tuple, x.reshape(len(x), -1).tolist())) == sorted(
        map(tuple, run.normalise(run.train_images).reshape(run.n_train, -1).tolist())
    )


def test_a_lone_last_example_is_dropped_not_given_to_batchnorm() -> None:
    data = load_data(DataConfig(name="digits", val_fraction=0.0), CPU, torch.float32, seed=0)
    assert data.n_train % 2 == 1
    sizes = [len(y) for _, y in data.train_batches(1, 2)]
    assert min(sizes) == 2 and sum(sizes) == data.n_train - 1 and len(sizes) == data.steps_per_epoch(2)
    sizes = [len(y) for _, y in data.train_batches(1, 100)]  # 1437 = 14 * 100 + 37: all kept
    assert sum(sizes) == data.n_train and len(sizes) == data.steps_per_epoch(100) == 15
    with pytest.raises(ValueError, match="batch_size"):
        next(data.train_batches(1, 0))


def test_train_subset_is_the_same_for_every_seed() -> None:
    a = load_data(DataConfig(name="digits", train_subset=100), CPU, torch.float32, seed=0)
    b = load_data(DataConfig(name="digits", train_subset=100), CPU, torch.float32, seed=1)
    assert a.n_train == 100 and torch.equal(a.train_images, b.train_images)
    assert len(torch.unique(a.train_labels)) == 10
    with pytest.raises(ConfigError, match="data.train_subset"):
        load_data(DataConfig(name="digits", train_subset=5000), CPU, torch.float32, seed=0)


# --- Fashion-MNIST ----------------------------------------------------------------------------------------------
def write_fashion_files(directory: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in fm.FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.skipif(not fm.files_in(fm.DEBIAN_DIR), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package() -> None:
    data = load_data(DataConfig(name="fashion-mnist", val_fraction=0.0), CPU, torch.float32, seed=0)
    assert data.source == str(fm.DEBIAN_DIR)
    assert (data.n_train, data.n_test, data.input_shape, data.num_classes) == (60000, 10000, (1, 28, 28), 10)
    assert torch.equal(torch.bincount(data.train_labels), torch.full((10,), 6000))
    x, _ = next(data.test_batches(10000))
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05  # the published mean/std


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_fashion_mnist_from_data_root_comes_first(tmp_path: Path, layout: str) -> None:
    directory = tmp_path if layout == "flat-gz" else tmp_path / "FashionMNIST" / "raw"
    arrays = write_fashion_files(directory, gz=layout == "flat-gz")
    data = load_data(DataConfig(name="fashion-mnist", root=str(tmp_path), val_fraction=0.0), CPU, torch.float64,
                     seed=0)
    assert data.source == str(directory) and (data.n_train, data.n_test) == (30, 10)
    x, y = next(data.test_batches(100))
    assert np.allclose(pixels(data, x)[:, 0], arrays["test_images"], rtol=0, atol=1e-9)
    assert np.array_equal(y.numpy(), arrays["test_labels"])


def test_idx_reader_round_trip_and_corrupt_files(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
    raw = gzip.decompress((tmp_path / "a-idx3-ubyte.gz").read_bytes())
    (tmp_path / "short-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DatasetError, match="short-idx3-ubyte.*truncated"):
        read_idx(tmp_path / "short-idx3-ubyte")
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(DatasetError, match="bad-idx3-ubyte.*magic"):
        read_idx(tmp_path / "bad-idx3-ubyte")
    (tmp_path / "cut-idx3-ubyte.gz").write_bytes((tmp_path / "a-idx3-ubyte.gz").read_bytes()[:20])
    with pytest.raises(DatasetError, match="cut-idx3-ubyte.gz"):
        read_idx(tmp_path / "cut-idx3-ubyte.gz")


def test_idx_reader_decodes_once_and_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "a-idx3-ubyte.gz"
    write_idx(path, np.zeros((2, 3), dtype=np.uint8))
    first = read_idx(path)
    assert read_idx(path) is first and not first.flags.writeable  # shared between trials, so nobody may write
    write_idx(path, np.ones((2, 3), dtype=np.uint8))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))  # a rewrite within the clock's resolution still counts
    assert np.array_equal(read_idx(path), np.ones((2, 3), dtype=np.uint8))
    path.unlink()
    with pytest.raises(DatasetError, match="a-idx3-ubyte.gz.*cannot read"):
        read_idx(path)


def test_truncated_fashion_file_in_data_root_is_named(tmp_path: Path) -> None:
    write_fashion_files(tmp_path, gz=False)
    path = tmp_path / fm.FILES["train_images"]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=fm.FILES["train_images"]):
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path)), CPU, torch.float32, seed=0)


def test_fashion_mnist_not_found_names_all_three_ways(tmp_path: Path) -> None:
    places = dict(debian_dir=tmp_path / "debian", cache=tmp_path / "cache")
    with pytest.raises(DatasetError) as error:
        fm.find_or_download(None, allow_download=False, **places)
    message = str(error.value)
    for expected in (str(tmp_path / "debian"), str(tmp_path / "cache"), "data.root",
                     "apt-get install -y dataset-fashion-mnist", "data.download=true", "pip install torchvision"):
        assert expected in message
    # The download cache is searched too, so an earlier download is found without data.download.
    write_fashion_files(tmp_path / "cache" / "FashionMNIST" / "raw")
    found = fm.find_or_download(None, allow_download=False, **places)
    assert found["test_labels"].parent == tmp_path / "cache" / "FashionMNIST" / "raw"


def test_a_given_data_root_is_the_only_place_looked_in(tmp_path: Path) -> None:
    places = dict(debian_dir=tmp_path / "debian", cache=tmp_path / "cache")
    write_fashion_files(tmp_path / "cache")  # another complete copy exists: it must not be used silently
    write_fashion_files(tmp_path / "root")
    missing = next((tmp_path / "root").glob(fm.FILES["test_labels"] + "*"))
    missing.unlink()
    with pytest.raises(DatasetError) as error:
        fm.find_or_download(tmp_path / "root", allow_download=False, **places)
    message = str(error.value)
    assert message.startswith("data.root") and str(tmp_path / "root" / fm.FILES["test_labels"]) in message
    assert fm.FILES["train_images"] + "[.gz]," not in message.split("missing:")[1].split(".")[0]


def test_setup_script_reports_where_the_files_are(tmp_path: Path) -> None:
    write_fashion_files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "bnn.data.fashion_mnist_setup", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Fashion-MNIST: {tmp_path}"


# --- CIFAR-10 ---------------------------------------------------------------------------------------------------
def write_cifar(root: Path, n_per_batch: int = 20, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py as torchvision downloads it: pickled dicts of (N, 3072) uint8 rows and label lists."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6 * n_per_batch, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * n_per_batch).tolist()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        rows = slice(i * n_per_batch, (i + 1) * n_per_batch)
        batch = {"batch_label": f"{name} of 6", "labels": labels[rows], "data": images[rows],
                 "filenames": [f"img_{j}.png" for j in range(rows.start, rows.stop)]}  # fmt: skip
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {"num_cases_per_batch": n_per_batch, "num_vis": 3072,
            "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))  # fmt: skip
    return images.reshape(-1, 3, 32, 32), np.asarray(labels)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_the_pickled_batches(tmp_path: Path, protocol: int) -> None:
    images, labels = write_cifar(tmp_path, protocol=protocol)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), augment=False, val_fraction=0.0)
    data = load_data(cfg, CPU, torch.float64, seed=0)
    assert (data.n_train, data.n_test, data.input_shape, data.num_classes) == (100, 20, (3, 32, 32), 10)
    assert data.source == str(tmp_path / "cifar-10-batches-py")
    x, y = next(data.test_batches(100))
    assert np.allclose(pixels(data, x), images[100:], rtol=0, atol=1e-9) and np.array_equal(y, labels[100:])
    # Without augmentation, training batches are the images in the epoch's order.
    order = epoch_order(100, 0, 1, 32).numpy()
    x = torch.cat([x for x, _ in data.train_batches(1, 32)])
    assert np.allclose(pixels(data, x), images[:100][order], rtol=0, atol=1e-9)


def test_cifar10_batches_directly_in_data_root(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    flat = tmp_path / "flat"
    (tmp_path / "cifar-10-batches-py").rename(flat)
    data = load_data(DataConfig(name="cifar10", root=str(flat), val_fraction=0.0), CPU, torch.float32, seed=0)
    assert data.n_train == 100 and data.source == str(flat)


def test_cifar10_missing_file_names_it_and_the_directory(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as error:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), CPU, torch.float32, seed=0)
    assert "data_batch_3" in str(error.value) and str(tmp_path / "cifar-10-batches-py") in str(error.value)
    assert "data.download=true" in str(error.value)
    with pytest.raises(DatasetError, match="lacks data_batch_1"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path / "empty")), CPU, torch.float32, seed=0)


def test_cifar10_truncated_or_hostile_file_is_named(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DatasetError, match=r"test_batch: truncated or corrupt"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), CPU, torch.float32, seed=0)

    class RunsCode:
        def __reduce__(self):
            return (print, ("pickles can run code",))

    path.write_bytes(pickle.dumps({"data": RunsCode()}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), CPU, torch.float32, seed=0)


def reference_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (PAD, PAD), (PAD, PAD)))
    crop = padded[:, dy : dy + 32, dx : dx + 32]
    return crop[:, :, ::-1] if flip else crop


def test_crop_flip_matches_the_per_image_reference() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (16, 3, 32, 32)).astype(np.float64)
    dy, dx, flip = rng.integers(0, 9, 16), rng.integers(0, 9, 16), rng.integers(0, 2, 16).astype(bool)
    out = crop_flip(torch.from_numpy(images), torch.from_numpy(dy), torch.from_numpy(dx), torch.from_numpy(flip), PAD)
    for i in range(16):
        assert np.array_equal(out[i].numpy(), reference_crop_flip(images[i], dy[i], dx[i], flip[i]))


def test_cifar10_on_device_augmentation_really_crops_and_flips(tmp_path: Path) -> None:
    images, _ = write_cifar(tmp_path)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.0), CPU, torch.float64, seed=0)
    epoch1 = batches(data, 1, 32)
    assert [tuple(x.shape) for x, _ in epoch1] == [(32, 3, 32, 32)] * 3 + [(4, 3, 32, 32)]
    out = np.rint(pixels(data, torch.cat([x for x, _ in epoch1])))
    sources = images[:100][epoch_order(100, 0, 1, 32).numpy()]
    found = []
    for augmented, source in zip(out, sources):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if np.array_equal(augmented, reference_crop_flip(source, dy, dx, f))]  # fmt: skip
        assert len(matches) == 1  # each output is one crop/flip of its own source image
        found.append(matches[0])
    assert {f for _, _, f in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 20
    # Reproducible from (seed, epoch) alone; a new epoch draws anew.
    assert same_batches(batches(load_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.0), CPU, torch.float64, 0),
                                1, 32), epoch1)  # fmt: skip
    assert not same_batches(batches(data, 2, 32), epoch1)


def test_standard_dataloader_path(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path)
    loader = standard_loader(images[:100], labels[:100], batch_size=32, train=True, seed=0, epoch=1, num_workers=0)
    shapes = [(tuple(x.shape), x.dtype) for x, _ in loader]
    assert shapes == [((32, 3, 32, 32), torch.float32)] * 3 + [((4, 3, 32, 32), torch.float32)]


# --- ImageFolder (imagenet) -------------------------------------------------------------------------------------
def write_image_folder(root: Path, classes=("n01440764", "n01443537"), per_class=(4, 2)) -> None:
    rng = np.random.default_rng(3)
    for split, count in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8)
                suffix = ".JPEG" if i % 2 == 0 else ".png"
                Image.fromarray(array).save(root / split / c / f"{c}_{i}{suffix}")


def test_image_folder_loads_with_the_standard_crops(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    cfg = DataConfig(name="imagenet", root=str(tmp_path), num_workers=0, val_fraction=0.0)
    data = load_data(cfg, CPU, torch.float64, seed=0)
    assert (data.n_train, data.n_test, data.num_classes, data.input_shape) == (8, 4, 2, (3, 224, 224))
    rng_before = torch.get_rng_state()
    epoch1 = batches(data, 1, 3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # augmentation leaves the training RNG alone
    assert [tuple(x.shape) for x, _ in epoch1] == [(3, 3, 224, 224)] * 2 + [(2, 3, 224, 224)]
    assert all(x.dtype == torch.float64 and y.dtype == torch.int64 for x, y in epoch1)
    assert sorted(torch.cat([y for _, y in epoch1]).tolist()) == [0] * 4 + [1] * 4
    test = list(data.test_batches(4))
    assert len(test) == 1 and test[0][1].tolist() == [0, 0, 1, 1]
    # Same (seed, epoch): same batches, with worker processes too; another epoch differs.
    workers = load_data(DataConfig(name="imagenet", root=str(tmp_path), num_workers=2, val_fraction=0.0), CPU, torch.float64, 0)
    assert same_batches(batches(workers, 1, 3), epoch1)
    assert not same_batches(batches(data, 2, 3), epoch1)


def test_image_folder_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data.root"):
        load_data(DataConfig(name="imagenet"), CPU, torch.float32, seed=0)
    write_image_folder(tmp_path)
    for path in (tmp_path / "val").rglob("*.*"):
        path.unlink()
    with pytest.raises(DatasetError, match=str(tmp_path / "val")):
        load_data(DataConfig(name="imagenet", root=str(tmp_path)), CPU, torch.float32, seed=0)
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere" / "train")):
        load_data(DataConfig(name="imagenet", root=str(tmp_path / "nowhere")), CPU, torch.float32, seed=0)
