"""CUB-200-2011 with a few-shot class split (100 train / 50 val / 50 test classes).

Layout of the official archive (root may be CUB_200_2011/ or the folder holding it)::

    CUB_200_2011/
      images.txt                "<image_id> <relative path>"   e.g. "1 001.Black_footed_Albatross/x.jpg"
      classes.txt               "<class_id> <class name>"      e.g. "1 001.Black_footed_Albatross"
      image_class_labels.txt    "<image_id> <class_id>"
      images/<relative path>

The class split comes from a JSON split file {"train": [...], "val": [...], "test": [...]}
listing class names (as in classes.txt, with or without the "001." prefix), or, without
one, from a seeded shuffle of the class list (half train, a quarter each val and test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinyshot.data.base import FileDataset
from tinyshot.errors import DataError

SPLITS = ("train", "val", "test")
_FILES = ("images.txt", "classes.txt", "image_class_labels.txt")


def find_cub_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    for cand in (root, root / "CUB_200_2011"):
        if (cand / "images.txt").is_file():
            return cand
    raise DataError(
        f"{root}: not a CUB-200-2011 folder (no images.txt here or in CUB_200_2011/; "
        f"expected {', '.join(_FILES)} and images/)"
    )


def _read_pairs(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (part of the CUB-200-2011 layout)")
    out: list[tuple[int, str]] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    seen: set[int] = set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{line_no}: expected '<id> <value>', got {line!r}")
        key = int(parts[0])
        if key in seen:
            raise DataError(f"{path}:{line_no}: id {key} appears twice")
        seen.add(key)
        out.append((key, parts[1].strip()))
    if not out:
        raise DataError(f"{path}: empty")
    return out


def _strip_prefix(name: str) -> str:
    head, dot, tail = name.partition(".")
    return tail if dot and head.isdigit() else name


def class_split(
    class_names: list[str], split_file: str | Path | None = None, seed: int = 0
) -> dict[str, list[str]]:
    """{"train","val","test"} -> class names, from the split file or a seeded 50/25/25 shuffle."""
    if split_file is None:
        rng = np.random.default_rng(seed)
        order = [class_names[i] for i in rng.permutation(len(class_names))]
        n = len(order)
        n_train, n_val = round(n * 0.5), round(n * 0.25)
        parts = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        pos = {c: i for i, c in enumerate(class_names)}
        return {k: sorted(v, key=pos.__getitem__) for k, v in parts.items()}
    path = Path(split_file).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: CUB split file not found")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(spec, dict) or not all(
        isinstance(spec.get(k), list) and all(isinstance(c, str) for c in spec[k]) for k in SPLITS
    ):
        raise DataError(f'{path}: expected {{"train": [class names], "val": [...], "test": [...]}}')
    lookup: dict[str, str] = {}
    for c in class_names:
        lookup[c] = c
        lookup.setdefault(_strip_prefix(c), c)
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for k in SPLITS:
        names = []
        for c in spec[k]:
            if c not in lookup:
                raise DataError(f"{path}: split {k!r} names unknown class {c!r}")
            full = lookup[c]
            if full in owner:
                raise DataError(f"{path}: class {c!r} listed twice (in {owner[full]!r} and {k!r})")
            owner[full] = k
            names.append(full)
        out[k] = names
    return out


def load_cub(
    split: str,
    root: str | Path,
    split_file: str | Path | None = None,
    split_seed: int = 0,
    check_files: bool = True,
) -> FileDataset:
    if split not in (*SPLITS, "all"):
        raise DataError(f"CUB split must be one of train, val, test, all; got {split!r}")
    base = find_cub_root(root)
    images = _read_pairs(base / "images.txt")
    classes = _read_pairs(base / "classes.txt")
    image_labels = dict(_read_pairs(base / "image_class_labels.txt"))
    class_name = dict(classes)
    names_seen: dict[str, int] = {}
    for cid, cname in classes:
        if cname in names_seen:
            raise DataError(
                f"{base / 'classes.txt'}: duplicate class name {cname!r} "
                f"(ids {names_seen[cname]} and {cid})"
            )
        names_seen[cname] = cid
    all_names = [c for _, c in sorted(classes)]
    wanted = all_names if split == "all" else class_split(all_names, split_file, split_seed)[split]
    index = {c: i for i, c in enumerate(wanted)}
    image_dir = base / "images"
    paths: list[str] = []
    labels: list[int] = []
    for image_id, rel in images:
        if image_id not in image_labels:
            raise DataError(
                f"{base / 'image_class_labels.txt'}: no class for image {image_id} ({rel})"
            )
        raw = image_labels[image_id]
        if not raw.isdigit() or int(raw) not in class_name:
            raise DataError(
                f"{base / 'image_class_labels.txt'}: image {image_id} has unknown class id {raw!r}"
            )
        cname = class_name[int(raw)]
        if cname in index:
            paths.append(rel)
            labels.append(index[cname])
    if check_files:
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: CUB image folder not found")
        missing = [p for p in paths if not (image_dir / p).is_file()]
        if missing:
            raise DataError(
                f"{image_dir}: {len(missing)} image(s) listed in images.txt are missing, "
                f"e.g. {', '.join(missing[:3])}"
            )
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(wanted))
    empty = [wanted[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{base}: class {empty[0]!r} has no images in images.txt")
    return FileDataset(image_dir, paths, labels, wanted, "cub", split)
