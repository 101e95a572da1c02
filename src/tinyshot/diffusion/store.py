"""On-disk synthetic image set: PNGs under images/<class name>/ plus manifest.jsonl and
generation.json (the settings). Each manifest line is appended only after its PNG is in
place, so a killed job leaves a consistent set that generation resumes from.

A store made with `store_size` in its settings keeps images larger than that side shrunk to
it (antialiased bilinear, the teacher's own resize): no consumer looks at more pixels (the
pipeline sets it to the larger of the teacher's and the student's input sizes), and 20,000
SD 1.5 images at 512 px would take 8-16 GB as PNGs against 1.5-3 GB at 224 px
(docs/pipeline.md, "Memory and disk at scale").

Consumers read a store through a `StoreView`: the images as one model sees them, decoded
slice by slice, so no stage holds a whole synthetic set in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from tinyshot.data.transforms import (
    ImagePrep,
    crop_generator_frame,
    exact_uint8,
    resize_uint8,
    shrink_uint8,
)
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import atomic_write, read_json, write_json
from tinyshot.utils.paths import portable_record

MANIFEST = "manifest.jsonl"
SETTINGS = "generation.json"
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def folder_name(class_name: str) -> str:
    """A class name as one folder name ("T-shirt/top" -> "T-shirt_top"), safe on every OS."""
    return _UNSAFE.sub("_", class_name).strip(" .") or "_"


class StoreItem(NamedTuple):
    path: Path
    class_index: int
    support_index: int | None
    seed: int
    alpha: float | None


class ImageStore:
    """Read (and, for the generator, append to) a synthetic image set."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / SETTINGS).is_file():
            raise DataError(f"{self.root}: not an image store (no {SETTINGS})")
        self.settings: dict[str, Any] = read_json(self.root / SETTINGS)
        self._digests: dict[tuple, str] = {}

    # -- creation / resume ------------------------------------------------------------------
    @classmethod
    def create_or_resume(
        cls, root: str | Path, settings: dict[str, Any], growable: tuple[str, ...] = ()
    ) -> ImageStore:
        """Open root for writing; refuse to mix with a store made with other settings."""
        root = Path(root)
        path = root / SETTINGS
        if path.is_file():
            old = read_json(path)
            a, b = portable_record(old), portable_record(settings)
            diff = sorted(k for k in set(a) | set(b) if k not in growable and a.get(k) != b.get(k))
            if diff:
                raise ConfigError(
                    f"{root}: holds images generated with different {', '.join(diff)}; "
                    "use another --out folder or delete it"
                )
            if old != settings:
                write_json(path, settings)
        else:
            root.mkdir(parents=True, exist_ok=True)
            write_json(path, settings)
        return cls(root)

    @property
    def store_size(self) -> int | None:
        """Side that larger images are shrunk to on writing; None keeps the generated size."""
        size = self.settings.get("store_size")
        return None if size is None else int(size)

    def write(self, records: list[dict[str, Any]], images: Sequence[np.ndarray]) -> None:
        """Write PNGs (atomically) and then append their manifest lines in one write."""
        limit = self.store_size
        for rec, arr in zip(records, images):
            if limit is not None and max(arr.shape[:2]) > limit:
                t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
                arr = resize_uint8(t, limit)[0].permute(1, 2, 0).numpy()
            atomic_write(
                self.root / rec["path"],
                lambda p, a=arr: Image.fromarray(a).save(p, format="PNG", compress_level=1),
            )
        lines = "".join(json.dumps(r) + "\n" for r in records)
        self._drop_torn_tail()
        with open(self.root / MANIFEST, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _drop_torn_tail(self) -> None:
        """Cut a partial last line (a kill mid-append) so the next append starts clean."""
        path = self.root / MANIFEST
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            data = path.read_bytes()
            f.truncate(data.rfind(b"\n") + 1)

    # -- reading ------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Manifest records, deduplicated, sorted by (class, index); a torn last line is skipped."""
        path = self.root / MANIFEST
        if not path.is_file():
            return []
        recs: dict[tuple[int, int], dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            recs[(int(r["class_index"]), int(r["index"]))] = r
        return [recs[k] for k in sorted(recs)]

    def class_folders(self, class_names: Sequence[str]) -> list[str]:
        """Folder under images/ per class: the class name made safe, or the folder the store
        already uses for the class (a store begun with numbered folders resumes in them).
        Names that clash (also by case, for case-insensitive disks) get "-<class index>"."""
        used = {
            int(r["class_index"]): Path(r["path"]).parent.name
            for r in self.records()
            if "path" in r
        }
        taken = {f.lower() for f in used.values()}
        out = []
        for c, name in enumerate(class_names):
            if c in used:
                out.append(used[c])
                continue
            f = folder_name(name)
            if f.lower() in taken:
                f = f"{f}-{c}"
            taken.add(f.lower())
            out.append(f)
        return out

    def done_keys(self) -> set[tuple[int, int]]:
        return {(int(r["class_index"]), int(r["index"])) for r in self.records()}

    def items(self, class_index: int | None = None) -> list[StoreItem]:
        return [
            StoreItem(
                self.root / r["path"],
                int(r["class_index"]),
                r.get("support_index"),
                int(r["seed"]),
                r.get("alpha"),
            )
            for r in self.records()
            if class_index is None or int(r["class_index"]) == class_index
        ]

    def content_digest(self, items: Sequence[StoreItem] | None = None) -> str:
        """sha256 of the image files' bytes with their classes, in order (read once per item
        list: a teacher's and a student's view of one store share it)."""
        items = self.items() if items is None else items
        key = tuple((it.class_index, str(it.path)) for it in items)
        if key not in self._digests:
            h = hashlib.sha256()
            for it in items:
                h.update(f"{it.class_index}:{it.path.name}:".encode())
                h.update(it.path.read_bytes())
            self._digests[key] = h.hexdigest()
        return self._digests[key]

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.get("class_names", []))

    def __len__(self) -> int:
        return len(self.records())

    def load_images(
        self, class_index: int | None = None, limit: int | None = None
    ) -> list[Image.Image]:
        """The first `limit` images (all when None), as stored."""
        out = []
        for it in self.items(class_index)[:limit]:
            with Image.open(it.path) as im:
                out.append(im.convert("RGB"))
        return out

    def load_tensor(self, class_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,3,H,W) float in [0,1] and (N,) int64 class indices: the whole set in memory, for
        small sets only (tests, sweeps); the pipeline reads through a StoreView."""
        items = self.items(class_index)
        if not items:
            return torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long)
        arrs = []
        for it in items:
            with Image.open(it.path) as im:
                arrs.append(np.asarray(im.convert("RGB")))
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255.0
        return x, torch.tensor([it.class_index for it in items], dtype=torch.long)


VIEW_MODES = ("shrink", "exact")


class StoreView:
    """A store's images as one model sees them, decoded from disk slice by slice.

    Indexable like a uint8 image tensor: `view[a:b]` or `view[index_tensor]` gives
    (n,3,S,S) uint8. Each image loses the generator's pad frame (crop_generator_frame, scaled
    when the store shrank the images), then mode "shrink" (a teacher) shrinks images larger
    than `size` with resize_uint8, and mode "exact" (a student) brings every image to `size`
    by the resize its real images get (images_to_uint8), so a generated image equal to a
    prepared support is exactly that support to the student.
    """

    def __init__(
        self, store: ImageStore, prep: ImagePrep, size: int | None, mode: str = "shrink"
    ) -> None:
        if mode not in VIEW_MODES:
            raise ConfigError(f"view mode must be one of {VIEW_MODES}, got {mode!r}")
        if mode == "exact" and size is None:
            raise ConfigError("an exact-size view needs a size")
        self.store, self.prep, self.size, self.mode = store, prep, size, mode
        self.items = store.items()
        self.labels = torch.tensor([it.class_index for it in self.items], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if isinstance(key, slice):
            rows = range(*key.indices(len(self)))
        else:
            rows = torch.as_tensor(key).view(-1).tolist()
        return self.load([self.items[i] for i in rows])

    def load(self, items: Sequence[StoreItem]) -> torch.Tensor:
        if not items:
            side = self.size or 1
            return torch.empty(0, 3, side, side, dtype=torch.uint8)
        arrs = []
        for it in items:
            with Image.open(it.path) as im:
                arrs.append(np.asarray(im.convert("RGB")))
        sides = {a.shape[:2] for a in arrs}
        if len(sides) != 1:
            raise DataError(f"{self.store.root}: images of different sizes {sorted(sides)}")
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        x = crop_generator_frame(x, self.prep.at_side(x.shape[-1]))
        return exact_uint8(x, self.size) if self.mode == "exact" else shrink_uint8(x, self.size)

    def source_id(self) -> str:
        """sha256 of the view's settings and of the store's image files: it changes whenever
        what the model sees would (a cache key for pseudo-labels and image files)."""
        view = {"mode": self.mode, "size": self.size, "prep": self.prep.to_dict()}
        key = json.dumps({**view, "images": self.store.content_digest(self.items)}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()
