"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (or any folder with the idx files)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tinyshot.data.base import ArrayDataset
from tinyshot.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
BASE_CLASSES = [0, 1, 2, 3, 4]
NOVEL_CLASSES = [5, 6, 7, 8, 9]
_FILES = {"train": "train", "test": "t10k"}
# The concept-known world's held-out pool: train-split images of the novel classes that its
# generator never sees; few-shot supports in that world come only from here.
POOL_PER_CLASS = 1000
POOL_SEED = 0


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        alt = path.with_suffix("")  # also accept un-gzipped files
        if not alt.is_file():
            raise DataError(
                f"{path}: Fashion-MNIST file not found (apt-get install dataset-fashion-mnist, "
                "or pass --root with the four idx files)"
            )
        path = alt
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read idx file ({e})") from e
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"{path}: not an idx file (magic {got:#x}, expected {magic:#x})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated idx file ({arr.size} values, header says {dims})")
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ArrayDataset:
    """All 10 classes of one official split ("train": 60k, "test": 10k), 28x28 grayscale."""
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    stem = _FILES[split]
    images = _read_idx(root / f"{stem}-images-idx3-ubyte.gz", 0x00000803)
    labels = _read_idx(root / f"{stem}-labels-idx1-ubyte.gz", 0x00000801)
    return ArrayDataset(images, labels.astype(np.int64), CLASS_NAMES, "fashion-mnist", split)


def heldout_pool(
    labels: np.ndarray, per_class: int = POOL_PER_CLASS, seed: int = POOL_SEED
) -> np.ndarray:
    """Sorted train-split indices of the held-out novel pool: a pure function of the labels,
    `per_class` and `seed`, so the generator recipe and the support split agree exactly."""
    from tinyshot.utils.seed import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "fashion-known-pool"))
    pool = []
    for c in NOVEL_CLASSES:
        members = np.flatnonzero(np.asarray(labels) == c)
        if len(members) < per_class:
            raise DataError(
                f"Fashion-MNIST class {c} has {len(members)} train images, the pool needs {per_class}"
            )
        pool.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(pool))


def pool_checksum(indices: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of the pool's int64 indices (recorded by the generator)."""
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
