"""A small reader for the IDX files of (Fashion-)MNIST, plain or gzip-compressed."""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np

from bnn.data.errors import DatasetError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (``.gz`` read through gzip); DatasetError naming the file if it is malformed.

    The array is read-only and shared: a Ray worker that runs several trials decodes each file once.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read IDX file ({str(exc)[:200]})") from None
    return _read_idx(path.resolve(), stat.st_mtime_ns, stat.st_size)


# load_data of the cpu preset 0.84 -> 0.10 s in every trial after a Ray worker's first (of ~8 s trials): 2-core
# CPU, python -m benchmarks.bench_devices 2026-11-30. Keyed by mtime and size: a rewritten file is read again.
@functools.lru_cache(maxsize=4)
def _read_idx(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:  # zlib: a corrupt deflate stream
        raise DatasetError(f"{path}: cannot read IDX file ({str(exc)[:200]})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: truncated or corrupt IDX file (shape {shape} needs {expected} data bytes, "
            f"found {len(raw) - header})"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed when the name ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    Path(path).write_bytes(gzip.compress(data, compresslevel=1) if str(path).endswith(".gz") else data)
