"""Helpers shared by the data tests (a plain module: conftest names clash across folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, value: int = 128, size: int = 12, mode: str = "RGB") -> Path:
    """A small flat image whose gray level identifies it after decoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    """The idx format: 0x0000, dtype code 0x08 (ubyte), ndim, big-endian dims, data."""
    import gzip

    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """Tiny Fashion-MNIST idx files; item i has label i % 10 and pixel (0, 0) = i."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        write_idx(root / f"{stem}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{stem}-labels-idx1-ubyte", labels, gz)
    return root
