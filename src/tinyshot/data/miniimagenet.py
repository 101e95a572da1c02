"""miniImageNet with the Ravi & Larochelle (2017) class split (64 train / 16 val / 20 test).

Layout (as distributed with the split files)::

    root/
      train.csv  val.csv  test.csv      header "filename,label"; label is the WordNet id
      images/n0153282900000005.jpg ...  every file named in the CSVs

A folder-per-class copy (root/{train,val,test}/<wnid>/*.jpg) is read too when the CSV
is absent. Item ids are the file names from the CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tinyshot.data.base import FileDataset
from tinyshot.errors import DataError

SPLITS = ("train", "val", "test")


def load_miniimagenet(split: str, root: str | Path, check_files: bool = True) -> FileDataset:
    if split not in SPLITS:
        raise DataError(f"miniImageNet split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: miniImageNet folder not found")
    csv_path = root / f"{split}.csv"
    if not csv_path.is_file():
        if (root / split).is_dir():
            from tinyshot.data.imagefolder import load_imagefolder

            return load_imagefolder(root, split, name="miniimagenet")
        raise DataError(
            f"{csv_path}: split file not found (expected Ravi & Larochelle's "
            f"{'/'.join(s + '.csv' for s in SPLITS)} next to an images/ folder)"
        )
    files, wnids = _read_split_csv(csv_path)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found (the CSV names files in it)")
    if check_files:
        missing = [f for f in files if not (image_dir / f).is_file()]
        if missing:
            raise DataError(
                f"{image_dir}: {len(missing)} image(s) named in {csv_path.name} are missing, "
                f"e.g. {', '.join(missing[:3])}"
            )
    class_names = sorted(set(wnids))
    index = {c: i for i, c in enumerate(class_names)}
    labels = [index[w] for w in wnids]
    return FileDataset(image_dir, files, labels, class_names, "miniimagenet", split)


def _read_split_csv(path: Path) -> tuple[list[str], list[str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read split file ({e})") from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(f"{path}: expected header 'filename,label', got {got!r}")
    files: list[str] = []
    wnids: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}:{line}: expected 'filename,label', got {','.join(row)!r}")
        name, wnid = row[0].strip(), row[1].strip()
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise DataError(f"{path}:{line}: file name {name!r} must be relative to images/")
        if name in seen:
            raise DataError(f"{path}:{line}: file {name!r} listed twice")
        seen.add(name)
        files.append(name)
        wnids.append(wnid)
    if not files:
        raise DataError(f"{path}: no images listed")
    return files, wnids
