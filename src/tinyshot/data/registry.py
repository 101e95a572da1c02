"""One entry point for every dataset: `load_dataset("cub", "test", root=...)`.

Each entry knows its splits, which split holds the base (training) classes and which the
novel (evaluation) classes, and whether it needs a user-given root (the benchmark
datasets cannot be downloaded here; see docs/data.md for each on-disk layout).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinyshot.data.base import FewShotDataset, remap_classes
from tinyshot.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[..., FewShotDataset]  # loader(split, root, **options)
    splits: tuple[str, ...] | None  # None: any name (ImageFolder sub-folders)
    base_split: str  # classes a teacher or student may be trained on
    eval_split: str  # novel classes, the default for episodes
    needs_root: bool
    description: str

    def options(self) -> list[str]:
        params = inspect.signature(self.loader).parameters
        return [n for n in params if n not in ("split", "root")]


_REGISTRY: dict[str, DatasetInfo] = {}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "mini-imagenet": "miniimagenet",
    "mini_imagenet": "miniimagenet",
    "cifarfs": "cifar-fs",
    "cifar_fs": "cifar-fs",
    "cub-200-2011": "cub",
    "cub200": "cub",
    "image-folder": "imagefolder",
    "folder": "imagefolder",
}


def register_dataset(info: DatasetInfo) -> None:
    _REGISTRY[info.name] = info


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(
            f"--dataset: unknown dataset {name!r} (have {', '.join(list_datasets())})"
        )
    return _REGISTRY[key]


def load_dataset(
    name: str, split: str, root: str | Path | None = None, **options: object
) -> FewShotDataset:
    """The `split` of dataset `name`; `options` go to its loader (see `tinyshot datasets`)."""
    info = dataset_info(name)
    if info.splits is not None and split not in info.splits:
        raise ConfigError(
            f"--split: dataset {info.name!r} has splits {', '.join(info.splits)}, not {split!r}"
        )
    if info.needs_root and root is None:
        raise ConfigError(
            f"--root: dataset {info.name!r} cannot be downloaded here; pass the folder that "
            "holds it (layout in docs/data.md)"
        )
    allowed = info.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset {info.name!r}: unknown option(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(allowed) or 'none'})"
        )
    return info.loader(split, root, **options)


# ---------------------------------------------------------------------------- entries


def _imagefolder(split: str, root: str | Path) -> FewShotDataset:
    from tinyshot.data.imagefolder import load_imagefolder

    return load_imagefolder(root, split)


FASHION_MNIST_SPLITS = ("base", "novel-train", "novel-pool", "novel-test", "train", "test")


def _fashion_mnist(split: str, root: str | Path | None) -> FewShotDataset:
    """Meta-splits: base = train images of classes 0-4; novel-* = classes 5-9 of train/test;
    novel-pool = the held-out novel train images the concept-known generator never saw."""
    from tinyshot.data.base import ArrayDataset
    from tinyshot.data.fashion_mnist import (
        BASE_CLASSES,
        NOVEL_CLASSES,
        heldout_pool,
        load_fashion_mnist,
    )

    if split in ("train", "test"):
        return load_fashion_mnist(split, root)
    if split == "novel-pool":
        full = load_fashion_mnist("train", root)
        keep = heldout_pool(full.labels)
        pool = ArrayDataset(
            full.images[keep], full.labels[keep], full.class_names, full.name, "train",
            ids=[full.item_id(int(i)) for i in keep],
        )  # fmt: skip
        return remap_classes(pool, NOVEL_CLASSES, split=split)
    source = "test" if split == "novel-test" else "train"
    classes = BASE_CLASSES if split == "base" else NOVEL_CLASSES
    return remap_classes(load_fashion_mnist(source, root), classes, split=split)


def _glyphs(
    split: str,
    root: str | Path | None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    size: int = 32,
    samples_per_class: int = 20,
    max_scripts: int | None = 30,
    chars_per_script: int | None = 20,
    min_chars: int = 10,
    scripts: list[str] | None = None,
    background_fraction: float = 0.7,
    seed: int = 0,
) -> FewShotDataset:
    from tinyshot.data.glyphs import load_glyphs

    return load_glyphs(
        split,
        root,
        cache_dir=cache_dir,
        refresh=refresh,
        size=size,
        samples_per_class=samples_per_class,
        max_scripts=max_scripts,
        chars_per_script=chars_per_script,
        min_chars=min_chars,
        scripts=tuple(scripts) if scripts else None,
        background_fraction=background_fraction,
        seed=seed,
    )


def _miniimagenet(split: str, root: str | Path, check_files: bool = True) -> FewShotDataset:
    from tinyshot.data.miniimagenet import load_miniimagenet

    return load_miniimagenet(split, root, check_files=check_files)


def _cub(
    split: str,
    root: str | Path,
    split_file: str | Path | None = None,
    split_seed: int = 0,
    check_files: bool = True,
) -> FewShotDataset:
    from tinyshot.data.cub import load_cub

    return load_cub(split, root, split_file, split_seed, check_files)


def _cifar_fs(split: str, root: str | Path, split_dir: str | Path | None = None) -> FewShotDataset:
    from tinyshot.data.cifarfs import load_cifar_fs

    return load_cifar_fs(split, root, split_dir)


for _info in (
    DatasetInfo(
        "imagefolder",
        _imagefolder,
        None,
        "all",
        "all",
        True,
        "your own images: root/<class>/*.jpg (split 'all', or a sub-folder root/<split>/)",
    ),
    DatasetInfo(
        "fashion-mnist",
        _fashion_mnist,
        FASHION_MNIST_SPLITS,
        "base",
        "novel-test",
        False,
        "Fashion-MNIST idx files (Debian dataset-fashion-mnist); base = classes 0-4, novel = 5-9",
    ),
    DatasetInfo(
        "glyphs",
        _glyphs,
        ("background", "evaluation", "all", "train", "test"),
        "background",
        "evaluation",
        False,
        "Omniglot-like characters rendered from the Noto fonts; root = font folder",
    ),
    DatasetInfo(
        "miniimagenet",
        _miniimagenet,
        ("train", "val", "test"),
        "train",
        "test",
        True,
        "miniImageNet, Ravi & Larochelle split CSVs + images/",
    ),
    DatasetInfo(
        "cub",
        _cub,
        ("train", "val", "test", "all"),
        "train",
        "test",
        True,
        "CUB-200-2011, 100/50/50 class split from a JSON split file or a seed",
    ),
    DatasetInfo(
        "cifar-fs",
        _cifar_fs,
        ("train", "val", "test"),
        "train",
        "test",
        True,
        "CIFAR-FS: CIFAR-100 python pickles + splits/bertinetto/*.txt",
    ),
):
    register_dataset(_info)
