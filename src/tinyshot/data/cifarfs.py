"""CIFAR-FS (Bertinetto et al., 2019): CIFAR-100 re-split by class into 64 / 16 / 20.

Layout::

    root/
      cifar-100-python/train  test  meta   the official CIFAR-100 python pickles
      splits/bertinetto/train.txt val.txt test.txt   one fine-label class name per line

Each class has 600 images: its 500 from `train` plus its 100 from `test`. Item ids are
"train/<row>" or "test/<row>" (the row in that pickle). The pickles are read with an
unpickler that only accepts plain containers and numpy arrays, so a tampered file
cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tinyshot.data.base import ArrayDataset
from tinyshot.errors import DataError

SPLITS = ("train", "val", "test")
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: CIFAR-100 pickle not found")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable CIFAR-100 pickle ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _key(d: dict, name: str, path: Path):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise DataError(f"{path}: missing key {name!r}")


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    data = np.asarray(_key(d, "data", path))
    labels = np.asarray(_key(d, "fine_labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} fine_labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: fine_labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _split_file(root: Path, split: str, split_dir: Path | None) -> Path:
    cands = [split_dir / f"{split}.txt"] if split_dir is not None else []
    cands += [root / "splits" / "bertinetto" / f"{split}.txt", root / f"{split}.txt"]
    for c in cands:
        if c.is_file():
            return c
    raise DataError(
        f"{cands[0]}: CIFAR-FS split file not found (one class name per line, "
        "as in splits/bertinetto/ of the CIFAR-FS release)"
    )


def load_cifar_fs(
    split: str, root: str | Path, split_dir: str | Path | None = None
) -> ArrayDataset:
    if split not in SPLITS:
        raise DataError(f"CIFAR-FS split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR-FS folder not found")
    pickles = root / "cifar-100-python"
    if not pickles.is_dir():
        raise DataError(f"{pickles}: CIFAR-100 python folder not found (train, test, meta)")
    meta = _load_pickle(pickles / "meta")
    fine = [
        n.decode() if isinstance(n, bytes) else str(n)
        for n in _key(meta, "fine_label_names", pickles / "meta")
    ]
    sfile = _split_file(root, split, Path(split_dir).expanduser() if split_dir else None)
    wanted: list[str] = []
    for line_no, line in enumerate(sfile.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name not in fine:
            raise DataError(f"{sfile}:{line_no}: {name!r} is not a CIFAR-100 fine class")
        if name in wanted:
            raise DataError(f"{sfile}:{line_no}: class {name!r} listed twice")
        wanted.append(name)
    if not wanted:
        raise DataError(f"{sfile}: no class names")
    lut = np.full(len(fine), -1, dtype=np.int64)
    lut[[fine.index(n) for n in wanted]] = np.arange(len(wanted))
    images, labels, ids = [], [], []
    for part in ("train", "test"):
        data, fl = _read_batch(pickles / part, len(fine))
        keep = np.flatnonzero(lut[fl] >= 0)
        images.append(data[keep])
        labels.append(lut[fl[keep]])
        ids.extend(f"{part}/{i}" for i in keep)
    lab = np.concatenate(labels)
    counts = np.bincount(lab, minlength=len(wanted))
    if (counts == 0).any():
        raise DataError(f"{pickles}: class {wanted[int(np.argmin(counts))]!r} has no images")
    return ArrayDataset(
        np.ascontiguousarray(np.concatenate(images)), lab, wanted, "cifar-fs", split, ids=ids
    )
