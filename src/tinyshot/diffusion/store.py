"""On-disk synthetic image set: PNGs under images/<class>/ plus manifest.jsonl and
generation.json (the settings). Each manifest line is appended only after its PNG is in
place, so a killed job leaves a consistent set that generation resumes from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import atomic_write, read_json, write_json

MANIFEST = "manifest.jsonl"
SETTINGS = "generation.json"


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
            diff = sorted(
                k
                for k in set(old) | set(settings)
                if k not in growable and old.get(k) != settings.get(k)
            )
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

    def write(self, records: list[dict[str, Any]], images: np.ndarray) -> None:
        """Write PNGs (atomically) and then append their manifest lines in one write."""
        for rec, arr in zip(records, images):
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

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.get("class_names", []))

    def __len__(self) -> int:
        return len(self.records())

    def load_images(self, class_index: int | None = None) -> list[Image.Image]:
        out = []
        for it in self.items(class_index):
            with Image.open(it.path) as im:
                out.append(im.convert("RGB"))
        return out

    def load_tensor(self, class_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,3,H,W) float in [0,1] and (N,) int64 class indices."""
        items = self.items(class_index)
        if not items:
            return torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long)
        arrs = []
        for it in items:
            with Image.open(it.path) as im:
                arrs.append(np.asarray(im.convert("RGB")))
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255.0
        return x, torch.tensor([it.class_index for it in items], dtype=torch.long)
