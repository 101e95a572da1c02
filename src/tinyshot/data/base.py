"""One dataset abstraction for every source: images, integer labels, class names, a split.

Every loader returns a `FewShotDataset`. Items have stable string ids (file paths relative
to the dataset root, or `"<index>"` for array-backed sets) so that episode files pin exactly
the same images across methods and machines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tinyshot.errors import DataError


class FewShotDataset(ABC):
    """Images with integer labels in [0, num_classes), class names, and a split name."""

    name: str
    split: str
    class_names: list[str]
    labels: np.ndarray  # int64, one per item

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """The item as an RGB PIL image."""

    @abstractmethod
    def item_id(self, index: int) -> str:
        """A stable identifier of the item (used in episode files)."""

    def index_of(self, item_id: str) -> int:
        if not hasattr(self, "_id_to_index"):
            self._id_to_index = {self.item_id(i): i for i in range(len(self))}
        try:
            return self._id_to_index[item_id]
        except KeyError:
            raise DataError(f"{self.name}/{self.split}: no item with id {item_id!r}") from None

    def indices_of(self, class_id: int) -> np.ndarray:
        return np.flatnonzero(self.labels == class_id)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def class_id(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise DataError(
                f"{self.name}/{self.split}: no class named {name!r} "
                f"(have {', '.join(self.class_names[:10])}{'...' if self.num_classes > 10 else ''})"
            ) from None

    def load_images(self, indices: Sequence[int]) -> list[Image.Image]:
        return [self.load_image(int(i)) for i in indices]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"classes={self.num_classes}, items={len(self)})"
        )


class ArrayDataset(FewShotDataset):
    """In-memory uint8 images (N,H,W) grayscale or (N,H,W,3) RGB; ids are the row numbers."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: list[str],
        name: str,
        split: str,
        ids: Sequence[str] | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataError(
                f"{name}: images must be uint8 (N,H,W[,3]), got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.name = name
        self.split = split
        self._ids = list(ids) if ids is not None else None
        if self._ids is not None and len(self._ids) != len(images):
            raise DataError(f"{name}: {len(images)} images but {len(self._ids)} item ids")
        check_labels(self.labels, self.class_names, f"{name}/{split}")

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def item_id(self, index: int) -> str:
        return self._ids[index] if self._ids is not None else str(index)


class FileDataset(FewShotDataset):
    """Images on disk; ids are paths relative to `root`. Files are decoded on demand."""

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str | Path],
        labels: np.ndarray | Sequence[int],
        class_names: list[str],
        name: str,
        split: str,
    ) -> None:
        self.root = Path(root)
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.name = name
        self.split = split
        if len(self.paths) != len(self.labels):
            raise DataError(f"{name}: {len(self.paths)} files but {len(self.labels)} labels")
        check_labels(self.labels, self.class_names, f"{name}/{split}")

    def load_image(self, index: int) -> Image.Image:
        from tinyshot.data.images import open_rgb

        return open_rgb(self.root / self.paths[index])

    def item_id(self, index: int) -> str:
        return self.paths[index].as_posix()


class IndexedView(FewShotDataset):
    """Some items of another dataset with new labels; item ids stay those of the original."""

    def __init__(
        self,
        base: FewShotDataset,
        indices: np.ndarray,
        labels: np.ndarray,
        class_names: list[str],
        split: str,
    ) -> None:
        self.base = base
        self.base_indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.name = base.name
        self.split = split
        check_labels(self.labels, self.class_names, f"{self.name}/{split}")

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(int(self.base_indices[index]))

    def item_id(self, index: int) -> str:
        return self.base.item_id(int(self.base_indices[index]))


def check_labels(labels: np.ndarray, class_names: Sequence[str], where: str) -> None:
    """Duplicate class names would make episode files (which name classes) ambiguous."""
    seen: set[str] = set()
    for n in class_names:
        if n in seen:
            raise DataError(f"{where}: duplicate class name {n!r}")
        seen.add(n)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(
            f"{where}: labels must lie in [0, {len(class_names)}), "
            f"got [{labels.min()}, {labels.max()}]"
        )


def remap_classes(
    ds: FewShotDataset, class_ids: Sequence[int], split: str | None = None
) -> FewShotDataset:
    """Only the items of `class_ids`, relabelled 0..len-1 in that order; class names and item
    ids are kept, so an episode file written on the view resolves on the original too."""
    ids = [int(c) for c in class_ids]
    if len(set(ids)) != len(ids):
        raise DataError(f"{ds.name}/{ds.split}: repeated class id in {ids}")
    for c in ids:
        if not 0 <= c < ds.num_classes:
            raise DataError(
                f"{ds.name}/{ds.split}: class id {c} out of range (0..{ds.num_classes - 1})"
            )
    lut = np.full(ds.num_classes, -1, dtype=np.int64)
    lut[ids] = np.arange(len(ids))
    keep = np.flatnonzero(lut[ds.labels] >= 0)
    labels = lut[ds.labels[keep]]
    names = [ds.class_names[c] for c in ids]
    split = split or ds.split
    if isinstance(ds, ArrayDataset):
        return ArrayDataset(
            ds.images[keep], labels, names, ds.name, split, ids=[ds.item_id(int(i)) for i in keep]
        )
    if isinstance(ds, FileDataset):
        return FileDataset(ds.root, [ds.paths[i] for i in keep], labels, names, ds.name, split)
    return IndexedView(ds, keep, labels, names, split)


@dataclass
class Subset:
    """A labelled selection of a dataset: which items, relabelled 0..n-1 in `classes` order."""

    dataset: FewShotDataset
    indices: np.ndarray
    labels: np.ndarray  # episode-local labels

    def images(self) -> list[Image.Image]:
        return self.dataset.load_images(self.indices)
