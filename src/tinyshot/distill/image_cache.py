"""A student's training images as one uint8 file on disk, memory-mapped.

Distillation draws random batches from every image of a source thousands of times, so
decoding PNGs per batch would cost more than the training step; holding the set in memory
grows with the synthetic count. The images are instead decoded once, in slices, at the
student's input size into `<name>.npy` (a plain NumPy array file, (N,3,S,S) uint8) and
memory-mapped: the paper's 20,000 images at 84 px take 423 MB there, the page cache holds what
is used, and nothing is copied into the process. `<name>.json` beside it records what the
file holds (the source's id, count and size); a file from other images is rebuilt, and a
killed build leaves only a temporary file that the next run replaces.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyshot.errors import DataError
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, progress

log = get_logger("distill.image_cache")

FORMAT = "tinyshot-image-cache-v1"
SliceLoader = Callable[[int, int], torch.Tensor]  # (start, stop) -> uint8 images[start:stop]


def cached_images(
    load: SliceLoader,
    num_images: int,
    size: int,
    path: str | Path,
    source_id: str,
    chunk_size: int = 512,
) -> torch.Tensor:
    """(num_images, 3, size, size) uint8, memory-mapped from `path` (.npy); built from `load`
    in chunks when missing or made from other images (`source_id` changes with them)."""
    path = Path(path)
    record = {"format": FORMAT, "source": source_id, "count": int(num_images), "size": int(size)}
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file() and read_json(meta) == record):
        _build(load, num_images, size, path, chunk_size)
        write_json(meta, record)
    else:
        log.info("%s: reusing %d cached %d px images", path, num_images, size)
    arr = np.load(path, mmap_mode="c")  # copy-on-write: the file is never changed
    with warnings.catch_warnings():  # torch warns about read-only arrays; "c" maps are writable
        warnings.simplefilter("ignore")
        return torch.from_numpy(arr)


def _build(load: SliceLoader, n: int, size: int, path: Path, chunk_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    starts = range(0, n, chunk_size)
    for start in progress(starts, desc=f"student images ({path.stem})", unit="chunk"):
        stop = min(start + chunk_size, n)
        x = load(start, stop)
        if tuple(x.shape) != (stop - start, 3, size, size) or x.dtype != torch.uint8:
            raise DataError(
                f"image loader gave {x.dtype} {tuple(x.shape)} for [{start}, {stop}); "
                f"expected uint8 ({stop - start}, 3, {size}, {size})"
            )
        out[start:stop] = x.numpy()
    out.flush()
    del out
    os.replace(tmp, path)


class ImageSubset:
    """Rows of an image tensor, indexed without copying the rest (a split of a mapped set).

    Behaves like the uint8 tensor `images[rows]` where distillation needs it: len, shape,
    dtype, `subset[index]` and a `digest()` equal to tensor_digest of that tensor.
    """

    def __init__(self, images: torch.Tensor, rows: torch.Tensor) -> None:
        self.images = images
        self.rows = torch.as_tensor(rows, dtype=torch.long).view(-1)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.images.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.images.dtype

    @property
    def ndim(self) -> int:
        return self.images.ndim

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.images[self.rows[index]]

    def digest(self, chunk: int = 1024) -> str:
        """sha256 of dtype, shape and bytes, as distill.pseudo_label.tensor_digest(images[rows])
        would give, read in chunks."""
        h = hashlib.sha256(f"{self.dtype}{tuple(self.shape)}".encode())
        for i in range(0, len(self.rows), chunk):
            part = self.images[self.rows[i : i + chunk]].contiguous().reshape(-1)
            h.update(part.view(torch.uint8).numpy())
        return h.hexdigest()
