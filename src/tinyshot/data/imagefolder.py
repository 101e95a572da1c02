"""The user's own data: one sub-folder per class, any common image format inside.

Layout::

    root/
      cat/ 001.jpg 002.png ...
      dog/ a.jpeg sub/b.webp ...     (files in nested folders count for their class)

Classes are the sub-folder names, sorted. Hidden files and folders (".name") and
`__MACOSX` are ignored; files without an image extension are skipped with one warning.
Images are decoded lazily; `validate()` decodes every file once so that a long job
(`tinyshot fit`) fails in seconds, listing every bad file, instead of hours later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tinyshot.data.base import FewShotDataset, FileDataset
from tinyshot.data.images import IMAGE_EXTENSIONS, MIN_SIDE, open_rgb
from tinyshot.errors import DataError
from tinyshot.utils.logging import get_logger, progress

log = get_logger("data.imagefolder")
_IGNORED_DIRS = {"__MACOSX"}
_MAX_LISTED = 20


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_DIRS


def _class_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under class_dir, relative to its parent, sorted."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for f in sorted(filenames):
            if _ignored(f):
                continue
            rel = Path(dirpath, f).relative_to(class_dir.parent)
            (images if Path(f).suffix.lower() in IMAGE_EXTENSIONS else others).append(rel)
    return images, others


class ImageFolderDataset(FileDataset):
    """A FileDataset read from a class-per-folder tree; `skipped` lists non-image files."""

    skipped: list[Path]

    def validate(self, min_side: int = MIN_SIDE) -> None:
        validate_images(self, min_side=min_side)


def load_imagefolder(
    root: str | Path, split: str = "all", name: str = "imagefolder"
) -> ImageFolderDataset:
    """Scan root (or root/split when that folder exists) for class folders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    if split not in ("all", "") and (root / split).is_dir():
        root = root / split
    elif split not in ("all", ""):
        raise DataError(
            f"{root}: no sub-folder {split!r} for split {split!r} "
            "(use split 'all' to read the class folders directly under root)"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _ignored(p.name))
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and not _ignored(p.name)]
        hint = f" ({len(loose)} files lie directly in it)" if loose else ""
        raise DataError(
            f"{root}: no class sub-folders{hint}; expected one sub-folder of images per class"
        )
    folded: dict[str, str] = {}
    for d in class_dirs:
        key = d.name.casefold().strip()
        if key in folded:
            raise DataError(
                f"{root}: class folders {folded[key]!r} and {d.name!r} have the same name "
                "up to case/whitespace; merge or rename one"
            )
        folded[key] = d.name
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[Path] = []
    for label, d in enumerate(class_dirs):
        images, others = _class_files(d)
        skipped.extend(others)
        if not images:
            what = f" (only non-image files: {others[0].name}, ...)" if others else ""
            raise DataError(f"{d}: class folder {d.name!r} has no images{what}")
        paths.extend(images)
        labels.extend([label] * len(images))
    if skipped:
        shown = ", ".join(p.as_posix() for p in skipped[:5])
        log.warning(
            "%s: skipped %d non-image file(s) (by extension): %s%s",
            root,
            len(skipped),
            shown,
            ", ..." if len(skipped) > 5 else "",
        )
    ds = ImageFolderDataset(root, paths, labels, [d.name for d in class_dirs], name, split)
    ds.skipped = skipped
    return ds


def nested_class_folders(ds: ImageFolderDataset) -> dict[str, list[str]]:
    """Class folders whose images all lie in two or more sub-folders: class name -> those
    sub-folders (a dataset one level too deep, or classes grouped in a folder)."""
    subs: dict[str, set[str]] = {}
    direct: set[str] = set()
    for p in ds.paths:
        parts = Path(p).parts
        if len(parts) == 2:
            direct.add(parts[0])
        else:
            subs.setdefault(parts[0], set()).add(parts[1])
    return {c: sorted(s) for c, s in subs.items() if c not in direct and len(s) >= 2}


def validate_images(
    ds: FewShotDataset, indices: Sequence[int] | None = None, min_side: int = MIN_SIDE
) -> None:
    """Decode every item once; raise one DataError that lists all unreadable items."""
    idx = range(len(ds)) if indices is None else indices
    bad: list[str] = []
    for i in progress(idx, desc=f"checking {ds.name} images", total=len(idx), unit="image"):
        try:
            if isinstance(ds, FileDataset):
                open_rgb(ds.root / ds.paths[int(i)], min_side=min_side)
            else:
                img = ds.load_image(int(i))
                if min(img.size) < min_side:
                    raise DataError(
                        f"{ds.item_id(int(i))}: image is {img.size[0]}x{img.size[1]}, "
                        f"smaller than {min_side} px"
                    )
        except DataError as e:
            bad.append(str(e))
    if bad:
        listed = "\n  ".join(bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DataError(
            f"{ds.name}/{ds.split}: {len(bad)} of {len(idx)} images cannot be used:\n  {listed}{more}"
        )
